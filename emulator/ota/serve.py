"""`esp32emu release serve DIR`: releases over HTTP/1.1 (or HTTPS with the
dev PKI's server certificate), with single `Range` requests (206, 416), on
loopback by default. The boards only GET (and resume with `Range`), so any
static web server does as well; this one adds what tests and scenarios need:

- fault hooks (`Faults`): drop the connection after N bytes of a file's
  body, corrupt one byte of a file in transit, a slow rate (bytes/s), each
  for a number of responses (`times`, 0 = every one);
- counts (`Stats`): requests, bytes of bodies served, 206/416 answers,
  faults injected.

One thread per connection (`ThreadingHTTPServer`) with a listen backlog for
a fleet's worth of boards asking at once.
"""

from __future__ import annotations

import fnmatch
import re
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from emulator.validation import UsageError

CHUNK = 4096
RANGE = re.compile(r"bytes=(\d*)-(\d*)")


@dataclass
class Rule:
    """One fault: `kind` "drop" (close after `at` body bytes), "corrupt"
    (flip the byte at file offset `at`) or "rate" (`at` bytes/s), on files
    whose path under the served folder matches `pattern` (fnmatch; also
    as a tail: "files/device.py" and "device.py" match "r1/files/device.py"),
    for `times` responses (0: all)."""

    kind: str
    pattern: str
    at: int
    times: int = 1
    used: int = 0

    def take(self, path: str, start: int, length: int) -> bool:
        if not fnmatch.fnmatch(path, self.pattern) and not fnmatch.fnmatch(path, "*/" + self.pattern):
            return False
        if (self.kind == "drop" and self.at >= length) or (self.kind == "corrupt" and not start <= self.at < start + length):
            return False  # this response is too short for the fault: the next one gets it
        if self.times and self.used >= self.times:
            return False
        self.used += 1
        return True


class Faults:
    """The server's fault rules (thread-safe); tests add and clear them while it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[Rule] = []

    def drop(self, pattern: str, after: int, times: int = 1) -> Rule:
        return self._add(Rule("drop", pattern, after, times))

    def corrupt(self, pattern: str, offset: int, times: int = 1) -> Rule:
        return self._add(Rule("corrupt", pattern, offset, times))

    def rate(self, pattern: str, bytes_per_s: int, times: int = 0) -> Rule:
        return self._add(Rule("rate", pattern, bytes_per_s, times))

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def _add(self, rule: Rule) -> Rule:
        if rule.at < 0 or (rule.kind == "rate" and rule.at == 0):
            raise ValueError(f"{rule.kind}: bad number {rule.at}")
        with self._lock:
            self.rules.append(rule)
        return rule

    def for_response(self, path: str, start: int, length: int) -> dict[str, int]:
        """The faults a response of `length` bytes of `path` from `start` gets:
        {"drop": n, "corrupt": offset, "rate": bps}."""
        out: dict[str, int] = {}
        with self._lock:
            for rule in self.rules:
                if rule.kind not in out and rule.take(path, start, length):
                    out[rule.kind] = rule.at
        return out


@dataclass
class Stats:
    requests: int = 0
    bytes_served: int = 0  # body bytes written (what the boards downloaded, faults included)
    partial: int = 0  # 206 answers
    unsatisfiable: int = 0  # 416 answers
    not_found: int = 0
    drops: int = 0
    corruptions: int = 0
    by_path: dict[str, int] = field(default_factory=dict)  # requests per path
    log: list[tuple[str, str | None, str]] = field(default_factory=list)  # each request: path, Range, Host
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self.lock:
            for k, n in counts.items():
                setattr(self, k, getattr(self, k) + n)

    def as_dict(self) -> dict:
        with self.lock:
            return {k: v for k, v in vars(self).items() if k != "lock" and not isinstance(v, (dict, list))} | {
                "by_path": dict(self.by_path)}


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"
    server_version = "esp32emu-release/1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet unless asked
        if self.server.verbose:
            sys.stderr.write(f"esp32emu: release serve: {self.address_string()} {format % args}\n")

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        srv = self.server
        rel = unquote(urlsplit(self.path).path).lstrip("/")
        srv.stats.add(requests=1)
        with srv.stats.lock:
            srv.stats.by_path[rel] = srv.stats.by_path.get(rel, 0) + 1
            srv.stats.log.append((rel, self.headers.get("Range"), self.headers.get("Host", "")))
        target = (srv.root / rel).resolve()
        if not target.is_relative_to(srv.root) or not target.is_file():
            srv.stats.add(not_found=1)
            self._plain(404, "not found\n")
            return
        size = target.stat().st_size
        start, end, status = 0, size - 1, 200
        header = self.headers.get("Range")
        if header is not None:
            m = RANGE.fullmatch(header.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:  # a suffix: the last N bytes
                    start = max(0, size - int(m.group(2)))
                if start >= size or start > end:
                    srv.stats.add(unsatisfiable=1)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                status = 206
            # anything else (several ranges, other units) gets the whole file, as RFC 9110 allows
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if rel.endswith(".json") else "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            srv.stats.add(partial=1)
        self.end_headers()
        if body:
            self._send_body(target, rel, start, length)

    def _send_body(self, target: Path, rel: str, start: int, length: int) -> None:
        faults = self.server.faults.for_response(rel, start, length)
        drop, corrupt, rate = faults.get("drop"), faults.get("corrupt"), faults.get("rate")
        sent = 0
        t0 = time.monotonic()
        with open(target, "rb") as f:
            f.seek(start)
            while sent < length:
                chunk = f.read(min(CHUNK, length - sent, rate or CHUNK))
                if not chunk:
                    break
                if corrupt is not None and start + sent <= corrupt < start + sent + len(chunk):
                    i = corrupt - start - sent
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
                    self.server.stats.add(corruptions=1)
                if drop is not None and sent + len(chunk) >= drop:
                    chunk = chunk[: drop - sent]
                    self._write(chunk)
                    self.server.stats.add(bytes_served=len(chunk), drops=1)
                    self._drop()
                    return
                if not self._write(chunk):
                    return
                sent += len(chunk)
                self.server.stats.add(bytes_served=len(chunk))
                if rate:
                    ahead = t0 + sent / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)  # this connection's own thread: pacing, not synchronisation

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
            return False
        return True

    def _drop(self) -> None:
        """The link goes away mid-file: RST, no more bytes."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self._write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 2048  # a fleet's wave asks at once
    root: Path
    faults: Faults
    stats: Stats
    verbose: bool = False


