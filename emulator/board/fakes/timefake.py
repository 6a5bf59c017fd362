"""The board's `time` module: ticks that wrap at 2**30, the ESP32 epoch
(2000-01-01), and sleeps that report themselves when they would block the
board's event loop."""

from __future__ import annotations

import calendar
import time as _host_time
from time import monotonic as _monotonic

from emulator.board.clock import TICKS_MASK, UNIX_2000, ticks_add, ticks_diff
from emulator.board.loader import _CURRENT


def _running_ticks_ms() -> int:
    """`time.ticks_ms` as shared firmware code calls it: one function for
    every board that reads the running board's clock (the board's context
    variable, which every task and greenlet of a board runs in). Through
    the module proxy, a per-board `ticks_ms` cost a proxy lookup and a
    bound method besides this call: ~2 of the chores task's wakes a second."""
    mods = _CURRENT.get()
    mod = mods.modules.get("time")
    if mod is None:
        mod = mods.load("time")
    c = mod._clock
    return (int((_monotonic() - c._boot) * 1000) + c.ticks_offset_ms) & TICKS_MASK


def _running_time() -> int:
    """`time.time` as shared firmware code calls it (every telemetry
    message's timestamp): the running board's RTC, like `_running_ticks_ms`."""
    mods = _CURRENT.get()
    mod = mods.modules.get("time")
    if mod is None:
        mod = mods.load("time")
    c = mod._clock
    return int(c._rtc_base + (_monotonic() - c._rtc_mono))


class TimeModule:
    __name__ = "time"
    # The same functions on every board (loader.ModuleProxy keeps them):
    # ticks_ms is the running board's through the context variable.
    SHARED = frozenset({"ticks_add", "ticks_diff", "ticks_ms", "time"})
    ticks_ms = staticmethod(_running_ticks_ms)
    time = staticmethod(_running_time)

    def __init__(self, board):
        self._board = board
        self._clock = board.clock
        self.ticks_add = ticks_add
        self.ticks_diff = ticks_diff

    def ticks_us(self) -> int:
        return self._clock.ticks_us()

    def ticks_cpu(self) -> int:
        return self._clock.ticks_us()

    def time_ns(self) -> int:
        return int(self._clock.rtc_seconds() * 1e9)

    def sleep(self, seconds: float) -> None:
        self._board.blocking_sleep(seconds, "time.sleep(%s)" % seconds)

    def sleep_ms(self, ms: int) -> None:
        self._board.blocking_sleep(ms / 1000, "time.sleep_ms(%s)" % ms)

    def sleep_us(self, us: int) -> None:
        self._board.blocking_sleep(us / 1_000_000, "time.sleep_us(%s)" % us)

    def gmtime(self, secs: int | None = None) -> tuple:
        if secs is None:
            secs = int(self._clock.rtc_seconds())
        t = _host_time.gmtime(int(secs) + UNIX_2000)
        # MicroPython: (year, month, mday, hour, minute, second, weekday 0=Monday, yearday)
        return (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday, t.tm_yday)

    localtime = gmtime  # ESP32 boards run in UTC unless firmware offsets it

    def mktime(self, t: tuple) -> int:
        year, month, mday, hour, minute, second = t[:6]
        return calendar.timegm((year, month, mday, hour, minute, second, 0, 0, 0)) - UNIX_2000
