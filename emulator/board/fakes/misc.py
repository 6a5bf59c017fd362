"""Small board modules: `gc`, `micropython`, `ntptime`, `sys`, `random` and
`os` (a filesystem rooted at the board's flash directory)."""

from __future__ import annotations

import errno
import os as _os
import random as _random
from pathlib import Path

from emulator.board.fakes import mp_oserror
from emulator.board.loader import format_micropython_exception

ETIMEDOUT = 116  # as the ESP32 port reports it (CPython on Linux says 110)

HEAP_SIZE = 112_000  # ESP32 without PSRAM: the GC heap grows to about this


class GcModule:
    __name__ = "gc"

    def __init__(self, board):
        self._board = board
        self._enabled = True
        self._threshold = -1

    def collect(self) -> int:
        return 0

    def mem_alloc(self) -> int:
        return self._board.heap_alloc()

    def mem_free(self) -> int:
        return HEAP_SIZE - self._board.heap_alloc()

    def enable(self) -> None:
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def isenabled(self) -> bool:
        return self._enabled

    def threshold(self, amount: int | None = None):
        if amount is None:
            return self._threshold
        self._threshold = amount
        return None


class MicropythonModule:
    __name__ = "micropython"

    def __init__(self, board):
        self._board = board

    @staticmethod
    def const(x):
        return x

    def opt_level(self, level=None):
        return 0 if level is None else None

    def alloc_emergency_exception_buf(self, size: int) -> None:
        pass

    def mem_info(self, verbose=None) -> None:
        alloc = self._board.heap_alloc()
        self._board.console(f"GC: total: {HEAP_SIZE}, used: {alloc}, free: {HEAP_SIZE - alloc}")

    def qstr_info(self, verbose=None) -> None:
        self._board.console("qstr pool: n_pool=1, n_qstr=0, n_str_data_bytes=0, n_total_bytes=0")

    def stack_use(self) -> int:
        return 1024

    def heap_lock(self) -> int:
        return 0

    def heap_unlock(self) -> int:
        return 0

    def kbd_intr(self, chr: int) -> None:
        pass

    def schedule(self, func, arg) -> None:
        self._board.loop.call_soon(func, arg)


class NtptimeModule:
    __name__ = "ntptime"
    host = "pool.ntp.org"
    timeout = 1

    def __init__(self, board):
        self._board = board

    def settime(self) -> None:
        self.time()
        self._board.clock.sync_rtc_to_host()

    def time(self) -> int:
        from emulator.board.clock import UNIX_2000
        import time

        if not self._board.radio.connected:
            raise mp_oserror(ETIMEDOUT)  # the UDP request goes nowhere
        return int(time.time()) - UNIX_2000


class _Implementation:
    name = "micropython"
    version = (1, 24, 1, "")
    _machine = "ESP32 module with ESP32 (esp32emu)"
    _mpy = 6 | (6 << 8)

    def __repr__(self):
        return "(name='micropython', version=(1, 24, 1, ''), _machine='%s')" % self._machine


class _Stream:
    def __init__(self, board):
        self._board = board

    def write(self, s) -> int:
        if isinstance(s, (bytes, bytearray)):
            s = bytes(s).decode("utf-8", "replace")
        self._board.write(s)
        return len(s)

    def flush(self) -> None:
        pass


class SysModule:
    __name__ = "sys"
    platform = "esp32"
    byteorder = "little"
    maxsize = 2**31 - 1
    version = "3.4.0; MicroPython v1.24.1 (esp32emu)"
    version_info = (3, 4, 0)
    implementation = _Implementation()

    def __init__(self, board):
        self._board = board
        self.path = ["", ".frozen", "/lib"]
        self.argv: list = []
        self.stdout = self.stderr = _Stream(board)
        self.modules = board.modules.modules if board.modules else {}

    def print_exception(self, exc, file=None) -> None:
        text = format_micropython_exception(exc)
        out = file if file is not None else self.stdout
        out.write(text + "\n")

    def exit(self, code=0):
        raise SystemExit(code)


