"""Test helpers around emulated boards: a tap that records what a board
sends, predicates for status messages, and the SPEC §4 timing constants."""

from __future__ import annotations

import json
import threading

from emulator.board import Board

KA = 2
D = int(1.5 * KA) + 7  # Will deadline after the last packet (SPEC §4)


class PacketTap:
    """Records (time, first byte, raw bytes) of every chunk a board sends."""

    def __init__(self, board: Board):
        self.chunks: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        board.link.taps.append(self._tap)

    def _tap(self, direction: str, data: bytes, t: float) -> None:
        with self._lock:
            self.chunks.append((t, direction, bytes(data)))

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

