"""Checks for what users type: command-line numbers, broker URLs, device ids
and the state folder. Each bad value becomes one line that names it
(`UsageError`; `BadValue` from the option parsers, which cli.py hands to
argparse as `type=`), so the CLI exits 2 without a traceback.

One rule per kind of input, used everywhere that input enters: the option
parsers below and the library functions (run, fleet, certs) call the
same checks. No argparse here: cli.py is the only module that knows it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit


class UsageError(Exception):
    """Bad command-line input; the CLI prints it on one line and exits 2."""


class BadValue(ValueError):
    """One option's text is not a good value; the message says why (without the option's name)."""


# -- numbers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Number:
    """An int or float option with bounds; floats must be finite."""

    kind: type  # int or float
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is not allowed (e.g. "positive")
    unit: str = ""

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        unit = f" ({self.unit})" if self.unit else ""
        if self.lo is not None and self.hi is not None:
            return f"{what} {_fmt(self.lo)}..{_fmt(self.hi)}{unit}"
        if self.lo == 0 and self.lo_open:
            return f"a positive {what.split()[-1]}{unit}"
        if self.lo is not None:
            return f"{what} {'>' if self.lo_open else '>='} {_fmt(self.lo)}{unit}"
        return what + unit

    def error(self, value: Any) -> str | None:
        """Why `value` (already an int or float) is out of bounds, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be {self.describe()}, got {value!r}"
        if self.kind is int and not isinstance(value, int):
            return f"must be {self.describe()}, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be {self.describe()}, got {value!r}"
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            return f"must be {self.describe()}, got {_fmt(value)}"
        if self.hi is not None and value > self.hi:
            return f"must be {self.describe()}, got {_fmt(value)}"
        return None

    def check(self, option: str, value: Any) -> Any:
        """`value` if it is in bounds, else UsageError naming `option`."""
        why = self.error(value)
        if why is not None:
            raise UsageError(f"{option} {why}")
        return value

    def __call__(self, text: str):
        """Parse and check one option's text; BadValue when it is not good."""
        try:
            value = self.kind(text.strip())
        except ValueError:
            raise BadValue(f"must be {self.describe()}, got {text!r}") from None
        why = self.error(value)
        if why is not None:
            raise BadValue(why)
        return value


