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


class BoundClass:
    """A fake's class as one board's firmware sees it: calling it makes an
    instance bound to that board (`cls(board, *args)`), class attributes
    (`Pin.IN`) read through, `isinstance(x, machine.Pin)` holds. One small
    object per board instead of a class per board (a class with its
    functions costs ~2.5 KiB; 10,000 boards carry a few of each)."""

    __slots__ = ("_cls", "_board")

    def __init__(self, cls: type, board):
        self._cls = cls
        self._board = board

    def __call__(self, *args, **kwargs):
        return self._cls(self._board, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._cls, name)

    def __instancecheck__(self, obj) -> bool:
        return isinstance(obj, self._cls)

    def __repr__(self) -> str:
        return "<class '%s'>" % self._cls.__name__
