"""A board's network link: DNS, TCP connections to the broker, and the faults
a real deployment meets, applied where a board would meet them.

The model. Each connection has two ordered pipes, "tx" (board->broker) and
"rx" (broker->board). A chunk entering a pipe is maybe cut into slices, each
slice waits for the line (bandwidth: bytes*8/kbps after the previous one),
then travels latency±jitter (maybe plus one retransmission timeout when
"lost"), and is delivered no earlier than the slice before it: TCP never
reorders. One `loop.call_at` timer per busy pipe does the delivering; with a
profile that shapes nothing (`wifi-good`) bytes pass straight through and no
timer exists. The receive side keeps a window (lwIP's TCP_WND): when the
board does not read, the socket stops reading and the broker is held back.

Faults are data on the `Link` (`profile`, `blackhole_rx`/`blackhole_tx`,
`dns_fail`, `refuse_connect`, `drop_syn`) or one-off actions
(`kill_connections`, `abandon_connections`, `wifi_lost`, `partition`). A
blackholed direction holds its bytes (TCP would retransmit them) and sends
them, in order, when the path heals; what was in flight when the path died
is sent again too. Every random decision comes from the link's own
`random.Random`, derived from the board's seed and id (one per connection
and direction), and every fault decision is logged through
`board.log_event("link", ...)`, so a failing run can be replayed. With
`log_delays = True` the per-chunk delays are logged as well.

The firmware sees MicroPython's asyncio `Stream` API and ESP32 errno values.
This module never touches a board's other state.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl as ssl_mod
import time
from collections.abc import Iterable, Mapping

from emulator.net.event import Event
from emulator.net.pipe import Pipe
from emulator.net.faults import LinkFaults, abort_with_rst
from emulator.net.profiles import PROFILES, Profile, make_profile, profile_names
from emulator.net.stream import Stream
from emulator.rng import SmallRandom

# ESP-IDF (newlib) errno values, as MicroPython on ESP32 reports them.
ECONNRESET = 104
ECONNABORTED = 113
ETIMEDOUT = 116
EHOSTUNREACH = 118
ENOTCONN = 128
EAI_FAIL = -202  # getaddrinfo failure as lwIP reports it

# OpenSSL's verify messages -> mbedTLS's (mbedtls_x509_crt_verify_info)
_MBEDTLS_VERIFY = (
    ("unable to get local issuer", "The certificate is not correctly signed by the trusted CA"),
    ("self-signed", "The certificate is not correctly signed by the trusted CA"),
    ("expired", "The certificate validity has expired"),
    ("not yet valid", "The certificate validity starts in the future"),
    ("mismatch", "The certificate Common Name (CN) does not match with the expected CN"),
)


def _mbedtls_reason(openssl: str) -> str:
    return next((m for o, m in _MBEDTLS_VERIFY if o in openssl), openssl)

# ESP-IDF defaults: CONFIG_LWIP_TCP_SND_BUF_DEFAULT and _WND_DEFAULT (4 MSS).
SEND_BUFFER = 5744
RECEIVE_WINDOW = 5744
# How long an unanswered SYN is retried before connect() gives up.
SYN_TIMEOUT_S = 20.0

_EOF = "FIN"  # markers that travel through a pipe in order with the bytes
_RESET = "RST"


class Link(LinkFaults):
    """A CPython board's link (the fault API: emulator/net/faults.py)."""

    def __init__(self, board, hosts: dict[str, str] | None = None, profile: str | Mapping | Profile | None = None):
        super().__init__(profile)
        self.board = board
        self.hosts = dict(hosts or {})
        self.connections: set[Connection] = set()
        self._live: set[Connection] = set()
        self.dns_fail = False  # every lookup fails
        self.refuse_connect = False  # every connect is answered with RST
        self.drop_syn = False  # every connect hangs (SYN lost)
        seed = getattr(board, "seed", None)
        if seed is None:
            seed = board.rng.getrandbits(64)
        self.rng = SmallRandom(f"link:{seed}:{board.id}")
        self._abandoned: list[Connection] = []
        self._path_change = Event()
        # Between abandon_connections() and release_abandoned() the board is
        # powered off: code of the old boot that still runs (a task whose
        # cancel was lost) gets no network at all, it just waits forever.
        self._vanished = False

    def log(self, message: str) -> None:
        self.board.log_event("link", message)

    def _path_changed(self) -> None:
        self._path_change.set()
        self._path_change = Event()

    def abandon_connections(self) -> int:
        self._vanished = True  # until release_abandoned: a powered-off board gets no network
        self._abandoned.extend(self.connections)
        return super().abandon_connections()

    def release_abandoned(self) -> None:
        """Kept for the board's teardown: abandoned sockets need no task, they
        swallow what arrives and close when the broker closes them."""
        self._abandoned.clear()
        self._vanished = False

    # -- what the firmware calls ----------------------------------------------------

    async def resolve(self, host: str) -> str:
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        if self.dns_fail:
            self.log(f"DNS failure for {host!r} (injected)")
            raise OSError(EAI_FAIL)
        rate = self.profile.dns_fail_rate
        if rate and self.rng.random() < rate:
            self.log(f"DNS failure for {host!r} (rate {rate})")
            raise OSError(EAI_FAIL)
        await self._round_trip()
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
        if self._vanished:
            await self.limbo()
        if not self.board.radio.connected:
            raise OSError(EHOSTUNREACH)
        ip = await self.resolve(host)
        prof = self.profile
        if self.refuse_connect or (prof.connect_refuse_rate and self.rng.random() < prof.connect_refuse_rate):
            self.log(f"connect to {ip}:{port} refused" + ("" if self.refuse_connect else f" (rate {prof.connect_refuse_rate})"))
            await self._round_trip()
            raise OSError(ECONNRESET)
        if self.drop_syn or (prof.connect_timeout_rate and self.rng.random() < prof.connect_timeout_rate):
            self.log(f"connect to {ip}:{port}: SYN lost" + ("" if self.drop_syn else f" (rate {prof.connect_timeout_rate})"))
            await asyncio.sleep(SYN_TIMEOUT_S)
            raise OSError(ETIMEDOUT)
        if self._blocked["rx"] or self._blocked["tx"]:
            self.log(f"connect to {ip}:{port} waits for the path (blackhole)")
            await self._wait_path_open(SYN_TIMEOUT_S)
        await self._round_trip()  # SYN, SYN-ACK
        kwargs = {}
        if ssl is not None:
            kwargs["ssl"] = ssl.host_context() if hasattr(ssl, "host_context") else ssl
            kwargs["server_hostname"] = server_hostname or host
        loop = asyncio.get_running_loop()
        conn_seed = self.rng.getrandbits(64)
        try:
            _, conn = await loop.create_connection(lambda: Connection(self, conn_seed), ip, port, **kwargs)
        except ConnectionRefusedError:
            raise OSError(ECONNRESET) from None
        except ssl_mod.SSLCertVerificationError as e:
            # MicroPython's mbedTLS: ValueError with mbedtls_x509_crt_verify_info's reason
            raise ValueError(_mbedtls_reason(e.verify_message or str(e))) from None
        except TimeoutError:
            raise OSError(ETIMEDOUT) from None
        except OSError as e:
            raise OSError(getattr(e, "errno", None) or ECONNABORTED) from None
        self.connections.add(conn)
        self.log(f"connected to {ip}:{port}")
        stream = Stream(conn)
        return stream, stream

    # -- helpers ------------------------------------------------------------------------

    async def limbo(self) -> None:
        """Wait forever (until cancelled): what a powered-off board's code sees."""
        await asyncio.get_running_loop().create_future()  # never set: the awaiting task holds it

    async def _round_trip(self) -> None:
        prof = self.profile
        if not (prof.latency_ms or prof.jitter_ms):
            return
        delay = sum(max(0.0, prof.latency_ms + self.rng.uniform(-prof.jitter_ms, prof.jitter_ms)) for _ in "ab")
        await asyncio.sleep(delay / 1000)

    async def _wait_path_open(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._blocked["rx"] or self._blocked["tx"]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise OSError(ETIMEDOUT)
            try:
                await asyncio.wait_for(self._path_change.wait(), left)
            except TimeoutError:
                raise OSError(ETIMEDOUT) from None



class Connection(asyncio.Protocol):
    """One TCP connection as the board sees it (an asyncio protocol on the
    real socket, with a shaped pipe each way)."""

    __slots__ = ("link", "transport", "closed", "abandoned", "killed", "stalled", "tx", "rx", "_rx_buf", "_rx_size",
                 "_rx_end", "_rx_event", "_tx_event", "_reading_paused", "_writing_paused", "_gone", "_eof_seen")

    def __init__(self, link: Link, seed: int):
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.closed = False  # the board closed it
        self.abandoned = False  # the board vanished
        self.killed: str | None = None  # "RST" or "FIN" from kill()
        self.stalled = False  # WiFi lost under it
        self.tx = Pipe(self, "tx", SmallRandom(f"{seed}:tx"), self._send)
        self.rx = Pipe(self, "rx", SmallRandom(f"{seed}:rx"), self._receive)
        # (bytes, sliced) delivered, not yet read: a list (a few items at most,
        # RECEIVE_WINDOW bounds it) costs a tenth of an empty deque
        self._rx_buf: list = []
        self._rx_size = 0
        self._rx_end: str | None = None  # _EOF or _RESET once delivered to the board
        self._rx_event = Event()
        self._tx_event = Event()
        self._reading_paused = False
        self._writing_paused = False
        self._gone = False  # the socket is closed
        self._eof_seen = False

    # -- asyncio.Protocol (the real socket) -------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.link._live.add(self)
        self.tx.refresh()
        self.rx.refresh()

    def data_received(self, data: bytes) -> None:
        if self.closed or self.abandoned or self.killed:
            return  # nobody reads any more
        self.rx.push(data)
        if not self._reading_paused and self.rx.pending + self._rx_size > RECEIVE_WINDOW:
            self._reading_paused = True
            self.transport.pause_reading()

    def eof_received(self):
        if self.closed or self.abandoned or self.killed:
            return False  # close our side too
        self._eof_seen = True
        self.rx.push(_EOF)
        return True  # half-closed: the board may still write until it closes

    def connection_lost(self, exc) -> None:
        self._gone = True
        self.link._live.discard(self)
        self.tx.drop()
        if not (self.closed or self.abandoned or self.killed):
            if exc is not None:
                self.rx.push(_RESET)  # in order, behind the bytes still under way
            elif not self._eof_seen:
                self._eof_seen = True
                self.rx.push(_EOF)
        self._tx_event.set()
        self._rx_event.set()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._tx_event.set()

    # -- pipe ends ------------------------------------------------------------------

    def _send(self, item, sliced: bool) -> None:
        t = self.transport
        if t is None or t.is_closing() or self.killed:
            return
        if isinstance(item, bytes):
            if self.link.taps:
                self.link.tap("tx", item)
            t.write(item)
        elif item == _EOF:
            t.close()
        self._tx_event.set()

    def _receive(self, item, sliced: bool) -> None:
        if self.closed or self.abandoned or self.killed:
            return
        if isinstance(item, bytes):
            self._rx_buf.append((item, sliced))
            self._rx_size += len(item)
        elif self._rx_end is None:
            self._rx_end = item
        self._rx_event.set()

    def path_changed(self) -> None:
        self.tx.refresh()
        self.rx.refresh()

    # -- what the Stream calls ----------------------------------------------------

    def _check_open(self) -> None:
        if self.closed or self.abandoned:
            raise OSError(ENOTCONN)
        if self.killed == "RST":
            raise OSError(ECONNRESET)

    async def read(self, n: int) -> bytes:
        if self.abandoned:
            await self.link.limbo()
        self._check_open()
        if self._rx_buf:
            # A board's stream read always goes through the poller, so it
            # yields to the other tasks even when bytes are waiting: a reader
            # under a flood must not hold the loop. (A bare yield, no timer.)
            await asyncio.sleep(0)
            if self.abandoned:
                await self.link.limbo()
            self._check_open()
        while not self._rx_buf:
            if self.killed == "FIN" or self._rx_end == _EOF:
                return b""
            if self._rx_end == _RESET:
                raise OSError(ECONNRESET)
            self._rx_event.clear()
            await self._rx_event.wait()
            self._check_open()
        data = self._take(n if n > 0 else 4096)
        self.link.tap("rx", data)
        if self._reading_paused and self.rx.pending + self._rx_size <= RECEIVE_WINDOW // 2:
            self._reading_paused = False
            if self.transport is not None and not self._gone:
                self.transport.resume_reading()
        return data

    def _take(self, n: int) -> bytes:
        buf = self._rx_buf
        first, sliced = buf[0]
        if len(first) > n:
            buf[0] = (first[n:], sliced)
            self._rx_size -= n
            return first[:n]
        del buf[0]
        out = [first]
        size = len(first)
        # A socket read returns everything that has arrived, but slices of a
        # cut chunk are returned one per read: that is what slicing is for.
        if not sliced:
            while buf and not buf[0][1] and size + len(buf[0][0]) <= n:
                piece = buf.pop(0)[0]
                out.append(piece)
                size += len(piece)
        self._rx_size -= size
        return out[0] if len(out) == 1 else b"".join(out)

    def write(self, data: bytes) -> None:
        if self.abandoned:
            return  # the board is off: nothing leaves it
        self._check_open()
        if self.killed or self._rx_end == _RESET:
            raise OSError(ECONNRESET if self._rx_end == _RESET else ENOTCONN)
        if data:
            tx = self.tx
            if tx.blocked or tx.flight or self.link.profile.shapes_bytes:
                tx.push(bytes(data))
            else:  # what the pipe's fast path does, without its bookkeeping: straight to the socket (_send, inlined)
                t = self.transport
                if t is not None and not t.is_closing():  # (not killed: checked above)
                    data = bytes(data)
                    if self.link.taps:
                        self.link.tap("tx", data)
                    t.write(data)
                self._tx_event.set()

    def unsent(self) -> int:
        """Bytes written by the board that have not left for the broker."""
        n = self.tx.pending
        if self._writing_paused and self.transport is not None:
            n += self.transport.get_write_buffer_size()
        return n

    def drains_at_once(self) -> bool:
        """Would drain() return (or raise) without waiting?"""
        if self.abandoned:
            return False
        if self.closed or self.killed or self._rx_end == _RESET or self._gone:
            return True
        return self.unsent() <= SEND_BUFFER

    async def drain(self) -> None:
        """Returns once the unsent bytes fit the send buffer, like
        MicroPython's drain on lwIP: a dead path stalls it."""
        while True:
            if self.abandoned:
                await self.link.limbo()
            self._check_open()
            if self.killed or self._rx_end == _RESET:
                raise OSError(ECONNRESET)
            if self.unsent() <= SEND_BUFFER or self._gone:
                return
            self._tx_event.clear()
            await self._tx_event.wait()

    def close(self) -> None:
        """The board closes: FIN after whatever it wrote, through the same path."""
        if self.closed or self.abandoned:
            return
        self.closed = True
        self.link.connections.discard(self)
        self._rx_event.set()
        self._tx_event.set()
        if self.killed or self._gone:
            return
        self.rx.drop()
        self._rx_buf.clear()
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self.tx.push(_EOF)

    def kill(self, rst: bool) -> None:
        if self.closed or self.abandoned or self.killed:
            return
        self.killed = "RST" if rst else "FIN"
        self.link.connections.discard(self)
        self.tx.drop()
        self.rx.drop()
        if rst:
            self._rx_buf.clear()
            self._rx_size = 0
        t = self.transport
        if t is not None and not self._gone:
            if rst:
                abort_with_rst(t)
            else:
                t.close()
        self._rx_event.set()
        self._tx_event.set()

    def abandon(self) -> None:
        if self.closed or self.abandoned or self.killed:
            return
        self.abandoned = True
        self.link.connections.discard(self)
        self.tx.drop_held()  # what is already on the wire still arrives
        self.rx.drop()
        self._rx_buf.clear()
        self._rx_size = 0
        if self._reading_paused and self.transport is not None and not self._gone:
            self._reading_paused = False
            self.transport.resume_reading()
        # The board's pending reads and drains are not woken: the board is
        # gone and its tasks are being cancelled (waking them races with that).

    def peername(self):
        return self.transport.get_extra_info("peername") if self.transport is not None else None


class Partition:
    """Cut several boards off at once (both ways by default) and heal them
    together: `p = partition([b1.link, b2.link]); ...; p.heal()`, or use it
    as a context manager. Boards or links are accepted."""

    def __init__(self, links: Iterable, rx: bool = True, tx: bool = True):
        self.links: list[Link] = [getattr(x, "link", x) for x in links]
        self.rx = rx
        self.tx = tx
        self.active = False

    def start(self) -> Partition:
        for link in self.links:
            link.log(f"partition of {len(self.links)} board(s) starts")
            link.blackhole(rx=self.rx, tx=self.tx)
        self.active = True
        return self

    def heal(self) -> None:
        if not self.active:
            return
        for link in self.links:
            link.log(f"partition of {len(self.links)} board(s) heals")
            link.heal()
        self.active = False

    def __enter__(self) -> Partition:  # noqa: PYI034
        return self if self.active else self.start()

    def __exit__(self, *exc) -> None:
        self.heal()


def partition(links: Iterable, rx: bool = True, tx: bool = True) -> Partition:
    """Blackhole every link in `links` now; heal them all with `.heal()`."""
    return Partition(links, rx, tx).start()


__all__ = [
    "PROFILES",
    "Connection",
    "Link",
    "Partition",
    "Pipe",
    "Profile",
    "Stream",
    "make_profile",
    "partition",
    "profile_names",
]
