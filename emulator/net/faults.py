"""The fault API every link has, whichever board it serves: a CPython
board's `emulator.net.link.Link` and a VM board's
`emulator.board.vm.proxy.LinkProxy` subclass `LinkFaults`, so `set_profile`,
`tune`, `blackhole`, `heal`, `kill_connections`, `abandon_connections` and
`wifi_lost` mean the same on both, and a scenario, a test or the CLI drives
either the same way. It is also what a `Pipe` reads from its link (the
profile, which directions are blackholed, where to log, the taps).

A subclass keeps `connections` (open from the board's point of view) and
`_live` (whose socket still lives) filled with connections that have
`kill(rst)`, `abandon()`, `path_changed()` and `stalled`; it says where the
log goes (`log`) and may refuse a profile it cannot apply (`_checked`).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping

from emulator.net.profiles import Profile, make_profile, tuned


class LinkFaults:
    def __init__(self, profile: str | Mapping | Profile | None = None) -> None:
        self.profile: Profile = self._checked(make_profile(profile))
        self.connections: set = set()  # open from the board's point of view
        self._live: set = set()  # whose socket still lives (a closed one may still send its held bytes and FIN)
        self._blocked = {"rx": False, "tx": False}
        self.log_delays = False  # log every chunk's delay too
        # tap(direction, data, monotonic_time) sees every byte that crosses the
        # link ("tx" when it leaves for the broker, "rx" when the board reads
        # it): for tests and traces.
        self.taps: list = []

    def log(self, message: str) -> None:
        raise NotImplementedError

    def _checked(self, profile: Profile) -> Profile:
        """`profile` if this link can apply it (else raise, naming what it cannot)."""
        return profile

    def _path_changed(self) -> None:
        """After a blackhole or heal: wake whatever waits for the path."""

    def tap(self, direction: str, data: bytes) -> None:
        if self.taps and data:
            now = time.monotonic()
            for tap in self.taps:
                tap(direction, data, now)

    # -- profile and shaping faults ------------------------------------------------

    def set_profile(self, profile: str | Mapping | Profile) -> Profile:
        """Switch to a named profile, a dict of numbers, or a `Profile`; applies
        to bytes sent from now on (bytes already under way keep their times)."""
        self.profile = self._checked(make_profile(profile))
        self.log(f"profile {self.profile.name}: {describe(self.profile)}")
        return self.profile

    def tune(self, **changes) -> Profile:
        """Change some numbers of the current profile, e.g. `tune(latency_ms=800)`."""
        self.profile = self._checked(tuned(self.profile, **changes))
        self.log(f"profile {self.profile.name}: {describe(self.profile)}")
        return self.profile

    def set_latency(self, latency_ms: float, jitter_ms: float = 0.0) -> Profile:
        return self.tune(latency_ms=latency_ms, jitter_ms=jitter_ms)

    def set_bandwidth(self, kbps: float) -> Profile:
        return self.tune(bandwidth_kbps=kbps, up_kbps=None, down_kbps=None)

    def set_slicing(self, slice_bytes: int, rate: float = 1.0) -> Profile:
        return self.tune(slice_bytes=slice_bytes, slice_rate=rate)

    # -- path faults ------------------------------------------------------------------

    @property
    def blackhole_rx(self) -> bool:
        return self._blocked["rx"]

    @property
    def blackhole_tx(self) -> bool:
        return self._blocked["tx"]

    def blackhole(self, rx: bool = True, tx: bool = True) -> None:
        """Stop bytes in either direction without closing anything (TCP keeps
        the data and retransmits it when the path heals). `rx=True, tx=False`
        is the half-open "dead broker": the board's bytes still arrive."""
        self._blocked = {"rx": bool(rx), "tx": bool(tx)}
        self.log(f"blackhole rx={bool(rx)} tx={bool(tx)}")
        for c in list(self._live):
            c.path_changed()
        self._path_changed()

    def heal(self) -> None:
        self.blackhole(rx=False, tx=False)

    def kill_connections(self, rst: bool = True) -> int:
        """Close every connection now (RST by default, else FIN); both sides see it."""
        n = 0
        for c in list(self.connections):
            c.kill(rst)
            n += 1
        self.log(f"killed {n} connection(s) with {'RST' if rst else 'FIN'}")
        return n

    def abandon_connections(self) -> int:
        """The board vanished (power loss, reset): no FIN, no more bytes from
        us; the broker keeps the half-open connection until its keepalive
        expires or the same client id connects again. What the broker sends
        is swallowed; the socket closes when the broker gives up on it."""
        n = 0
        for c in list(self.connections):
            c.abandon()
            n += 1
        if n:
            self.log(f"abandoned {n} connection(s) half-open")
        return n

    def open_sockets(self) -> list:
        """The host sockets still open under this link's connections (a
        closed connection may keep its socket a while to send what it held):
        what a node that dies leaves half-open."""
        socks = []
        for c in self._live:
            transport = getattr(c, "transport", None)
            sock = transport.get_extra_info("socket") if transport is not None else None
            if sock is not None and sock.fileno() >= 0:
                socks.append(sock)
        return socks

    def wifi_lost(self) -> None:
        """WiFi gone: established sockets stall for good (nothing reaches the
        AP); connections made after WiFi is back are not affected."""
        for c in list(self._live):
            c.stalled = True
            c.path_changed()
        if self.connections:
            self.log(f"wifi lost: {len(self.connections)} connection(s) stalled")


def describe(p: Profile) -> str:
    """A profile's numbers that differ from no shaping at all, for the log."""
    d = p.as_dict()
    d.pop("name")
    defaults = Profile().as_dict()
    parts = [f"{k}={v:g}" for k, v in d.items() if defaults.get(k) != v]
    return ", ".join(parts) or "no shaping"


def abort_with_rst(transport) -> None:
    """Close a socket's transport with RST (SO_LINGER 0) instead of FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    transport.abort()
