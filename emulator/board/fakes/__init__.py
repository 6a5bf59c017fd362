"""Fakes of the MicroPython modules a board provides (machine, network, esp32,
time, asyncio, os, gc, ntptime, sys, random, micropython), each bound to one
board. `modules_for(board)` returns the import table the loader uses.

They imitate the ESP32 port's behaviour listed in shared/PLATFORM.md; they do
not patch anything in CPython.
"""


def mp_oserror(code: int) -> OSError:
    """An OSError as MicroPython builds it: `args == (code,)` and `.errno == code`
    (CPython leaves `.errno` None when OSError gets a single argument)."""
    e = OSError(code)
    e.errno = code
    return e
