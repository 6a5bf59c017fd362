"""Boards on the real MicroPython interpreter (emulator/board/vm/): the firmware as
`flash --mpy` deploys it, one `micropython` process per board, against a
real Mosquitto, driven through the same BoardHandle surface as a CPython
board: birth (SPEC §4 item 2), telemetry seq, commands (15), deep sleep
(17), reboots. The Will on power loss and on a killed socket, the watchdog,
the BOOT button and the rest of SPEC §4 run on this backend as the
`[micropython]` cases of tests/test_device_mqtt.py, test_faults.py and
test_commands_e2e.py.

The heap is `emulator.board.vm.interpreter.DEFAULT_HEAP` (100k, an ESP32 without PSRAM)."""

from __future__ import annotations

import pytest

from emulator.board.vm.interpreter import micropython_executable

pytestmark = [
    pytest.mark.integration,
    pytest.mark.esp32emu(vm="micropython", keepalive=2, interval=1),
]

try:
    micropython_executable()
except RuntimeError as e:  # pragma: no cover - the test extra installs it
    pytestmark.append(pytest.mark.skip(reason=str(e)))


def _online(board, obs, **items):
    return obs.expect(board.topic("status"), {"online": True, **items}, timeout=15)


def test_birth_on_the_real_interpreter(board, esp32emu_observer):
    """Item 2: the retained birth names fw, boot 1 and reset power_on; the
    process really is MicroPython with the configured heap."""
    obs = esp32emu_observer
    assert board.backend == "micropython"
    board.boot()
    birth = _online(board, obs).json()
    assert birth["fw"] and birth["boot"] == 1 and birth["reset"] == "power_on"
    assert birth["ip"].startswith("10.42.")
    assert board.board.proc.returncode is None
    cmd = board.board.command
    assert cmd[0].endswith("micropython") and cmd[1:3] == ["-X", f"heapsize={cmd[2].split('=')[1]}"]
    # The firmware's share is the configured heap; the shims' own objects come on top.
    assert int(cmd[2].split("=")[1]) > board.board.heap_limit
    # The deployed flash is what `flash --mpy` puts there.
    assert "app.mpy" in board.flash and "main.py" in board.flash and "app.py" not in board.flash


def test_telemetry_seq_counts_from_zero(board, esp32emu_observer):
    obs = esp32emu_observer
    board.boot()
    msgs = obs.collect(board.topic("telemetry"), count=3, timeout=15)
    seqs = [m.json()["seq"] for m in msgs]
    assert seqs == [0, 1, 2]
    # The BME280 and battery readings come from the host's sensor fakes over I2C/ADC.
    first = msgs[0].json()
    assert {"t", "h", "p", "bat", "mcu"} <= set(first), first


def test_commands_ping_stats_led_bad_json_duplicate(board, esp32emu_observer):
    """Item 15: each op answers; bad input gets ok:false; a duplicate id the first result."""
    obs = esp32emu_observer
    board.boot()
    _online(board, obs)
    board.console.expect("mqtt: online", timeout=5)
    result = board.topic("cmd/result")
    obs.publish(board.topic("cmd"), {"id": "p1", "op": "ping"})
    obs.expect(result, {"id": "p1", "ok": True}, timeout=5)
    obs.publish(board.topic("cmd"), {"id": "s1", "op": "stats"})
    stats = obs.expect(result, {"id": "s1", "ok": True}, timeout=5).json()["result"]
    assert 0 < stats["heap_alloc"] < board.board.heap_limit  # the VM's own gc.mem_alloc()
    obs.publish(board.topic("cmd"), {"id": "l1", "op": "led", "args": {"on": True}})
    obs.expect(result, {"id": "l1", "ok": True, "result": {"led": True}}, timeout=5)
    assert board.board.pins[2] == 1  # the LED pin, driven through machine.Pin
    obs.publish(board.topic("cmd"), b"{not json")
    bad = obs.expect(result, {"ok": False}, timeout=5).json()
    assert bad["id"] is None and bad["error"]
    obs.publish(board.topic("cmd"), {"id": "d1", "op": "ping"})
    first = obs.expect(result, {"id": "d1"}, timeout=5)
    obs.publish(board.topic("cmd"), {"id": "d1", "op": "ping"})
    again = obs.expect(result, {"id": "d1"}, timeout=5)
    assert again.payload == first.payload
    obs.publish(board.topic("cmd"), {"id": "after", "op": "ping"})
    obs.expect(result, {"id": "after", "ok": True}, timeout=5)
    assert board.board.proc.returncode is None  # never crashed


def test_deep_sleep_planned_offline_then_deepsleep_birth(board, esp32emu_observer):
    """Item 17: `sleep` -> planned offline with reason, DISCONNECT (no Will),
    then a birth with reset deepsleep; the boot counter lives in NVS."""
    obs = esp32emu_observer
    board.boot()
    _online(board, obs, boot=1)
    board.console.expect("mqtt: online", timeout=5)
    obs.publish(board.topic("cmd"), {"id": "zz", "op": "sleep", "args": {"seconds": 1}})
    obs.expect(board.topic("cmd/result"), {"id": "zz", "ok": True}, timeout=5)
    obs.expect(board.topic("status"), {"online": False, "reason": "sleep"}, timeout=5)
    back = _online(board, obs, boot=2)
    assert back.json()["reset"] == "deepsleep"
    # No Will between the planned offline and the new birth.
    statuses = [m.json() for m in obs.messages if m.topic == board.topic("status")]
    assert {"online": False} not in statuses


def test_reboot_counts_boots(board, esp32emu_observer):
    """The `reboot` command: planned offline, machine.reset(), boot+1 (hard);
    the EN button (BoardHandle.reboot) counts one more."""
    obs = esp32emu_observer
    board.boot()
    _online(board, obs, boot=1)
    board.console.expect("mqtt: online", timeout=5)
    obs.publish(board.topic("cmd"), {"id": "rb", "op": "reboot"})
    obs.expect(board.topic("status"), {"online": False, "reason": "reboot"}, timeout=5)
    assert _online(board, obs, boot=2).json()["reset"] == "hard"
    board.reboot()
    assert _online(board, obs, boot=3).json()["reset"] == "hard"
