"""The dashboard served: uvicorn on a socket bound here (a busy port is one
line, port 0 picks a free one), in a thread with its own event loop, so
that `esp32emu dashboard`, `fleet --dashboard` and tests start it the same
way beside whatever else the process runs. And `esp32emu dashboard` itself.
"""

from __future__ import annotations

import secrets
import socket
import sys
import threading
import time
from pathlib import Path

from emulator.dashboard.hub import CLIENT_QUEUE, DEFAULT_HISTORY, Hub
from emulator.observe.counting import FleetObserver
from emulator.validation import UsageError, parse_broker_url


SNDBUF = 256 * 1024  # per client socket (Linux doubles it for its bookkeeping)


class Dashboard:
    """The backend for one observer: `start()`, `.url` (with the token), `stop()`."""

    def __init__(self, observer: FleetObserver, host: str = "127.0.0.1", port: int = 8080, token: str | None = None,
                 history: int = DEFAULT_HISTORY, client_queue: int | None = None, events_log: Path | None = None):
        """`events_log`: the file that keeps the replay ring across restarts
        (`events_log_in(state_dir)`); None: the ring lives in memory only."""
        from emulator.dashboard.app import build_app

        self.host, self.port = host, port
        self.token = token or secrets.token_urlsafe(16)
        self.hub = Hub(observer, history, CLIENT_QUEUE if client_queue is None else client_queue, events_log)
        self.app = build_app(self.hub, self.token)
        self.server = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def base(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The page's URL with the token: what a user opens."""
        return f"{self.base}/?token={self.token}"

    def start(self, timeout: float = 10.0) -> "Dashboard":
        import uvicorn

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Inherited by every accepted socket: a client that stops reading holds
        # at most this much in the kernel (not the 4 MiB autotuning would give
        # it), so it soon backs up into its bounded queue and is dropped.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise UsageError(f"dashboard: cannot listen on {self.host}:{self.port}: {e.strerror or e}") from None
        sock.listen(2048)  # 1,000 EventSources connecting at once
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=2, ws_ping_interval=20, backlog=2048)
        self.server = uvicorn.Server(config)

        def serve() -> None:
            try:
                self.server.run(sockets=[sock])  # uvicorn's loop (uvloop when installed)
            except BaseException as e:  # noqa: BLE001 - said by start()
                self._error = e
            finally:
                sock.close()

        self._thread = threading.Thread(target=serve, name="esp32emu-dashboard", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard: the server did not start: {self._error or 'timeout'}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is None:
            return
        loop = self.hub.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self.hub.shutdown)  # end the streams: their clients reconnect elsewhere
            except RuntimeError:
                pass
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        if self._thread is None or not self._thread.is_alive():
            self.hub.detach()  # the loop's shutdown did it, unless the loop was gone

    def __enter__(self) -> "Dashboard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Nothing:
    def stop(self) -> None:
        pass


def events_log_in(state_dir: Path) -> Path:
    """Where `esp32emu dashboard` and `fleet --dashboard` keep the replay ring."""
    return Path(state_dir) / "dashboard" / "events.log"


def beside(observer: FleetObserver, port: int | None, state_dir: Path | None = None) -> "Dashboard | _Nothing":
    """`fleet --dashboard PORT`: the backend on the fleet's own observer,
    started and its URL said (its replay ring kept in `state_dir`); without
    a port, something whose stop() does nothing."""
    if port is None:
        return _Nothing()
    dashboard = Dashboard(observer, port=port, events_log=None if state_dir is None else events_log_in(state_dir)).start()
    say_url(dashboard)
    return dashboard


def check_options(host: str, history: int, token: str | None, prefix: str) -> None:
    if history < 1:
        raise UsageError(f"--history must be at least 1, got {history}")
    if token is not None and (len(token) < 8 or not token.isprintable() or " " in token):
        raise UsageError("--token must be at least 8 printable characters without spaces")
    if not prefix or "+" in prefix or "#" in prefix:
        raise UsageError(f"--prefix must be a topic prefix without wildcards, got {prefix!r}")


def say_url(dashboard: Dashboard) -> None:
    print(f"esp32emu: dashboard at {dashboard.url}", file=sys.stderr, flush=True)
    if dashboard.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"esp32emu: warning: the dashboard listens on {dashboard.host}, not only this machine: "
              "anyone who has the token can command the devices", file=sys.stderr, flush=True)


def run_dashboard(broker: str | None, host: str = "127.0.0.1", port: int = 8080, prefix: str = "devices",
                  token: str | None = None, history: int = DEFAULT_HISTORY, state_dir: Path = Path(".esp32emu"),
                  certs_dir: Path = Path("certs"), duration: float | None = None) -> int:
    """`esp32emu dashboard`: the backend for `broker` (default: a private
    Mosquitto) until Ctrl-C."""
    from emulator.broker.mosquitto import BrokerError
    from emulator.broker.pick import broker_for

    check_options(host, history, token, prefix)
    if broker is not None:
        parse_broker_url(broker)
    with broker_for(broker, state_dir) as url:
        observer = FleetObserver(url.host, url.port, prefix=prefix.strip("/"))
        if url.tls:
            try:
                observer.use_tls(Path(certs_dir), "backend-dashboard")
            except FileNotFoundError as e:
                raise UsageError(f"mqtts:// connects as the backend identity: {e}") from None
        dashboard = Dashboard(observer, host, port, token, history, events_log=events_log_in(state_dir))
        try:
            observer.start()
        except ConnectionError as e:
            raise BrokerError(str(e)) from None
        try:
            dashboard.start()
            print(f"esp32emu: dashboard watching {url} ({prefix}/+/status, telemetry, cmd/result)", file=sys.stderr, flush=True)
            say_url(dashboard)
            deadline = None if duration is None else time.monotonic() + duration
            try:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.2 if deadline is None else min(0.2, max(deadline - time.monotonic(), 0.0)))
            except KeyboardInterrupt:
                pass
        finally:
            dashboard.stop()
            observer.stop()
    return 0
