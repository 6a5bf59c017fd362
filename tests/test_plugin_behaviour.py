"""Eating our own cooking: SPEC §4 items 4, 5 and 9 written with nothing but
the esp32emu pytest plugin's fixtures (`mosquitto`, `board`, and the
plugin's observer as `esp32emu_observer`, since tests/conftest.py defines an
`observer` of its own). The same checks, written with our internal helpers,
are in tests/test_device_mqtt.py."""

from __future__ import annotations

import time

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.esp32emu(keepalive=2, interval=1),
    # The same behaviours on both board backends (the plugin's esp32emu_vm fixture).
    pytest.mark.parametrize("esp32emu_vm", ["cpython", "micropython"]),
]


def test_power_loss_will_between_one_and_a_half_keepalive_and_deadline(board, esp32emu_observer):
    """Item 5: no FIN, no bytes -> Will no earlier than 1.5*KA, no later than D."""
    obs = esp32emu_observer
    board.boot()
    obs.expect(board.topic("status"), {"online": True}, timeout=10)
    board.power_loss()
    will = obs.expect(board.topic("status"), lambda m: m.json() == {"online": False},
                      timeout=board.will_deadline + 3)
    silent = will.t - board.last_sent_at
    assert 1.5 * board.keepalive <= silent <= board.will_deadline, f"Will after {silent:.2f} s of silence"
    # Power back: a new boot, reset cause power_on.
    board.power_on()
    back = obs.expect(board.topic("status"), {"online": True, "boot": 2}, timeout=10)
    assert back.json()["reset"] == "power_on"


@pytest.mark.parametrize("rst", [True, False], ids=["RST", "FIN"])
def test_killed_socket_fires_will_within_one_second(board, esp32emu_observer, rst):
    """Item 4: socket killed -> Will within 1 s; item 9: back with the same boot, commands work."""
    obs = esp32emu_observer
    board.boot()
    obs.expect(board.topic("status"), {"online": True}, timeout=10)
    board.console.expect("mqtt: online", timeout=5)  # its connect sequence is over
    t_kill = time.monotonic()
    board.link.kill_connections(rst=rst)
    will = obs.expect(board.topic("status"), {"online": False}, timeout=5)
    assert will.t - t_kill <= 1.0
    obs.expect(board.topic("status"), {"online": True, "boot": 1}, timeout=10)
    board.console.expect("mqtt: online", timeout=5)
    obs.publish(board.topic("cmd"), {"id": "after-kill", "op": "ping"})
    obs.expect(board.topic("cmd/result"), {"id": "after-kill", "ok": True}, timeout=5)
    assert "killed 1 connection(s)" in "\n".join(board.link.log)
