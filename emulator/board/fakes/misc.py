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
    """The board's flash filesystem: paths ('/x', 'x', '/lib/y') map into
    its flash directory on the host, with littlefs's behaviour on power loss.

    The model is littlefs v2's, the ESP32 port's filesystem (MicroPython
    >= 1.12): "All file operations have strong copy-on-write guarantees and
    if power is lost the filesystem will fall back to the last known good
    state" (littlefs README, github.com/littlefs-project/littlefs; DESIGN.md
    explains the metadata pairs and copy-on-write file data behind it), and
    lfs_file_close() is lfs_file_sync() then the release of the handle. So
    here: what is written to an open file becomes its content only at
    `close()` (or `flush()`, littlefs's sync), atomically; power lost before
    that leaves the file exactly as it was (its old content, or empty when
    it was made by this open: lfs_file_opencfg() commits a new file's entry
    at once, "allocate entry for file if it doesn't exist", while O_TRUNC
    only marks the open file dirty until the sync), never cut short or
    holding partial data. `rename` (replacing an existing target) and
    `remove` are atomic metadata commits. (A harsher FAT-like
    model, where a cut leaves a file short, is what the micropython VM
    boards get: their process writes with plain POSIX calls; see
    emulator/board/vm/board.py.)

    The faults, for tests and scenario actions (the board's `flash` is this
    object):
      cut_power_after(ops=k | n_bytes=n): the k-th flash operation from now
        (creating a file at open, a write() call, a commit at close/flush,
        rename, remove, mkdir, rmdir), or the write that crosses n more bytes, does not happen: the
        board loses power there (reset cause power_on), and the flash refuses
        everything until it boots again. `ops_done`/`bytes_written` count
        since the board was made (a dry run tells a test how many there are).
      blocks / block_size: the partition's size; a commit that would not
        fit raises OSError(ENOSPC) as littlefs does (statvfs agrees). The
        bytes in use are counted once per boot (a scan of the folder) and
        then kept up to date by the flash operations themselves; files put
        into the folder from outside while the board runs count from its
        next boot, or at once after `recount()`.
      write_kib_s: when set, writes take time at that rate: the board's
        ticks jump by the write's duration (a flash write stalls the whole
        MicroPython VM on a real board, so nothing else of the board runs
        meanwhile); `write_time_s` adds them up.
    """

    def __init__(self, root: Path, board=None):
        self.root = root
        self.cwd = "/"
        self.board = board
        self.blocks = 512  # a 2 MiB partition of 4 KiB blocks
        self.block_size = 4096
        self.write_kib_s: float | None = None
        self.write_time_s = 0.0
        self.ops_done = 0
        self.bytes_written = 0
        self._cut_ops: int | None = None
        self._cut_bytes: int | None = None
        self._dead_boot: int | None = None  # the boot in which power was cut
        self._then: list[int] = []
        self.cuts = 0  # power cuts fired since the last cut_power_after()
        self._used: int | None = None  # bytes in files, counted in the boot _used_boot
        self._used_boot: int | None = None

    # -- faults

    def cut_power_after(self, ops: int | None = None, n_bytes: int | None = None, then: tuple = ()) -> None:
        """Arm a power cut at the `ops`-th flash operation from now, or at
        the write that crosses `n_bytes` more bytes (see the class doc);
        `then`: more cuts, each `ops` after the one before fired."""
        if ops is None and n_bytes is None:
            raise ValueError("cut_power_after needs ops or n_bytes")
        if self.board is None:
            raise ValueError("power cuts at a flash operation need a CPython board (the VM writes its files "
                             "itself): use power_cycle() at a moment instead")
        self._cut_ops = None if ops is None else self.ops_done + max(int(ops), 1)
        self._cut_bytes = None if n_bytes is None else self.bytes_written + max(int(n_bytes), 0)
        self._then = [max(int(k), 1) for k in then]
        self.cuts = 0

    def disarm(self) -> None:
        self._cut_ops = self._cut_bytes = None
        self._then = []

    @property
    def dead(self) -> bool:
        return self._dead_boot is not None and self.board is not None and self._dead_boot == self.board.boots

    def op(self, nbytes: int = 0) -> None:
        """One flash operation is about to happen (the fakes call this)."""
        if self.dead:
            raise self._reset()
        self.ops_done += 1
        self.bytes_written += nbytes
        if (self._cut_ops is not None and self.ops_done >= self._cut_ops) or (
                self._cut_bytes is not None and self.bytes_written > self._cut_bytes):
            self._cut_ops = self._cut_bytes = None
            if self._then:
                self._cut_ops = self.ops_done + self._then.pop(0)
            self.cuts += 1
            self._dead_boot = self.board.boots
            self.board.log_event("power", f"power cut during a flash write (operation {self.ops_done})")
            self.board.power_cycle()
            raise self._reset()
        if nbytes and self.write_kib_s and self.board is not None:
            ms = nbytes / 1024 / self.write_kib_s * 1000
            self.write_time_s += ms / 1000
            self.board.clock.ticks_offset_ms += int(ms)

    @staticmethod
    def _reset() -> BaseException:
        from emulator.board.fakes.machinefake import PWRON_RESET, BoardReset

        return BoardReset(PWRON_RESET)

    def used_bytes(self) -> int:
        """Bytes in all files: scanned at the first call of a boot, then
        kept by `_count` (a flush no longer walks the whole folder)."""
        boot = self.board.boots if self.board is not None else None
        if self._used is None or boot is None or boot != self._used_boot:
            self._used = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())
            self._used_boot = boot
        return self._used

    def recount(self) -> None:
        """Scan the folder again at the next `used_bytes()` (after files were
        put into it from outside while the board runs)."""
        self._used = None

    def _count(self, delta: int) -> None:
        if self._used is not None:
            self._used += delta

    @staticmethod
    def _size(host: Path) -> int:
        try:
            return host.stat().st_size if host.is_file() else 0
        except OSError:
            return 0

    def free_blocks(self, extra_bytes: int = 0) -> int:
        """Free blocks (after `extra_bytes` more were written): all files' bytes rounded up to blocks."""
        used = self.used_bytes() + extra_bytes
        return max(self.blocks - -(-used // self.block_size), 0) if used >= 0 else self.blocks

    # -- paths and files

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
        host = self.host_path(file)
        if any(c in mode for c in "wax+"):
            if self.dead:
                raise self._reset()
            if host.is_dir():
                raise mp_oserror(errno.EISDIR)
            if not host.parent.is_dir():
                raise mp_oserror(errno.ENOENT)
            if "x" in mode and host.exists():
                raise mp_oserror(errno.EEXIST)
            if not host.exists() and "r" not in mode:
                # littlefs commits a new file's (empty) entry at open: a cut
                # before the close leaves it empty
                self.op()
                host.write_bytes(b"")
            return _FlashFile(self, host, mode)
        try:
            return open(host, mode, *args, **kwargs)
        except FileNotFoundError:
            raise mp_oserror(errno.ENOENT) from None
        except IsADirectoryError:
            raise mp_oserror(errno.EISDIR) from None


class _FlashFile:
    """A file open for writing: copy-on-write, committed whole at close()
    or flush() (littlefs's lfs_file_sync), dropped by a power cut."""

    def __init__(self, fs: FlashFS, host: Path, mode: str):
        import io

        self._fs = fs
        self._host = host
        self._text = "b" not in mode
        self._buf = io.BytesIO()
        if ("a" in mode or "+" in mode) and "w" not in mode:
            try:
                self._buf.write(host.read_bytes())
            except FileNotFoundError:
                if "r" in mode:
                    raise mp_oserror(errno.ENOENT) from None
            if "a" not in mode:
                self._buf.seek(0)
        self._dirty = "w" in mode  # truncated: committed at close even without a write
        self._boot = fs.board.boots if fs.board is not None else None
        self.closed = False

    def write(self, data) -> int:
        if self.closed:
            raise mp_oserror(errno.EBADF)
        raw = data.encode() if isinstance(data, str) else bytes(data)
        self._fs.op(len(raw))
        self._buf.write(raw)
        self._dirty = True
        return len(data)

    def read(self, n=-1):
        data = self._buf.read(n)
        return data.decode() if self._text else data

    def readinto(self, buf) -> int:
        return self._buf.readinto(buf)

    def seek(self, pos, whence=0) -> int:
        return self._buf.seek(pos, whence)

    def tell(self) -> int:
        return self._buf.tell()

    def flush(self) -> None:
        if self.closed or not self._dirty:
            return
        if self._fs.board is not None and self._fs.board.boots != self._boot:
            return  # a handle from before a reset: its power went away with that boot
        data = self._buf.getvalue()
        fs = self._fs
        old = fs._size(self._host)
        if fs.used_bytes() + len(data) - old > fs.blocks * fs.block_size:
            raise mp_oserror(errno.ENOSPC)
        fs.op()  # the commit: atomic, or (power cut) not at all
        tmp = self._host.with_name(self._host.name + ".esp32emu-commit")
        tmp.write_bytes(data)
        _os.replace(tmp, self._host)
        fs._count(len(data) - old)
        self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # MicroPython's file finaliser closes (and so commits) a file nobody
        # closed, at some garbage collection; CPython's refcounting does it
        # at once. Never after a power cut, nor from an earlier boot.
        if not self.closed:
            try:
                self.close()
            except BaseException:  # noqa: BLE001 - a finaliser must not raise
                self.closed = True


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
        self._fs.op()
        self._wrap(_os.mkdir, self._p(path))

    def rmdir(self, path) -> None:
        self._fs.op()
        self._wrap(_os.rmdir, self._p(path))

    def remove(self, path) -> None:
        if self._p(path).is_dir():
            raise mp_oserror(errno.EISDIR)
        self._fs.op()
        size = self._fs._size(self._p(path))
        self._wrap(_os.remove, self._p(path))
        self._fs._count(-size)

    def rename(self, old, new) -> None:
        # littlefs replaces an existing target (of the same type) atomically
        src, dst = self._p(old), self._p(new)
        if not src.exists():
            raise mp_oserror(errno.ENOENT)
        self._fs.op()
        replaced = self._fs._size(dst) if src.is_file() and src != dst else 0  # a folder replaces an empty one
        self._wrap(_os.replace, src, dst)
        self._fs._count(-replaced)

    def stat(self, path) -> tuple:
        st = self._wrap(_os.stat, self._p(path))
        mode = 0x4000 if self._p(path).is_dir() else 0x8000
        t = int(st.st_mtime) - 946684800
        return (mode, 0, 0, 0, 0, 0, st.st_size, t, t, t)

    def statvfs(self, path="/") -> tuple:
        # A littlefs partition (2 MiB of 4 KiB blocks unless the flash says otherwise).
        fs = self._fs
        free = fs.free_blocks()
        return (fs.block_size, fs.block_size, fs.blocks, free, free, 0, 0, 0, 0, 255)

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
