# otahttp.py - the smallest asyncio HTTP/1.1 client the update needs: GET
# of a static file from byte `offset` (a `Range` request, to resume after a
# dropped link), every read under a deadline, the body handed on in chunks
# read into the caller's fixed buffer. Plain http:// only. Imported only by
# ota.py while an update runs.
import asyncio


class HttpError(Exception):
    pass


def split_url(url):
    """(host, port, path) of an http:// URL; ValueError when it is not one."""
    if not isinstance(url, str) or not url.startswith("http://"):
        raise ValueError("url must start with http:// (got %s)" % (url if isinstance(url, str) else type(url).__name__))
    rest = url[7:]
    i = rest.find("/")
    hostport, path = (rest, "/") if i < 0 else (rest[:i], rest[i:])
    host, port = hostport, 80
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
    return host, port, path


async def get(url, offset, buf, sink, timeout_ms):
    """GET `url` from byte `offset`; sink(memoryview) gets the body from
    there in chunks of at most len(buf). Returns the body's total size.
    OSError/HttpError on failure (the caller resumes with the bytes it got)."""
    host, port, path = split_url(url)
    r, w = await asyncio.wait_for_ms(asyncio.open_connection(host, port), timeout_ms)
    try:
        req = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (path, host if port == 80 else "%s:%d" % (host, port))
        if offset:
            req += "Range: bytes=%d-\r\n" % offset
        w.write((req + "\r\n").encode())
        await asyncio.wait_for_ms(w.drain(), timeout_ms)
        line = await asyncio.wait_for_ms(r.readline(), timeout_ms)
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
        w.close()
        try:
            await asyncio.wait_for_ms(w.wait_closed(), 1000)
        except Exception:
            pass
