# otahttp.py - the smallest asyncio HTTP/1.1 client the update needs: GET
# of a static file from byte `offset` (a `Range` request, to resume after a
# dropped link), every read under a deadline, the body handed on in chunks
# read into the caller's fixed buffer. http:// and https://: over TLS the
# server's certificate must verify against the board's ca.crt (tlsctx.py,
# as for the broker; no unverified fallback). Imported only by the update.
import asyncio

_VERIFY_FAILED = -0x2700  # MBEDTLS_ERR_X509_CERT_VERIFY_FAILED


class HttpError(Exception):
    pass


def split_url(url):
    """(host, port, path, tls) of an http:// or https:// URL; ValueError
    when it is not one."""
    tls = isinstance(url, str) and url.startswith("https://")
    if not tls and (not isinstance(url, str) or not url.startswith("http://")):
        raise ValueError("url must start with http:// or https:// (got %s)" % (url if isinstance(url, str) else type(url).__name__))
    rest = url[8 if tls else 7:]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    host, port = hostport, 443 if tls else 80
    i = hostport.rfind(":")
    if i >= 0:
        host = hostport[:i]
        try:
            port = int(hostport[i + 1:])
        except ValueError:
            port = 0
        if not 0 < port < 65536:
            raise ValueError("bad port in url %s" % url)
    if not host or " " in url or "\r" in url or "\n" in url:
        raise ValueError("bad url %s" % url)
    return host, port, path, tls


def _context():
    # The TLS client context that verifies the server against ca.crt; the
    # dates are checked against the RTC (otaupd.py sets it by NTP first).
    import tlsctx

    if not tlsctx.clock_ok():
        raise ValueError("https: clock not set (NTP needed before certificates can be checked)")
    try:
        return tlsctx.client_context(own=False)
    except tlsctx.TlsSetupError as e:
        raise ValueError("https: %s" % e)


async def get(url, offset, buf, sink, timeout_ms):
    """GET `url` from byte `offset`; sink(memoryview) gets the body from
    there in chunks of at most len(buf). Returns the body's total size.
    OSError/HttpError on failure (the caller resumes with the bytes it got)."""
    host, port, path, tls = split_url(url)
    ctx = _context() if tls else None
    w = None
    try:
        req = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (
            path, host if port == (443 if tls else 80) else "%s:%d" % (host, port))
        if offset:
            req += "Range: bytes=%d-\r\n" % offset
        try:  # the TLS handshake happens in here (at the first read or write on a board)
            r, w = await asyncio.wait_for_ms(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host if tls else None), timeout_ms)
            w.write((req + "\r\n").encode())
            await asyncio.wait_for_ms(w.drain(), timeout_ms)
            line = await asyncio.wait_for_ms(r.readline(), timeout_ms)
        except Exception as e:
            # mbedTLS refuses the server's certificate with ValueError (its
            # reason between newlines, as the 1.29 unix port raises it from
            # the first read or write) or OSError(-0x2700): final, not a
            # dropped link to retry
            if tls and (isinstance(e, ValueError) or e.args[:1] == (_VERIFY_FAILED,)):
                raise ValueError("https: the certificate of %s:%d does not verify against ca.crt (%s)"
                                 % (host, port, str(e).strip()))
            raise
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
            raise HttpError("not an HTTP response from %s:%d" % (host, port))
        status = int(parts[1])
        length = -1
        total = -1
        while True:
            line = await asyncio.wait_for_ms(r.readline(), timeout_ms)
            if not line:
                raise HttpError("connection closed in the headers")
            if line in (b"\r\n", b"\n"):
                break
            i = line.find(b":")
            name = line[:i].strip().lower()
            value = line[i + 1:].strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"content-range":  # bytes a-b/total
                total = int(value.rsplit(b"/", 1)[1])
            elif name == b"transfer-encoding" and value.lower() != b"identity":
                raise HttpError("transfer encoding %s not supported" % value.decode())
        if status == 416 and offset:
            return offset  # nothing left: the file ended where we were
        if status == 200:
            skip = offset  # the server ignored the Range: drop what we have
            total = length
        elif status == 206 and offset:
            skip = 0
        else:
            raise HttpError("HTTP %d for %s" % (status, path))
        if length < 0:
            raise HttpError("no Content-Length for %s" % path)
        mv = memoryview(buf)
        left = length
        while left > 0:
            n = await asyncio.wait_for_ms(r.readinto(mv[:min(left, len(buf))]), timeout_ms)
            if not n:
                raise OSError(104)  # ECONNRESET: the link dropped mid-body
            left -= n
            if skip >= n:
                skip -= n
                continue
            sink(mv[skip:n])
            skip = 0
        return total
    finally:
        if w is not None:
            w.close()
            try:
                await asyncio.wait_for_ms(w.wait_closed(), 1000)
            except Exception:
                pass
