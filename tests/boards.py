"""Test helpers around emulated boards: a tap that records what a board
sends, predicates for status messages, and the SPEC §4 timing constants."""

from __future__ import annotations

import json
import threading

import pytest

from emulator.board.board import Board

KA = 2
# Run a test that uses `emu` once per board backend: the firmware under
# CPython with fakes, and on the real MicroPython interpreter (emulator/board/vm/).
both_backends = pytest.mark.parametrize("emu", ["cpython", "micropython"], indirect=True)
D = int(1.5 * KA) + 7  # Will deadline after the last packet (SPEC §4)


class PacketTap:
    """Records (time, direction, raw bytes) of every chunk crossing a board's link."""

    def __init__(self, board: Board):
        self.chunks: list[tuple[float, str, bytes]] = []
        self._lock = threading.Condition()
        board.link.taps.append(self._tap)

    def _tap(self, direction: str, data: bytes, t: float) -> None:
        with self._lock:
            self.chunks.append((t, direction, bytes(data)))
            self._lock.notify_all()

    def wait_sent(self, predicate, timeout: float) -> float:
        """Time of the first sent chunk matching predicate(t, data); waits with a deadline."""

        def first():
            return next((t for t, d, data in self.chunks if d == "tx" and predicate(t, data)), None)

        with self._lock:
            self._lock.wait_for(lambda: first() is not None, timeout)
            found = first()
        if found is None:
            raise AssertionError(f"nothing matching was sent within {timeout} s")
        return found

    def sent(self) -> list[tuple[float, bytes]]:
        with self._lock:
            return [(t, d) for t, direction, d in self.chunks if direction == "tx"]

    def last_sent_at(self) -> float:
        return self.sent()[-1][0]


def is_birth(device_id: str, boot: int | None = None):
    def pred(m) -> bool:
        if m.topic != f"devices/{device_id}/status":
            return False
        body = json.loads(m.payload)
        return body.get("online") is True and (boot is None or body.get("boot") == boot)

    return pred


def is_will(device_id: str):
    def pred(m) -> bool:
        return m.topic == f"devices/{device_id}/status" and json.loads(m.payload) == {"online": False}

    return pred



class ConsoleWatch:
    """A board console sink that tests can wait on (no polling)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def wait_count(self, needle: str, count: int, timeout: float) -> list[str]:
        """Wait until `count` lines contain `needle`; return those lines."""
        with self._cond:
            ok = self._cond.wait_for(lambda: sum(needle in x for x in self.lines) >= count, timeout)
            hits = [x for x in self.lines if needle in x]
        if not ok:
            raise AssertionError(f"{len(hits)}/{count} console lines with {needle!r} in {timeout} s: {self.lines[-10:]}")
        return hits
