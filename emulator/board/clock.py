"""A board's clocks: ticks since boot (wrapping at 2**30 like MicroPython)
and the RTC (seconds since the ESP32 epoch 2000-01-01).

Both derive from the host's monotonic clock, so a stopped process (SIGSTOP)
sees time jump on resume exactly as a frozen board would. Nothing here sleeps.
"""

from __future__ import annotations

import time

TICKS_PERIOD = 1 << 30
TICKS_MASK = TICKS_PERIOD - 1
UNIX_2000 = 946684800  # seconds from 1970-01-01 to 2000-01-01


class BoardClock:
    def __init__(self, ticks_offset_ms: int = 0):
        # ticks_offset_ms lets tests start a board close to the 2**30 wrap.
        self.ticks_offset_ms = ticks_offset_ms
        self._boot = time.monotonic()
        self._rtc_base = 0.0  # RTC seconds at _rtc_mono
        self._rtc_mono = self._boot

    # -- ticks ---------------------------------------------------------------

    def reboot(self) -> None:
        """Ticks restart at 0 (plus the offset) on every reset."""
        self._boot = time.monotonic()

    def uptime_s(self) -> float:
        return time.monotonic() - self._boot

    def ticks_ms(self) -> int:
        return (int(self.uptime_s() * 1000) + self.ticks_offset_ms) & TICKS_MASK

    def ticks_us(self) -> int:
        return (int(self.uptime_s() * 1_000_000) + self.ticks_offset_ms * 1000) & TICKS_MASK

    # -- RTC -----------------------------------------------------------------

    def rtc_seconds(self) -> float:
        return self._rtc_base + (time.monotonic() - self._rtc_mono)

    def set_rtc(self, seconds_since_2000: float) -> None:
        self._rtc_base = seconds_since_2000
        self._rtc_mono = time.monotonic()

    def sync_rtc_to_host(self) -> None:
        """What ntptime.settime() achieves on a board with network."""
        self.set_rtc(time.time() - UNIX_2000)

    def power_on(self) -> None:
        """Power loss clears the RTC: it starts again at 2000-01-01."""
        self.set_rtc(0.0)
        self.reboot()


def ticks_add(ticks: int, delta: int) -> int:
    # Like MicroPython >= 1.23: a delta that ticks_diff could not give back
    # (|delta| >= 2**29) is refused rather than silently wrapped. (The
    # constants are literals, TICKS_MASK and TICKS_PERIOD // 2: these run
    # several times a board-second.)
    if not -0x20000000 < delta < 0x20000000:
        raise OverflowError("ticks interval overflow")
    return (ticks + delta) & 0x3FFFFFFF


def ticks_diff(a: int, b: int) -> int:
    return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000