def _fmt(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else str(x)


# Bounds shared by the CLI and the functions behind it (firmware/config.py has
# the same ones for keepalive and interval).
KEEPALIVE = Number(int, 2, 65535, unit="seconds")
INTERVAL = Number(float, 0.1, 86400, unit="seconds")
DURATION = Number(float, 0, None, lo_open=True, unit="seconds")
BOOT_RATE = Number(float, 0, None, lo_open=True, unit="boards per second")
DEVICES = Number(int, 1, 99_999)  # ids dev-00001..dev-99999
CERT_DEVICES = Number(int, 0, 100_000)
WORKERS = Number(int, 1, None)
PORT = Number(int, 1, 65535)
FLASH_KIB = Number(int, 16, 16384, unit="KiB")
SEED = Number(int)


_HEAP_RE = re.compile(r"^[1-9][0-9]*[kKmM]?$")


def check_heap(heap: str | int) -> str:
    """A VM board's heap: `100k`, `1m` or a byte count, as `micropython -X
    heapsize=` takes it; BadValue when it is not one."""
    text = str(heap).strip()
    if not _HEAP_RE.match(text):
        raise BadValue(f"heap must look like 100k, 2m or 120000, got {heap!r}")
    return text


def heap_bytes(heap: str | int) -> int:
    text = check_heap(heap).lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(text[-1], 1)
    return int(text.rstrip("km")) * scale


heap = check_heap  # `--heap`


# -- device ids ------------------------------------------------------------------------

ID_MAX = 64
ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
BACKEND_ID = "backend"  # the PKI's backend identity (fleet-wide rights in the broker's ACL)
RESERVED_IDS = {BACKEND_ID}
ID_RULE = f"1..{ID_MAX} characters of A-Z a-z 0-9 _ -"


def device_id_error(device_id: Any) -> str | None:
    """Why `device_id` is not a device id, or None. The firmware's rule
    (firmware/config.py `_check_id`: 1..64 of [A-Za-z0-9_-]) plus the
    PKI's reserved name; it also keeps an id a safe file and topic name."""
    if not isinstance(device_id, str) or not 1 <= len(device_id) <= ID_MAX or not set(device_id) <= ID_CHARS:
        return f"device id {device_id!r} must be {ID_RULE}"
    if device_id in RESERVED_IDS or device_id.startswith(BACKEND_ID + "-"):
        return f"device id {device_id!r} is reserved for the backend identity (backend, backend-*)"
    return None


def check_device_id(device_id: Any) -> str:
    why = device_id_error(device_id)
    if why is not None:
        raise UsageError(why)
    return device_id


def device_id(text: str) -> str:
    """`--id`: a device id."""
    why = device_id_error(text)
    if why is not None:
        raise BadValue(why.removeprefix("device id "))
    return text


# -- broker URLs -----------------------------------------------------------------------

_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")
HOST_MAX = 253  # a DNS name (firmware/config.py broker.host)


@dataclass(frozen=True)
class BrokerURL:
    scheme: str
    host: str
    port: int
    broker: Any = field(default=None, compare=False)  # the emulator.broker.mosquitto.Broker, when the tool started it
    username: str | None = None  # MQTT CONNECT credentials (mqtt://user:password@host)
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:  # never shows the password
        user = f"{quote(self.username, safe='')}@" if self.username is not None else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


CREDENTIAL_MAX = 256  # bytes, as firmware/config.py bounds broker.username and broker.password


def parse_broker_url(url: str, credentials: bool = False) -> BrokerURL:
    """`mqtt://host[:port]` or `mqtts://host[:port]` (ports 1883 / 8883 by
    default), and with `credentials` (the commands whose boards and observer
    log in with them) `user[:password]@` before the host, %-encoded.
    Whatever else a URL can carry is refused, not dropped."""

    def bad(why: str) -> UsageError:
        return UsageError(f"--broker {_hide_password(url)!r}: {why} (expected mqtt://host:port or mqtts://host:port)")

    try:
        parts = urlsplit(url.strip())
    except ValueError as e:  # e.g. "Invalid IPv6 URL"
        raise bad(str(e)) from None
    if parts.scheme not in ("mqtt", "mqtts"):
        raise bad(f"the scheme must be mqtt or mqtts, got {parts.scheme or 'none'!r}")
    if parts.path not in ("", "/"):
        raise bad(f"a path ({parts.path!r}) is not supported")
    if parts.query or parts.fragment or url.strip().endswith(("?", "#")):
        raise bad("a query or fragment is not supported")
    userinfo, at, netloc = parts.netloc.rpartition("@")
    username = password = None
    if at:
        if not credentials:
            raise bad("user:password@ is not supported by this command (run and fleet log in with it)")
        user_text, colon, pass_text = userinfo.partition(":")
        username, password = unquote(user_text), unquote(pass_text) if colon else None
        for what, value in (("user name", username), ("password", password)):
            if value is not None and ("\x00" in value or len(value.encode()) > CREDENTIAL_MAX):
                raise bad(f"the {what} must be at most {CREDENTIAL_MAX} bytes without NUL")
        if not username:
            raise bad("no user name before '@'" if password is None else
                      "a password needs a user name (MQTT 3.1.1 sends no password without one)")
    if netloc.startswith("["):
        raise bad("IPv6 addresses are not supported (the emulated boards speak IPv4)")
    host, sep, port_text = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    if not host:
        raise bad("no host")
    if len(host) > HOST_MAX or not _HOST_RE.fullmatch(host):
        raise bad(f"bad host {host!r}")
    if sep:
        if not port_text.isascii() or not port_text.isdigit():
            raise bad(f"the port must be 1..65535, got {port_text!r}")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise bad(f"the port must be 1..65535, got {port}")
    else:
        port = 8883 if parts.scheme == "mqtts" else 1883
    return BrokerURL(parts.scheme, host.lower(), port, username=username, password=password)


def _hide_password(url: str) -> str:
    """`url` with the password of any user:password@ replaced by ***."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url, count=1)


# -- the state folder ------------------------------------------------------------------


def _file_in_the_way(path: Path) -> Path | None:
    """`path` or the first of its parents that exists, when that is not a folder."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def state_dir(path: Path) -> Path:
    """Make sure `path` is (or can be made) a writable folder; UsageError when not."""
    path = Path(path)
    in_the_way = _file_in_the_way(path)
    if in_the_way is not None:
        raise UsageError(f"--state {path}: {'it' if in_the_way == path else in_the_way} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--state {path}: cannot create it: {e.strerror}") from None
    probe = path / ".esp32emu-write-test"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--state {path}: cannot write there: {e.strerror}") from None
    return path


def writable_file(option: str, path: Path) -> Path:
    """Check, before a long run, that `path` can be written at its end (the
    file is not left behind when it did not exist)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file")
    in_the_way = _file_in_the_way(path.parent)
    if in_the_way is not None:
        raise UsageError(f"{option} {path}: {in_the_way} is a file, not a folder")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write it: {e.strerror}") from None
    if not existed:
        path.unlink()
    return path
