"""A board's network link: DNS, TCP connections to the broker, and the faults
a real deployment meets, applied where a board would meet them.

Faults are data on the `Link` (`blackhole_rx`, `blackhole_tx`, `dns_fail`) or
one-off actions (`kill_connections`, `abandon_connections`); every decision
is logged through the board so a failing run can be replayed. The firmware
sees MicroPython's asyncio `Stream` API and ESP32 errno values.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import struct
import time

# ESP-IDF (newlib) errno values, as MicroPython on ESP32 reports them.
ECONNRESET = 104
ECONNABORTED = 113
ETIMEDOUT = 116
EHOSTUNREACH = 118
ENOTCONN = 128
EAI_FAIL = -202  # getaddrinfo failure as lwIP reports it


class Link:
    def __init__(self, board, hosts: dict[str, str] | None = None):
        self.board = board
        self.hosts = dict(hosts or {})
        self.connections: set[Connection] = set()
        self.dns_fail = False
        # tap(direction, data, monotonic_time) sees every byte that crosses the
        # link ("tx" board->broker, "rx" broker->board): for tests and traces.
        self.taps: list = []
        self._abandoned: list[Connection] = []
        self._rx_open = asyncio.Event()
        self._tx_open = asyncio.Event()
        self._rx_open.set()
        self._tx_open.set()

    # -- fault controls ----------------------------------------------------------

    @property
    def blackhole_rx(self) -> bool:
        return not self._rx_open.is_set()

    @property
    def blackhole_tx(self) -> bool:
        return not self._tx_open.is_set()

    def blackhole(self, rx: bool = True, tx: bool = True) -> None:
        """Stop bytes in either direction without closing anything (TCP keeps
        the data and retransmits it if the path heals)."""
        (self._rx_open.clear if rx else self._rx_open.set)()
        (self._tx_open.clear if tx else self._tx_open.set)()
        self.board.log_event("link", f"blackhole rx={rx} tx={tx}")
        if not tx:
            for c in list(self.connections):
                c.flush_backlog()

    def heal(self) -> None:
        self.blackhole(rx=False, tx=False)

    def kill_connections(self, rst: bool = True) -> int:
        """Close every connection now (RST by default, else FIN); both sides see it."""
        n = 0
        for c in list(self.connections):
            c.kill(rst)
            n += 1
        self.board.log_event("link", f"killed {n} connection(s) with {'RST' if rst else 'FIN'}")
        return n

    def abandon_connections(self) -> int:
        """The board vanished (power loss, reset): no FIN, no more bytes from
        us; the broker keeps the half-open connection until its keepalive
        expires or the same client id connects again.

        Call `release_abandoned()` once the board's tasks have stopped: from
        then on the sockets are drained and closed when the broker gives up.
        """
        n = 0
        for c in list(self.connections):
            c.abandon()
            self._abandoned.append(c)
            n += 1
        if n:
            self.board.log_event("link", f"abandoned {n} connection(s) half-open")
        return n

    def release_abandoned(self) -> None:
        while self._abandoned:
            c = self._abandoned.pop()
            self.board.loop.create_task(c.linger())

    def wifi_lost(self) -> None:
        """WiFi gone: established sockets stall (nothing reaches the AP)."""
        for c in list(self.connections):
            c.stalled = True

    # -- what the firmware calls ---------------------------------------------------

    async def resolve(self, host: str) -> str:
        if self.dns_fail:
            self.board.log_event("link", f"DNS failure for {host!r} (injected)")
            raise OSError(EAI_FAIL)
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        if host in self.hosts:
            return self.hosts[host]
        if host == "localhost":
            return "127.0.0.1"
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError:
            raise OSError(EAI_FAIL) from None
        return infos[0][4][0]

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        if not self.board.radio.connected:
            raise OSError(EHOSTUNREACH)
        ip = await self.resolve(host)
        kwargs = {}
        if ssl is not None:
            kwargs["ssl"] = ssl.host_context() if hasattr(ssl, "host_context") else ssl
            kwargs["server_hostname"] = server_hostname or host
        try:
            reader, writer = await asyncio.open_connection(ip, port, **kwargs)
        except ConnectionRefusedError:
            raise OSError(ECONNRESET) from None
        except asyncio.TimeoutError:
            raise OSError(ETIMEDOUT) from None
        except OSError as e:
            raise OSError(getattr(e, "errno", None) or ECONNABORTED) from None
        conn = Connection(self, reader, writer)
        self.connections.add(conn)
        self.board.log_event("link", f"connected to {ip}:{port}")
        stream = Stream(conn)
        return stream, stream


class Connection:
    """One TCP connection as the board sees it."""

    def __init__(self, link: Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.link = link
        self.reader = reader
        self.writer = writer
        self.closed = False
        self.abandoned = False
        self.stalled = False
        self._backlog: list[bytes] = []

    async def read(self, n: int) -> bytes:
        if self.closed or self.abandoned:
            raise OSError(ENOTCONN)
        while self.stalled:
            await asyncio.sleep(3600)
        await self.link._rx_open.wait()
        try:
            data = await self.reader.read(n if n > 0 else 4096)
        except (ConnectionError, OSError):
            raise OSError(ECONNRESET) from None
        self._tap("rx", data)
        return data

    def _tap(self, direction: str, data: bytes) -> None:
        if self.link.taps and data:
            now = time.monotonic()
            for tap in self.link.taps:
                tap(direction, data, now)

    def write(self, data: bytes) -> None:
        if self.closed or self.abandoned:
            raise OSError(ENOTCONN)
        if self.stalled or self.link.blackhole_tx or self._backlog:
            self._backlog.append(bytes(data))
            return
        self._tap("tx", data)
        self.writer.write(data)

    def flush_backlog(self) -> None:
        if self.closed or self.abandoned or self.stalled:
            return
        while self._backlog:
            data = self._backlog.pop(0)
            self._tap("tx", data)
            self.writer.write(data)

    async def drain(self) -> None:
        if self.closed or self.abandoned:
            raise OSError(ENOTCONN)
        if self._backlog:
            # Unsent bytes: a blackholed path stalls the sender like a full window.
            while self._backlog and sum(map(len, self._backlog)) > 16384:
                await asyncio.sleep(0.05)
            return
        try:
            await self.writer.drain()
        except (ConnectionError, OSError):
            raise OSError(ECONNRESET) from None

    def close(self) -> None:
        if self.closed or self.abandoned:
            return
        self.closed = True
        self.link.connections.discard(self)
        self.writer.close()

    def kill(self, rst: bool) -> None:
        if self.closed or self.abandoned:
            return
        if rst:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.closed = True
        self.link.connections.discard(self)
        self.writer.transport.abort() if rst else self.writer.close()

    def abandon(self) -> None:
        if self.closed or self.abandoned:
            return
        self.abandoned = True
        self.link.connections.discard(self)

    async def linger(self) -> None:
        # Keep the socket open, swallow what the broker sends, close once the
        # broker gives up on it (EOF or reset).
        try:
            while await self.reader.read(4096):
                pass
        except (ConnectionError, OSError):
            pass
        self.writer.close()


class Stream:
    """MicroPython's asyncio Stream, over a `Connection`."""

    def __init__(self, conn: Connection):
        self._c = conn

    def get_extra_info(self, name: str):
        if name == "peername":
            return self._c.writer.get_extra_info("peername")
        return None

    async def read(self, n: int = -1) -> bytes:
        return await self._c.read(n)

    async def readinto(self, buf) -> int:
        data = await self._c.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    async def readexactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = await self._c.read(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    async def readline(self) -> bytes:
        out = b""
        while not out.endswith(b"\n"):
            chunk = await self._c.read(1)
            if not chunk:
                break
            out += chunk
        return out

    def write(self, buf) -> None:
        self._c.write(bytes(buf))

    async def drain(self) -> None:
        await self._c.drain()

    async def awrite(self, buf, off: int = 0, sz: int = -1) -> None:
        end = len(buf) if sz < 0 else off + sz
        self.write(bytes(buf[off:end]))
        await self.drain()

    def close(self) -> None:
        self._c.close()

    async def wait_closed(self) -> None:
        if self._c.closed and not self._c.abandoned:
            try:
                await self._c.writer.wait_closed()
            except (ConnectionError, OSError):
                pass

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()


__all__ = ["Link", "Connection", "Stream", "errno"]
