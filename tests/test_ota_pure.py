"""The over-the-air update's pure parts under CPython: the MicroPython VM
test file (tests/micropython/test_ota_mp.py) once more, ECDSA P-256 checked
against the `cryptography` package on random keys and messages, and the
flash fake's littlefs power-loss model (emulator/board/fakes/misc.py)."""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emulator.board.fakes.machinefake import BoardReset
from emulator.board.fakes.misc import FlashFS, OsModule
from tests.ota_release import new_key, public_pem, sign

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "firmware"))
import p256  # noqa: E402

_spec = importlib.util.spec_from_file_location("test_ota_mp", ROOT / "tests" / "micropython" / "test_ota_mp.py")
MP = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(MP)


@pytest.mark.parametrize("name", sorted(n for n in dir(MP) if n.startswith("test_")))
def test_vm_file_under_cpython(name):
    getattr(MP, name)()


KEYS = [new_key() for _ in range(3)]


@settings(max_examples=30, deadline=None)
@given(k=st.integers(0, 2), msg=st.binary(max_size=200), flip=st.integers(-1, 511))
def test_p256_agrees_with_cryptography(k, msg, flip):
    key = KEYS[k]
    point = p256.public_key(public_pem(key))
    sig = bytearray(sign(key, msg))
    digest = hashlib.sha256(msg).digest()
    if flip >= 0:
        sig[flip // 8] ^= 1 << (flip % 8)
    assert p256.verify(point, digest, bytes(sig)) == (flip < 0)
    assert not p256.verify(p256.public_key(public_pem(KEYS[(k + 1) % 3])), digest, bytes(sig))


class _Board:
    """What the flash fake asks of its board."""

    def __init__(self):
        self.boots = 1
        self.resets = []
        self.clock = types.SimpleNamespace(ticks_offset_ms=0)

    def log_event(self, kind, message):
        pass

    def power_cycle(self):
        self.resets.append("power")


def _flash(tmp_path):
    board = _Board()
    fs = FlashFS(tmp_path, board)
    return fs, board, OsModule(types.SimpleNamespace(fs=fs, rng=None))


def test_a_write_counts_only_at_close(tmp_path):
    fs, board, os_ = _flash(tmp_path)
    (tmp_path / "a").write_bytes(b"old")
    f = fs.open("a", "wb")
    f.write(b"new content")
    assert (tmp_path / "a").read_bytes() == b"old", "copy-on-write: the old content until the commit"
    f.close()
    assert (tmp_path / "a").read_bytes() == b"new content"
    with fs.open("a", "ab") as f:
        f.write(b"!")
    assert (tmp_path / "a").read_bytes() == b"new content!"


def test_a_power_cut_leaves_the_old_file_and_stops_the_flash(tmp_path):
    fs, board, os_ = _flash(tmp_path)
    (tmp_path / "a").write_bytes(b"old")
    fs.cut_power_after(ops=2)
    f = fs.open("a", "w")
    f.write("x" * 100)  # operation 1
    with pytest.raises(BoardReset):
        f.write("y")  # operation 2: the power goes
    assert board.resets == ["power"] and fs.cuts == 1
    with pytest.raises(BoardReset):
        f.close()  # nothing more reaches the flash in this boot
    with pytest.raises(BoardReset):
        os_.rename("a", "b")
    assert (tmp_path / "a").read_bytes() == b"old" and not (tmp_path / "b").exists()
    board.boots += 1  # the next boot: the flash works again
    os_.rename("a", "b")
    assert (tmp_path / "b").read_bytes() == b"old"


def test_chained_cuts_and_byte_counted_cuts(tmp_path):
    fs, board, os_ = _flash(tmp_path)
    fs.cut_power_after(ops=1, then=(2,))
    with pytest.raises(BoardReset):
        os_.mkdir("d")
    board.boots += 1
    os_.mkdir("d")
    with pytest.raises(BoardReset):
        os_.mkdir("e")
    assert fs.cuts == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    board.boots += 1
    fs.cut_power_after(n_bytes=10)
    with fs.open("f", "wb") as f:
        f.write(b"0123456789")
    with pytest.raises(BoardReset):
        with fs.open("g", "wb") as f:
            f.write(b"x")
    # littlefs made g's entry at open: it stays, empty
    assert (tmp_path / "f").read_bytes() == b"0123456789" and (tmp_path / "g").read_bytes() == b""


def test_an_unclosed_file_commits_when_collected_but_not_after_a_cut(tmp_path):
    fs, board, os_ = _flash(tmp_path)
    fs.open("a", "w").write("x")  # MicroPython's finaliser closes it (CPython: at once)
    assert (tmp_path / "a").read_text() == "x"
    fs.open("b", "a").close()  # touch
    assert (tmp_path / "b").read_bytes() == b""
    (tmp_path / "c").write_text("old")
    f = fs.open("c", "w")
    f.write("partial")
    board.boots += 1  # the board reset meanwhile
    del f
    assert (tmp_path / "c").read_text() == "old", "a handle from an earlier boot never commits"


def test_free_space_and_write_time(tmp_path):
    fs, board, os_ = _flash(tmp_path)
    fs.blocks = 4
    assert os_.statvfs("/")[3] == 4
    with fs.open("a", "wb") as f:
        f.write(b"x" * 8192)
    assert os_.statvfs("/")[3] == 2
    f = fs.open("b", "wb")
    f.write(b"y" * 8193)
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.ENOSPC and (tmp_path / "b").read_bytes() == b"", "made at open, never filled"
    fs.write_kib_s = 64
    with fs.open("c", "wb") as f:
        f.write(b"z" * 4096)
    assert fs.write_time_s == pytest.approx(4096 / 1024 / 64)
    assert board.clock.ticks_offset_ms == 62


def _scanned(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def test_used_bytes_are_kept_by_the_operations_not_rescanned(tmp_path):
    """The free-space count is scanned once a boot, then kept by commits,
    removes and renames (a flush no longer walks the folder); it always
    equals a scan, and statvfs agrees with it."""
    fs, board, os_ = _flash(tmp_path)
    (tmp_path / "pre").write_bytes(b"p" * 100)
    assert fs.used_bytes() == 100
    os_.mkdir("d")
    for name, data in (("a", b"x" * 5000), ("d/b", b"y" * 300), ("a", b"z" * 10)):
        with fs.open(name, "wb") as f:
            f.write(data)
    with fs.open("d/b", "ab") as f:
        f.write(b"+")
    os_.rename("a", "d/b")  # replaces d/b (301 bytes) with a (10)
    os_.rename("d/b", "d/b")
    os_.remove("pre")
    os_.rename("d", "e")
    assert fs.used_bytes() == _scanned(tmp_path) == 10
    fs.blocks = 3
    assert os_.statvfs("/")[3] == 2
    (tmp_path / "outside").write_bytes(b"o" * 5000)  # behind the board's back, while it runs
    assert fs.used_bytes() == 10, "counted, not rescanned"
    fs.recount()
    assert fs.used_bytes() == 5010 and os_.statvfs("/")[3] == 1
    (tmp_path / "outside").unlink()
    board.boots += 1  # a new boot scans again
    assert fs.used_bytes() == 10
    with pytest.raises(OSError) as e, fs.open("big", "wb") as f:
        f.write(b"b" * (3 * 4096 - 9))
    assert e.value.errno == errno.ENOSPC and fs.used_bytes() == _scanned(tmp_path) == 10


def test_cut_power_needs_a_board(tmp_path):
    with pytest.raises(ValueError, match="need a CPython board"):
        FlashFS(tmp_path).cut_power_after(ops=1)


def test_a_test_writing_through_the_flash_handle_is_counted_at_once(tmp_path):
    """The plugin's `board.flash[...]` writes behind the firmware's back while
    the board runs; the free space the firmware sees follows at once."""
    from emulator.testing.handles import Flash

    fs, _board, os_ = _flash(tmp_path)
    assert fs.used_bytes() == 0
    flash = Flash(fs)
    flash["release.pub"] = b"k" * 4000
    assert fs.used_bytes() == 4000 == _scanned(tmp_path)
    fs.blocks = 2
    assert os_.statvfs("/")[3] == 1
    del flash["release.pub"]
    assert fs.used_bytes() == 0 and os_.statvfs("/")[3] == 2