class RandomModule:
    """MicroPython's `random`, drawing from the board's seeded generator."""

    __name__ = "random"

    def __init__(self, board):
        self._rng: _random.Random = board.rng

    def getrandbits(self, n: int) -> int:
        if not 0 < n <= 32:
            raise ValueError("bits must be 32 or less")
        return self._rng.getrandbits(n)

    def seed(self, n=None) -> None:
        self._rng.seed(n)

    def randrange(self, *args) -> int:
        return self._rng.randrange(*args)

    def randint(self, a: int, b: int) -> int:
        return self._rng.randint(a, b)

    def choice(self, seq):
        return self._rng.choice(seq)

    def random(self) -> float:
        return self._rng.random()

    def uniform(self, a: float, b: float) -> float:
        return self._rng.uniform(a, b)


class FlashFS:
    """Maps the board's paths ('/x', 'x', '/lib/y') into its flash directory."""

    def __init__(self, root: Path):
        self.root = root
        self.cwd = "/"

    def host_path(self, path) -> Path:
        path = str(path)
        full = path if path.startswith("/") else _os.path.join(self.cwd, path)
        parts = []
        for p in full.split("/"):
            if p in ("", "."):
                continue
            if p == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(p)
        return self.root.joinpath(*parts)

    def open(self, file, mode="r", *args, **kwargs):
        if isinstance(file, int):
            raise mp_oserror(errno.EBADF)
        try:
            return open(self.host_path(file), mode, *args, **kwargs)
        except FileNotFoundError:
            raise mp_oserror(errno.ENOENT) from None
        except IsADirectoryError:
            raise mp_oserror(errno.EISDIR) from None


class OsModule:
    __name__ = "os"

    def __init__(self, board):
        self._fs: FlashFS = board.fs
        self._rng: _random.Random = board.rng

    def _p(self, path) -> Path:
        return self._fs.host_path(path)

    def _wrap(self, fn, *args):
        try:
            return fn(*args)
        except FileNotFoundError:
            raise mp_oserror(errno.ENOENT) from None
        except FileExistsError:
            raise mp_oserror(errno.EEXIST) from None
        except IsADirectoryError:
            raise mp_oserror(errno.EISDIR) from None
        except NotADirectoryError:
            raise mp_oserror(errno.ENOTDIR) from None
        except OSError as e:
            raise mp_oserror(e.errno or errno.EIO) from None

    def listdir(self, path=None) -> list:
        return sorted(self._wrap(_os.listdir, self._p(path or self._fs.cwd)))

    def ilistdir(self, path=None):
        base = self._p(path or self._fs.cwd)
        for name in sorted(self._wrap(_os.listdir, base)):
            st = _os.stat(base / name)
            yield (name, 0x4000 if (base / name).is_dir() else 0x8000, 0, st.st_size)

    def mkdir(self, path) -> None:
        self._wrap(_os.mkdir, self._p(path))

    def rmdir(self, path) -> None:
        self._wrap(_os.rmdir, self._p(path))

    def remove(self, path) -> None:
        self._wrap(_os.remove, self._p(path))

    def rename(self, old, new) -> None:
        self._wrap(_os.replace, self._p(old), self._p(new))

    def stat(self, path) -> tuple:
        st = self._wrap(_os.stat, self._p(path))
        mode = 0x4000 if self._p(path).is_dir() else 0x8000
        t = int(st.st_mtime) - 946684800
        return (mode, 0, 0, 0, 0, 0, st.st_size, t, t, t)

    def statvfs(self, path="/") -> tuple:
        # A 2 MiB littlefs partition of 4 KiB blocks.
        used = sum(f.stat().st_size for f in self._fs.root.rglob("*") if f.is_file())
        blocks = getattr(self._fs, "blocks", 512)  # serial_board.py may make it smaller
        free = max(blocks - (used + 4095) // 4096, 0)
        return (4096, 4096, blocks, free, free, 0, 0, 0, 0, 255)

    def getcwd(self) -> str:
        return self._fs.cwd

    def chdir(self, path) -> None:
        p = self._p(path)
        if not p.is_dir():
            raise mp_oserror(errno.ENOENT)
        rel = p.relative_to(self._fs.root).as_posix()
        self._fs.cwd = "/" if rel == "." else "/" + rel

    def sync(self) -> None:
        pass

    def uname(self):
        return ("esp32", "esp32emu", "1.24.1", "v1.24.1 on esp32emu", "ESP32 module with ESP32")

    def urandom(self, n: int) -> bytes:
        return bytes(self._rng.getrandbits(8) for _ in range(n))

    def dupterm(self, *args):
        return None