class ReleaseServer:
    """Serves `root` (a folder of releases, or one release) on `bind:port`
    (0: a free port) in a thread; `url(rel)` names a file under it."""

    def __init__(self, root: Path | str, port: int = 0, bind: str = "127.0.0.1", *, tls_dir: Path | None = None,
                 verbose: bool = False) -> None:
        root = Path(root).resolve()
        if not root.is_dir():
            raise UsageError(f"release serve: {root} is not a folder")
        self.faults, self.stats = Faults(), Stats()
        try:
            self._httpd = _Server((bind, port), _Handler)
        except OSError as e:
            raise UsageError(f"release serve: cannot listen on {bind}:{port}: {e.strerror or e}") from None
        self._httpd.root, self._httpd.faults, self._httpd.stats, self._httpd.verbose = root, self.faults, self.stats, verbose
        self.scheme = "http"
        if tls_dir is not None:
            crt, key = Path(tls_dir) / "broker.crt", Path(tls_dir) / "broker.key"
            if not (crt.is_file() and key.is_file()):
                self._httpd.server_close()
                raise UsageError(f"--tls needs {crt} and {key}: run `esp32emu certs` first")
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(crt, key)
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
            self.scheme = "https"
        self.root = root
        self.host, self.port = self._httpd.server_address[:2]
        self._thread: threading.Thread | None = None

    def url(self, rel: str = "") -> str:
        host = self.host if ":" not in str(self.host) else f"[{self.host}]"
        return f"{self.scheme}://{host}:{self.port}/{rel.lstrip('/')}"

    def start(self) -> "ReleaseServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="release-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(5)
        self._httpd.server_close()

    def __enter__(self) -> "ReleaseServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_serve(root: Path, port: int, bind: str, *, tls_dir: Path | None = None, duration: float | None = None,
              drop_after: int | None = None, corrupt_at: int | None = None, rate: int | None = None,
              fault_times: int = 1) -> int:
    """`esp32emu release serve`: until Ctrl-C (or --duration), then the counts."""
    if bind not in ("127.0.0.1", "localhost", "::1"):
        print(f"esp32emu: note: serving {root} on {bind}: releases are public (they are signed, not secret)",
              file=sys.stderr)
    server = ReleaseServer(root, port, bind, tls_dir=tls_dir, verbose=True)
    if drop_after is not None:
        server.faults.drop("files/*", drop_after, fault_times)
    if corrupt_at is not None:
        server.faults.corrupt("files/*", corrupt_at, fault_times)
    if rate is not None:
        server.faults.rate("*", rate, 0)
    manifests = sorted(p.relative_to(server.root).as_posix() for p in server.root.rglob("manifest.json"))
    with server:
        print(f"esp32emu: serving {server.root} at {server.url()}", flush=True)
        for m in manifests[:20]:
            print(f"esp32emu: release: {server.url(m)}", flush=True)
        if not manifests:
            print(f"esp32emu: note: no manifest.json under {server.root} (`esp32emu release build` makes one)", file=sys.stderr)
        stop = threading.Event()
        try:
            stop.wait(duration)
        except KeyboardInterrupt:
            pass
    s = server.stats.as_dict()
    print(f"esp32emu: served {s['requests']} requests, {s['bytes_served']} bytes ({s['partial']} ranges, "
          f"{s['drops']} drops, {s['corruptions']} corruptions injected)", flush=True)
    return 0
