"""The link model of a board on the real interpreter: a loopback TCP proxy
between the `micropython` process and the broker.

The board's config.json points at the proxy's 127.0.0.1 port; every
connection the board opens is accepted here and forwarded to the real
broker through two shaped pipes (emulator/net/pipe.py, the same model as the
CPython boards' link: latency, jitter, bandwidth, slicing, loss, and a
blackholed direction that holds its bytes until the path heals). TLS passes
through untouched: the proxy only moves bytes.

Faults, named as on `emulator.net.link.Link`: `set_profile`, `blackhole(rx, tx)`,
`heal`, `kill_connections(rst)` (both ends see the RST or FIN),
`wifi_lost` (established connections stall for good), and
`abandon_connections` (power loss, reset, watchdog: the board's end goes
away, the broker's end stays open and silent -- no FIN reaches it; what the
broker sends is swallowed until it gives up on the connection). DNS faults
cannot be injected: the board connects to a literal address.

This module knows nothing about MQTT or the process; emulator/board/vm/board.py
owns one proxy per board.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from emulator.net.faults import LinkFaults, abort_with_rst
from emulator.net.pipe import Pipe
from emulator.net.profiles import Profile, make_profile
from emulator.rng import SmallRandom

_EOF = "FIN"


def _rst(transport: asyncio.BaseTransport | None) -> None:
    """Abort with RST (SO_LINGER 0) instead of FIN."""
    if transport is not None and not transport.is_closing():
        abort_with_rst(transport)


class _BoardSide(asyncio.Protocol):
    """The end the `micropython` process connected to."""

    def __init__(self, proxy: "LinkProxy") -> None:
        self.proxy = proxy
        self.conn: ProxyConnection | None = None

    def connection_made(self, transport) -> None:
        self.conn = ProxyConnection(self.proxy, transport)

    def data_received(self, data: bytes) -> None:
        self.conn.from_board(data)

    def eof_received(self):
        self.conn.from_board(_EOF)
        return True

    def connection_lost(self, exc) -> None:
        self.conn.board_gone(exc)


class _BrokerSide(asyncio.Protocol):
    def __init__(self, conn: "ProxyConnection") -> None:
        self.conn = conn

    def connection_made(self, transport) -> None:
        self.conn.broker_connected(transport)

    def data_received(self, data: bytes) -> None:
        self.conn.from_broker(data)

    def eof_received(self):
        self.conn.from_broker(_EOF)
        return True

    def connection_lost(self, exc) -> None:
        self.conn.broker_gone(exc)


class ProxyConnection:
    """One board connection and its broker connection, a shaped pipe each way.
    `link` and `stalled` are what emulator/net/pipe.py reads."""

    def __init__(self, proxy: "LinkProxy", board_transport: asyncio.Transport) -> None:
        self.proxy = self.link = proxy
        self.board_t: asyncio.Transport | None = board_transport
        self.broker_t: asyncio.Transport | None = None
        self.stalled = False  # WiFi lost under it
        self.abandoned = False  # the board vanished; the broker's end stays open
        self.killed = False
        self.closed = False
        self._to_broker: list = []  # delivered by the tx pipe before the broker answered
        seed = proxy.rng.getrandbits(64)
        self.tx = Pipe(self, "tx", SmallRandom(f"{seed}:tx"), self._deliver_to_broker)
        self.rx = Pipe(self, "rx", SmallRandom(f"{seed}:rx"), self._deliver_to_board)
        proxy.connections.add(self)
        proxy._live.add(self)
        self.tx.refresh()
        self.rx.refresh()
        host, port = proxy.upstream
        asyncio.get_running_loop().create_task(self._connect(host, port))

    async def _connect(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _BrokerSide(self), host, port)
        except OSError as e:
            self.proxy.log(f"connect to {host}:{port} failed: {e.strerror or e}; RST to the board")
            self._finish()
            _rst(self.board_t)
            return
        self.proxy.log(f"connected to {host}:{port}")

    # -- the broker's end

    def broker_connected(self, transport: asyncio.Transport) -> None:
        self.broker_t = transport
        if self.abandoned or self.killed:
            if self.killed:
                transport.close()
            return
        pending, self._to_broker = self._to_broker, []
        for item in pending:
            self._deliver_to_broker(item, False)

    def from_broker(self, item) -> None:
        if self.abandoned or self.killed or self.closed:
            return  # swallowed: nobody reads any more
        self.rx.push(item)

    def broker_gone(self, exc) -> None:
        self.broker_t = None
        self.proxy._live.discard(self)
        if self.abandoned or self.killed:
            self.proxy.connections.discard(self)
            return
        if exc is not None:
            self._finish()
            _rst(self.board_t)
        else:
            self.rx.push(_EOF)

    def _deliver_to_broker(self, item, sliced: bool) -> None:
        if self.abandoned and item == _EOF:
            return  # a powered-off board sends no FIN
        t = self.broker_t
        if t is None:
            self._to_broker.append(item)
            return
        if t.is_closing():
            return
        if item == _EOF:
            t.close()
        else:
            self.proxy.tap("tx", item)
            t.write(item)

    # -- the board's end

    def from_board(self, item) -> None:
        if self.abandoned or self.killed:
            return
        if item == _EOF:
            self.closed = True
            self.proxy.connections.discard(self)
        self.tx.push(item)

    def board_gone(self, exc) -> None:
        self.board_t = None
        if self.abandoned or self.killed or self.closed:
            return
        # The process closed or lost its socket without a clean FIN.
        self.closed = True
        self.proxy.connections.discard(self)
        self.tx.push(_EOF)

    def _deliver_to_board(self, item, sliced: bool) -> None:
        t = self.board_t
        if t is None or t.is_closing() or self.abandoned:
            return
        if item == _EOF:
            t.close()
        else:
            self.proxy.tap("rx", item)
            t.write(item)

    # -- faults

    def path_changed(self) -> None:
        self.tx.refresh()
        self.rx.refresh()

    def _finish(self) -> None:
        self.proxy.connections.discard(self)
        self.proxy._live.discard(self)
        self.tx.drop()
        self.rx.drop()

    def kill(self, rst: bool) -> None:
        if self.killed or self.abandoned:
            return
        self.killed = True
        self._finish()
        for t in (self.board_t, self.broker_t):
            if rst:
                _rst(t)
            elif t is not None:
                t.close()

    def abandon(self) -> None:
        """The board vanished: its end is dropped, the broker's stays open and
        silent until the broker closes it."""
        if self.abandoned or self.killed:
            return
        self.abandoned = True
        self.proxy.connections.discard(self)
        self.tx.drop_held()  # what is already on the wire still arrives
        self.rx.drop()
        if self.board_t is not None and not self.board_t.is_closing():
            self.board_t.abort()
        if self.broker_t is None:
            self.proxy._live.discard(self)


class LinkProxy(LinkFaults):
    """A board's link: listens on 127.0.0.1, forwards to `upstream` (the fault
    API: emulator/net/faults.py; profiles it cannot apply raise UnsupportedFault)."""

    def __init__(self, device_id: str, seed: int, log_event: Callable[[str, str], None]) -> None:
        super().__init__()
        self.id = device_id
        self.upstream: tuple[str, int] = ("127.0.0.1", 1883)
        self.rng = SmallRandom(f"link:{seed}:{device_id}")
        self.connections: set[ProxyConnection] = set()  # open from the board's point of view
        self._live: set[ProxyConnection] = set()  # broker end still open
        self._log_event = log_event
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def log(self, message: str) -> None:
        self._log_event("link", message)

    async def start(self) -> int:
        if self._server is None:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(lambda: _BoardSide(self), "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """The emulator is going away: drop everything (the broker sees FIN)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for c in list(self._live | self.connections):
            for t in (c.board_t, c.broker_t):
                if t is not None:
                    t.close()
            c._finish()

    # -- faults: emulator/net/faults.py, but for what the proxy cannot do

    def _checked(self, profile: Profile) -> Profile:
        return _supported(profile)

    @property
    def dns_fail(self) -> bool:
        return False

    @dns_fail.setter
    def dns_fail(self, value: bool) -> None:
        if value:
            raise UnsupportedFault("dns_fail", "the board connects to the proxy's literal 127.0.0.1 address")


