# tlsctx.py - the TLS client context for MQTT over mutual TLS (config.json
# "broker": {"tls": true}).
#
# Reads three files from the filesystem root, all DER (what `esp32emu certs`
# makes for a board and `esp32emu flash` copies; mbedTLS takes DER as is,
# PEM would need its trailing NUL and base64 decoding):
#   ca.crt      the CA that signed the broker's certificate (one certificate)
#   client.crt  this device's certificate (CN = device id)
#   client.key  its private key (unencrypted PKCS#8 or SEC1)
#
# The context is a client context that *requires* the server's certificate
# to verify against ca.crt (set explicitly: the `ssl` wrapper of 1.23+
# defaults to CERT_NONE) and whose name the caller checks by passing
# server_hostname to asyncio.open_connection. mbedTLS checks validity dates
# against the RTC, so the clock must be set (NTP) before the handshake:
# clock_ok() says whether it is.
#
# Prefers the native `tls` module (1.23+) and falls back to `ssl`, which is
# the same native module on 1.22. Both take the CA and the certificate
# positionally: the native load_verify_locations() accepts no keywords
# (only the 1.23+ Python wrapper knows `cadata=`).
#
# Touches no hardware and keeps no state: every call builds a new context.
import time

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


CA_FILE = "ca.crt"
CERT_FILE = "client.crt"
KEY_FILE = "client.key"
_CLOCK_SET_AFTER = const(700000000)  # seconds since 2000-01-01 (~2022): NTP has run


class TlsSetupError(Exception):
    # The board cannot build its TLS context (a file missing or unparsable);
    # `str()` says which, fit for the console.
    pass


def _tls_module():
    try:
        import tls

        return tls
    except ImportError:
        import ssl  # MicroPython 1.22: the native module still had this name

        return ssl


def clock_ok():
    # True once the RTC holds a plausible date (time.time() counts from 2000).
    return time.time() >= _CLOCK_SET_AFTER


def _read(open_, name):
    try:
        with open_(name, "rb") as f:
            data = f.read()
    except OSError as e:
        raise TlsSetupError("tls: cannot read %s: %r" % (name, e))
    if not data:
        raise TlsSetupError("tls: %s is empty" % name)
    return data


def client_context(open_=open, own=True):
    # A tls.SSLContext for the broker connection; raises TlsSetupError.
    # own=False: verify the server only, no certificate of this device (the
    # HTTPS release server of an update asks for none: otahttp.py).
    mod = _tls_module()
    ca = _read(open_, CA_FILE)
    ctx = mod.SSLContext(mod.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = mod.CERT_REQUIRED
    try:
        ctx.load_verify_locations(ca)
    except (OSError, ValueError) as e:
        raise TlsSetupError("tls: %s is not a certificate mbedTLS accepts: %r" % (CA_FILE, e))
    if not own:
        return ctx
    cert = _read(open_, CERT_FILE)
    key = _read(open_, KEY_FILE)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ValueError) as e:
        raise TlsSetupError("tls: %s/%s rejected: %r" % (CERT_FILE, KEY_FILE, e))
    return ctx
