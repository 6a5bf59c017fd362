"""The ESP32 shims of boards on the real interpreter (emulator/board/vm/shims/),
checked with a tiny firmware of their own on the `micropython` process: NVS
and RTC memory kept by the host (RTC memory lost at power loss, NVS not),
reset causes, the ESP32 epoch of `time`, a missing NVS key as
OSError(-4354), and gc.mem_alloc() without the shims' own heap."""

from __future__ import annotations

import pytest

from emulator.board.loader import FirmwareImage
from emulator.board.vm.interpreter import DEFAULT_HEAP
from emulator.testing.handles import Console
from emulator.testing.harness import Emulator

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
    with Emulator(tmp_path / "boards", FirmwareImage(fw), vm="micropython", heap=DEFAULT_HEAP) as emu:
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


ERRORS = '''\
import esp32
import network

nvs = esp32.NVS("t")
try:
    nvs.set_i32("big", 2 ** 40)
except OverflowError as e:
    print("overflow", e)
try:
    network.WLAN().status("nonsense")
except ValueError as e:
    print("value", e)
try:
    network.WLAN().connect("x", "y")
except OSError as e:
    print("oserror", e.args[0])
'''


def test_host_side_errors_keep_their_type(tmp_path, mosquitto):
    """A call the host's fake refuses raises the fake's exception type in
    the VM (OverflowError, ValueError, OSError), as the C module would."""
    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "boot.py").write_text("")
    (fw / "main.py").write_text(ERRORS)
    console = Console()
    with Emulator(tmp_path / "boards", FirmwareImage(fw), vm="micropython", heap=DEFAULT_HEAP) as emu:
        emu.add_board("dev-err", mosquitto.host, mosquitto.port, console=console)
        assert console.expect("overflow", timeout=15) == "overflow value out of range for i32"
        assert console.expect("value", timeout=5) == "value unknown status param"
        assert console.expect("oserror", timeout=5) == "oserror Wifi Not Started"
