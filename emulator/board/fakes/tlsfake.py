"""The board's `tls` module (MicroPython >= 1.23, mbedTLS) and the `ssl`
wrapper micropython-lib puts on top of it, bound to one board.

The firmware's calls are checked the way the board checks them and recorded
(`SSLContext.calls`, `TlsModule.contexts`); the handshake itself is CPython's
`ssl` against the real broker: `SSLContext.host_context()` builds a CPython
`ssl.SSLContext` from what the firmware loaded, and the board's link
(`emulator/net/link.py`) opens the connection with it. So verification is real
OpenSSL verification with the firmware's own settings:

- `tls.SSLContext(PROTOCOL_TLS_CLIENT)` verifies by default (CERT_REQUIRED);
  `ssl.SSLContext` (the wrapper) starts at CERT_NONE: only what the
  firmware asks for is switched off.
- No CA loaded and CERT_REQUIRED: verification fails (no CA bundle on an
  ESP32). The server's name is checked against `server_hostname`.
- CERT_OPTIONAL verifies nothing on mbedTLS ports (MicroPython docs), so it
  maps to CPython's CERT_NONE.
- The board's clock is part of the check: mbedTLS compares validity dates
  with the board's RTC, which reads 2000-01-01 until NTP has set it, so a
  board that never set its clock cannot verify (a ValueError carrying
  mbedTLS's message, as MicroPython raises for a failed verification).
- Native `tls` takes cert/key/CA as data only (bytes or str, DER or PEM),
  positionally; the `ssl` wrapper also takes paths (read from the board's
  flash) and `load_verify_locations(cafile=None, cadata=None)`.
- Parse errors raise OSError(mbedTLS error code, message) as the board does.

Nothing here touches the network.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl as _ssl
import tempfile
import threading
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1
PROTOCOL_DTLS_CLIENT = 2
PROTOCOL_DTLS_SERVER = 3
CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
MBEDTLS_VERSION = "Mbed TLS 3.6.0"

# mbedTLS error codes as MicroPython raises them: OSError(code, text).
MBEDTLS_ERR_X509_BAD_INPUT_DATA = -0x2800
MBEDTLS_ERR_PK_BAD_INPUT_DATA = -0x3E80
UNIX_2000 = 946684800

_MAX_RECORDED = 16  # contexts remembered per tls module (one board boot)


def _data(obj, what: str) -> bytes:
    """What mbedTLS gets from `asn1_get_data`: the bytes of a str/bytes object."""
    if isinstance(obj, str):
        return obj.encode()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"object with buffer protocol required ({what})")


def _is_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data


def _parse_certs(data: bytes) -> list[x509.Certificate]:
    try:
        if _is_pem(data):
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise OSError(MBEDTLS_ERR_X509_BAD_INPUT_DATA, "X509 - Input invalid") from None
    return certs


def _parse_key(data: bytes):
    try:
        if _is_pem(data):
            return serialization.load_pem_private_key(data, password=None)
        return serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError):
        raise OSError(MBEDTLS_ERR_PK_BAD_INPUT_DATA, "PK - Bad input parameters to function") from None


def _describe(data: bytes) -> str:
    return f"{'PEM' if _is_pem(data) else 'DER'} {len(data)} bytes"


def _positional_only(name: str, kwargs: dict) -> None:
    if kwargs:
        # What MicroPython says when a C function defined with
        # MP_DEFINE_CONST_FUN_OBJ_n gets keyword arguments.
        raise TypeError(f"function doesn't take keyword arguments ({name})")


# --- the CPython contexts, shared by boards that load the same material ----------

_host_cache: OrderedDict[tuple, _ssl.SSLContext] = OrderedDict()
_host_cache_lock = threading.Lock()
_HOST_CACHE_SIZE = 4096


def _build_host_context(verify: bool, ca_der: tuple[bytes, ...], cert_der: bytes | None, key_der: bytes | None):
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    if verify:
        ctx.check_hostname = True
        ctx.verify_mode = _ssl.CERT_REQUIRED
        for der in ca_der:
            ctx.load_verify_locations(cadata=der)
        # No load_default_certs(): a board has no CA bundle.
    else:
        ctx.check_hostname = False
        ctx.verify_mode = _ssl.CERT_NONE
    if cert_der is not None and key_der is not None:
        # CPython loads a certificate chain from files only.
        with tempfile.TemporaryDirectory(prefix="esp32emu-tls-") as tmp:
            crt = os.path.join(tmp, "client.crt")
            key = os.path.join(tmp, "client.key")
            with open(crt, "wb") as f:
                f.write(_ssl.DER_cert_to_PEM_cert(cert_der).encode())
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(
                    serialization.load_der_private_key(key_der, password=None).private_bytes(
                        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                    )
                )
            ctx.load_cert_chain(crt, key)
    return ctx


def host_context_for(verify: bool, ca_der, cert_der, key_der) -> _ssl.SSLContext:
    key = (verify, tuple(ca_der), cert_der, key_der)
    with _host_cache_lock:
        ctx = _host_cache.get(key)
        if ctx is not None:
            _host_cache.move_to_end(key)
            return ctx
    ctx = _build_host_context(verify, tuple(ca_der), cert_der, key_der)
    with _host_cache_lock:
        _host_cache[key] = ctx
        while len(_host_cache) > _HOST_CACHE_SIZE:
            _host_cache.popitem(last=False)
    return ctx


# --- native `tls` ------------------------------------------------------------------


class NativeSSLContext:
    """`tls.SSLContext` of MicroPython's mbedTLS module. The per-board
    subclass made by `TlsModule` sets `_board` and `_module`."""

    _board = None
    _module: "TlsModule | None" = None

    def __init__(self, *args, **kwargs):
        _positional_only("SSLContext", kwargs)
        if len(args) != 1:
            raise TypeError("function takes 1 positional arguments but %d were given" % len(args))
        protocol = args[0]
        if not isinstance(protocol, int) or isinstance(protocol, bool):
            raise TypeError("can't convert %s to int" % type(protocol).__name__)
        self.protocol = protocol
        self.client = not (protocol & 1)
        self._verify_mode = CERT_REQUIRED if self.client else CERT_NONE
        self.verify_callback = None
        self.ca: list[x509.Certificate] = []
        self.cert: x509.Certificate | None = None
        self.key = None
        self.calls: list[tuple[str, object]] = [("SSLContext", protocol)]
        if self._module is not None:
            self._module._record(self)

    @property
    def verify_mode(self) -> int:
        return self._verify_mode

    @verify_mode.setter
    def verify_mode(self, value) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError("can't convert %s to int" % type(value).__name__)
        self._verify_mode = value
        self.calls.append(("verify_mode", value))

    def load_verify_locations(self, *args, **kwargs) -> None:
        _positional_only("load_verify_locations", kwargs)
        if len(args) != 1:
            raise TypeError("function takes 2 positional arguments but %d were given" % (len(args) + 1))
        data = _data(args[0], "cadata")
        self.ca = _parse_certs(data)  # mbedTLS replaces the chain
        self.calls.append(("load_verify_locations", _describe(data)))

    def load_cert_chain(self, *args, **kwargs) -> None:
        _positional_only("load_cert_chain", kwargs)
        if len(args) != 2:
            raise TypeError("function takes 3 positional arguments but %d were given" % (len(args) + 1))
        cert_data = _data(args[0], "cert")
        key_data = _data(args[1], "key")
        key = _parse_key(key_data)  # mbedTLS parses the key first
        certs = _parse_certs(cert_data)
        self.key = key
        self.cert = certs[0]
        self.calls.append(("load_cert_chain", (_describe(cert_data), _describe(key_data))))

    def set_ciphers(self, ciphers) -> None:
        self.calls.append(("set_ciphers", ciphers))

    def get_ciphers(self) -> list:
        return ["TLS-ECDHE-ECDSA-WITH-AES-128-GCM-SHA256", "TLS-ECDHE-RSA-WITH-AES-128-GCM-SHA256"]

    def wrap_socket(self, *args, **kwargs):
        raise NotImplementedError("esp32emu: TLS is emulated through asyncio.open_connection(host, port, ssl=ctx)")

    # -- the emulator side ----------------------------------------------------

    def host_context(self) -> _ssl.SSLContext:
        """The CPython context that does this board's handshake (the link calls it)."""
        if not self.client:
            raise NotImplementedError("esp32emu: only TLS client contexts are emulated")
        if self.verify_callback is not None:
            raise NotImplementedError("esp32emu: SSLContext.verify_callback is not emulated")
        verify = self._verify_mode == CERT_REQUIRED
        self.calls.append(("handshake", {"verify": verify, "ca": len(self.ca), "cert": self.cert is not None}))
        if verify:
            self._check_board_clock()
        ca_der = tuple(c.public_bytes(serialization.Encoding.DER) for c in self.ca)
        cert_der = self.cert.public_bytes(serialization.Encoding.DER) if self.cert is not None else None
        key_der = (
            self.key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            if self.key is not None
            else None
        )
        return host_context_for(verify, ca_der, cert_der, key_der)

    def _check_board_clock(self) -> None:
        # OpenSSL checks validity against the host's clock; mbedTLS uses the
        # board's RTC. Check the trusted CA certificates against the board's
        # time here (the server's own certificate is issued after its CA, so
        # a board clock still in 2000 fails on the CA already).
        board = self._board
        if board is None:
            return
        now = dt.datetime.fromtimestamp(board.clock.rtc_seconds() + UNIX_2000, dt.timezone.utc)
        for cert in self.ca:
            if now < cert.not_valid_before_utc:
                board.log_event("tls", f"board clock {now:%Y-%m-%d} is before the CA's validity")
                raise ValueError("The certificate validity starts in the future")
            if now > cert.not_valid_after_utc:
                board.log_event("tls", f"board clock {now:%Y-%m-%d} is after the CA's validity")
                raise ValueError("The certificate validity has expired")


