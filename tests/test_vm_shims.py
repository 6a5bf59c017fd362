"""The ESP32 shims of boards on the real interpreter (emulator/vm/shims/),
checked with a tiny firmware of their own on the `micropython` process: NVS
and RTC memory kept by the host (RTC memory lost at power loss, NVS not),
reset causes, the ESP32 epoch of `time`, a missing NVS key as
OSError(-4354), and gc.mem_alloc() without the shims' own heap."""

from __future__ import annotations

import pytest

from emulator.harness import Emulator
from emulator.loader import FirmwareImage
from emulator.testing import Console
from emulator.vm import PLUGIN_HEAP

pytestmark = pytest.mark.integration

MAIN = '''\
import esp32
import gc
import machine
import time

rtc = machine.RTC()
nvs = esp32.NVS("t")
try:
    n = nvs.get_i32("n")
except OSError as e:
    print("nvs missing", e.args[0])
    n = 0
nvs.set_i32("n", n + 1)
nvs.commit()
print("boot", n + 1, "cause", machine.reset_cause(), "rtc", bytes(rtc.memory()))
rtc.memory(b"from boot %d" % (n + 1))
print("epoch", time.gmtime(0)[0], "rtc-unset", time.time() < 86400 * 365)
print("alloc", gc.mem_alloc(), "free", gc.mem_free())
if n == 0:
    machine.deepsleep(100)
if n == 1:
    machine.reset()
'''


def test_nvs_rtc_memory_reset_causes_and_epoch(tmp_path, mosquitto):
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "boot.py").write_text("")
    (fw / "main.py").write_text(MAIN)
    console = Console()
    with Emulator(tmp_path / "boards", FirmwareImage(fw), vm="micropython", heap=PLUGIN_HEAP) as emu:
        board = emu.add_board("dev-shim", mosquitto.host, mosquitto.port, console=console)
        assert console.expect("nvs missing", timeout=15) == "nvs missing -4354"
        assert console.expect("boot 1", timeout=5) == "boot 1 cause 1 rtc b''"
        assert console.expect("epoch", timeout=5) == "epoch 2000 rtc-unset True"
        alloc = int(console.expect("alloc", timeout=5).split()[1])
        assert 0 < alloc < 8000, "the shims' own objects are not the firmware's"
        # deepsleep(100): a new process, cause DEEPSLEEP_RESET, RTC memory kept.
        assert console.expect("boot 2", timeout=15) == "boot 2 cause 4 rtc b'from boot 1'"
        # machine.reset(): cause HARD_RESET, RTC memory kept.
        assert console.expect("boot 3", timeout=15) == "boot 3 cause 2 rtc b'from boot 2'"
        # Power loss: RTC memory gone, NVS kept.
        emu.call(board.power_cycle, 0.1)
        assert console.expect("boot 4", timeout=15) == "boot 4 cause 1 rtc b''"
        assert emu.call(lambda: board.boots) == 4