# Profile rates the proxy cannot apply: lookups and connects happen in the VM.
_UNSUPPORTED_RATES = {
    "dns_fail_rate": "the board connects to the proxy's literal 127.0.0.1 address; no DNS is asked",
    "connect_refuse_rate": "the proxy has accepted the connection before the broker is asked",
    "connect_timeout_rate": "the proxy has accepted the connection before the broker is asked",
}


def _supported(profile: Profile) -> Profile:
    for name, why in _UNSUPPORTED_RATES.items():
        if getattr(profile, name):
            raise UnsupportedFault(f"link profile {name}", why)
    return profile


class UnsupportedFault(RuntimeError):
    """A fault the MicroPython backend cannot show; the message names it."""

    def __init__(self, fault: str, why: str) -> None:
        super().__init__(f"{fault} is not supported on vm=micropython boards: {why}")
        self.fault = fault


def unsupported_action(action: str, params: dict) -> str | None:
    """Why a scenario board action cannot run on a VM board (None: it can);
    checked when a scenario is loaded, so a run never stops half-way."""
    if action == "dns_fail":
        return "the board connects to the link proxy's literal 127.0.0.1 address; no DNS is asked"
    if action == "link":
        try:
            _supported(make_profile(params.get("profile")))
        except UnsupportedFault as e:
            return f"{e.fault}: {_UNSUPPORTED_RATES.get(e.fault.split()[-1], '')}".rstrip(": ")
        except (ValueError, KeyError, TypeError):
            return None  # not ours to judge: the run says what is wrong with the profile
    return None