class TlsModule:
    """The board's `tls` module."""

    __name__ = "tls"
    PROTOCOL_TLS_CLIENT = PROTOCOL_TLS_CLIENT
    PROTOCOL_TLS_SERVER = PROTOCOL_TLS_SERVER
    PROTOCOL_DTLS_CLIENT = PROTOCOL_DTLS_CLIENT
    PROTOCOL_DTLS_SERVER = PROTOCOL_DTLS_SERVER
    CERT_NONE = CERT_NONE
    CERT_OPTIONAL = CERT_OPTIONAL
    CERT_REQUIRED = CERT_REQUIRED
    MBEDTLS_VERSION = MBEDTLS_VERSION

    def __init__(self, board):
        self._board = board
        self.contexts: list[NativeSSLContext] = []  # the latest ones, for tests
        self.SSLContext = type("SSLContext", (NativeSSLContext,), {"_board": board, "_module": self})

    def _record(self, ctx: NativeSSLContext) -> None:
        self.contexts.append(ctx)
        if len(self.contexts) > _MAX_RECORDED:
            del self.contexts[0]


# --- the `ssl` wrapper (micropython-lib python-stdlib/ssl/ssl.py) -------------------


class WrapperSSLContext:
    """`ssl.SSLContext`: wraps a `tls.SSLContext`, starts at CERT_NONE and reads
    files from the board's flash when given paths."""

    _board = None
    _tls: TlsModule | None = None

    def __init__(self, *args):
        self._context = self._tls.SSLContext(*args)
        self._context.verify_mode = CERT_NONE

    @property
    def verify_mode(self) -> int:
        return self._context.verify_mode

    @verify_mode.setter
    def verify_mode(self, value) -> None:
        self._context.verify_mode = value

    @property
    def calls(self) -> list:
        return self._context.calls

    def _read(self, path: str) -> bytes:
        with self._board.fs.open(path, "rb") as f:
            return f.read()

    def load_cert_chain(self, certfile, keyfile) -> None:
        if isinstance(certfile, str):
            certfile = self._read(certfile)
        if isinstance(keyfile, str):
            keyfile = self._read(keyfile)
        self._context.load_cert_chain(certfile, keyfile)

    def load_verify_locations(self, cafile=None, cadata=None) -> None:
        if cafile:
            cadata = self._read(cafile)
        self._context.load_verify_locations(cadata)

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True, server_hostname=None):
        return self._context.wrap_socket(
            sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect, server_hostname=server_hostname
        )

    def host_context(self) -> _ssl.SSLContext:
        return self._context.host_context()


