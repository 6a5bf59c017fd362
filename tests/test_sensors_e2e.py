"""Sensors end to end: the real firmware drivers read the bus-level fakes of
an emulated board, telemetry on a real Mosquitto carries the readings, and
each scenario sensor fault shows up as an "err" field while the board keeps
publishing (seq without gaps) and recovers when the fault is cleared."""

from __future__ import annotations

import pytest

from emulator.firmware.config import default_config
from emulator.run.scenario import apply_board_action
from tests.boards import KA, is_birth

pytestmark = pytest.mark.integration

DEV = "dev-sens"
TELEMETRY = f"devices/{DEV}/telemetry"
SENSORS = default_config(DEV, "h", 1)["sensors"] + [{"type": "dht22", "pin": 4, "prefix": "dht_"}]


@pytest.fixture
def online(emu, broker, observer):
    obs = observer(broker)
    obs.subscribe(f"devices/{DEV}/#")
    board = emu.add_board(DEV, broker.host, broker.port, keepalive=KA, interval=1, sensors=SENSORS)
    obs.wait_for(is_birth(DEV), 10)
    return board, obs


def telemetry(obs, pred, timeout, start=0):
    return obs.wait_for(lambda m: m.topic == TELEMETRY and pred(m.json()), timeout, start=start).json()


def test_telemetry_carries_every_reading(online):
    board, obs = online
    msg = telemetry(obs, lambda b: "t" in b and "dht_t" in b, 5)
    assert "err" not in msg, msg
    assert -10 < msg["t"] < 45 and 0 < msg["h"] <= 100 and 850 < msg["p"] < 1050
    assert 3.0 < msg["bat"] < 4.3 and 20 < msg["mcu"] < 80
    assert abs(msg["dht_t"] - msg["t"]) < 2.0, "both sensors sit in the same air"
    # The firmware's compensation of the fake's raw words gives the physical values back.
    chip = board.env.sensors[("bme280", 0, 0x76)]
    assert abs(msg["t"] - (board.env.temperature() + chip.offsets[0])) < 0.1
    assert chip.conversions >= 1


FAULTS = [
    ("bme280", "missing", {"t": "ENODEV", "p": "ENODEV", "h": "ENODEV"}),
    ("bme280", "bus_errors", {"t": "EIO"}),
    ("bme280", "stuck", {"t": "stuck"}),
    ("bme280", "spike", {"t": "spike"}),
    ("dht22", "unplugged", {"dht_t": "ETIMEDOUT", "dht_h": "ETIMEDOUT"}),
    ("dht22", "spike", {"dht_t": "spike"}),
]


@pytest.mark.parametrize("sensor,fault,expect", FAULTS, ids=[f"{s}-{f}" for s, f, _ in FAULTS])
def test_fault_shows_as_err_and_board_keeps_publishing(emu, online, sensor, fault, expect):
    board, obs = online
    telemetry(obs, lambda b: "t" in b, 5)
    mark = len(obs.messages)
    clear = emu.call(apply_board_action, "sensor_fault", {"sensor": sensor, "fault": fault}, [board])

    def shows(b) -> bool:
        err = b.get("err", {})
        return all(err.get(k) == v for k, v in expect.items())

    bad = telemetry(obs, shows, 12, start=mark)
    for name in expect:
        assert name not in bad, "a failed reading has no value"
    assert "mcu" in bad and "bat" in bad, "the other sensors still report"
    mark = len(obs.messages)
    emu.call(clear)
    good = telemetry(obs, lambda b: all(k in b for k in expect), 12, start=mark)
    assert not set(expect) & set(good.get("err", {}))
    seqs = [m.json()["seq"] for m in obs.messages if m.topic == TELEMETRY]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no telemetry lost, no reboot"
    assert board.halted is False and board.boots == 1


def test_read_command_reads_the_sensors_now(online):
    board, obs = online
    mark = len(obs.messages)
    obs.publish(f"devices/{DEV}/cmd", '{"id": "r1", "op": "read"}', qos=1)
    res = obs.wait_for(lambda m: m.topic.endswith("/cmd/result"), 5, start=mark).json()
    assert res["ok"] is True
    assert {"t", "h", "p", "bat", "mcu", "dht_t", "dht_h"} <= set(res["result"])
