"""One direction of one emulated TCP connection (see link.py for the model):
chunks in, the same chunks out later and in order, after slicing, the line's
bandwidth, latency±jitter and an occasional retransmission timeout. One
`loop.call_at` timer per busy pipe; it knows nothing about MQTT or boards.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from typing import Protocol

from emulator.net.faults import LinkFaults
from emulator.net.profiles import Profile

MSS = 1436  # CONFIG_LWIP_TCP_MSS 1440 minus options, as lwIP sends it
# Slices of one chunk are at least this far apart, so a reader sees them apart.
SLICE_GAP_S = 0.002


class Connection(Protocol):
    """The connection a pipe carries (emulator.net.link.Connection,
    emulator.board.vm.proxy.ProxyConnection)."""

    link: LinkFaults  # the profile, blackholed directions, the log
    stalled: bool  # WiFi lost under it: nothing moves, for good


class Pipe:
    """One direction of one connection: items in, the same items out later,
    in order. Items are bytes or the FIN/RST markers."""

    __slots__ = ("conn", "link", "direction", "rng", "_deliver", "loop", "held", "flight", "pending", "blocked",
                 "_busy_until", "_last_at", "_timer")

    def __init__(self, conn: Connection, direction: str, rng: random.Random, deliver):
        self.conn = conn
        self.link = conn.link
        self.direction = direction
        self.rng = rng
        self._deliver = deliver
        self.loop = asyncio.get_running_loop()
        # Made on first use (most pipes never hold nor shape anything: the fast path)
        self.held: deque | None = None  # waiting for the path to heal
        self.flight: deque | None = None  # (deliver_at, item, sliced)
        self.pending = 0  # bytes held or in flight
        self.blocked = False
        self._busy_until = 0.0
        self._last_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def path_open(self) -> bool:
        return not (self.link._blocked[self.direction] or self.conn.stalled)

    def push(self, item) -> None:
        if isinstance(item, bytes):
            self.pending += len(item)
        if self.blocked:
            self._hold(item)
            return
        prof = self.link.profile
        if not self.flight and not prof.shapes_bytes:
            self._out(item, False)  # the fast path: straight through
            return
        self._schedule(item, prof, self.loop.time())
        self._arm()

    def refresh(self) -> None:
        """Apply a path change (blackhole, heal, WiFi loss) to this pipe."""
        block = not self.path_open()
        if block == self.blocked:
            return
        self.blocked = block
        if block:
            # What was under way is lost; TCP sends it again after the heal.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self.flight:
                if self.held is None:
                    self.held = deque()
                self.held.extendleft(item for _, item, _ in reversed(self.flight))
                self.flight.clear()
            self._busy_until = self._last_at = 0.0
            return
        items, self.held = self.held or (), None
        if items:
            n = sum(len(i) for i in items if isinstance(i, bytes))
            self.link.log(f"{self.direction}: path healed, resending {n} held byte(s)")
        for item in items:
            if self.blocked:  # a delivery closed the path again
                self._hold(item)
                continue
            prof = self.link.profile
            if not self.flight and not prof.shapes_bytes:
                self._out(item, False)
            else:
                self._schedule(item, prof, self.loop.time())
        self._arm()

    def drop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.held = self.flight = None
        self.pending = 0

    def drop_held(self) -> None:
        if self.held:
            self.pending -= sum(len(i) for i in self.held if isinstance(i, bytes))
        self.held = None

    def _hold(self, item) -> None:
        if self.held is None:
            self.held = deque()
        self.held.append(item)

    def _schedule(self, item, prof: Profile, now: float) -> None:
        pieces = [item]
        sliced = False
        if (
            isinstance(item, bytes)
            and prof.slice_bytes
            and len(item) > prof.slice_bytes
            and (prof.slice_rate >= 1 or self.rng.random() < prof.slice_rate)
        ):
            pieces = []
            i = 0
            while i < len(item):
                k = self.rng.randint(1, prof.slice_bytes)
                pieces.append(item[i : i + k])
                i += k
            sliced = True
            self.link.log(f"{self.direction}: {len(item)} B sliced into {len(pieces)} piece(s)")
        kbps = prof.kbps(self.direction)
        if kbps and not sliced and isinstance(item, bytes) and len(item) > MSS:
            # On a slow line a long write leaves (and frees the send buffer)
            # one segment at a time.
            pieces = [item[i : i + MSS] for i in range(0, len(item), MSS)]
        for piece in pieces:
            start = max(now, self._busy_until)
            size = len(piece) if isinstance(piece, bytes) else 0
            done = start + (size * 8 / (kbps * 1000) if kbps else 0.0)
            self._busy_until = done
            delay_ms = prof.latency_ms
            if prof.jitter_ms:
                delay_ms = max(0.0, delay_ms + self.rng.uniform(-prof.jitter_ms, prof.jitter_ms))
            if prof.loss_rate and self.rng.random() < prof.loss_rate:
                delay_ms += prof.rto_ms
                self.link.log(f"{self.direction}: {size} B lost, retransmitted after {prof.rto_ms:g} ms")
            at = max(done + delay_ms / 1000, self._last_at + (SLICE_GAP_S if sliced else 0.0))
            self._last_at = at
            if self.flight is None:
                self.flight = deque()
            self.flight.append((at, piece, sliced))
            if self.link.log_delays:
                self.link.log(f"{self.direction}: {size} B in {1000 * (at - now):.1f} ms")

    def _arm(self) -> None:
        if self.flight and self._timer is None and not self.blocked:
            self._timer = self.loop.call_at(self.flight[0][0], self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.loop.time() + 0.0005
        while self.flight and self.flight[0][0] <= now and not self.blocked:
            _, item, sliced = self.flight.popleft()
            self._out(item, sliced)
        self._arm()

    def _out(self, item, sliced: bool) -> None:
        if isinstance(item, bytes):
            self.pending -= len(item)
        self._deliver(item, sliced)