class SslModule:
    """The board's `ssl` module (the micropython-lib wrapper over `tls`)."""

    __name__ = "ssl"
    PROTOCOL_TLS_CLIENT = PROTOCOL_TLS_CLIENT
    PROTOCOL_TLS_SERVER = PROTOCOL_TLS_SERVER
    CERT_NONE = CERT_NONE
    CERT_OPTIONAL = CERT_OPTIONAL
    CERT_REQUIRED = CERT_REQUIRED
    MBEDTLS_VERSION = MBEDTLS_VERSION

    def __init__(self, board, tls: TlsModule | None = None):
        self._board = board
        self._tls = tls or TlsModule(board)
        self.SSLContext = type("SSLContext", (WrapperSSLContext,), {"_board": board, "_tls": self._tls})

    @property
    def contexts(self) -> list:
        return self._tls.contexts

    def wrap_socket(self, sock, server_side=False, key=None, cert=None, cert_reqs=CERT_NONE, cadata=None,
                    server_hostname=None, do_handshake=True):
        con = self.SSLContext(PROTOCOL_TLS_SERVER if server_side else PROTOCOL_TLS_CLIENT)
        if cert or key:
            con.load_cert_chain(cert, key)
        if cadata:
            con.load_verify_locations(cadata=cadata)
        con.verify_mode = cert_reqs
        return con.wrap_socket(
            sock, server_side=server_side, do_handshake_on_connect=do_handshake, server_hostname=server_hostname
        )
