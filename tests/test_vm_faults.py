"""The link model of boards on the real interpreter: faults act on the
loopback proxy between the `micropython` process and Mosquitto (SPEC §4
items 5, 7, 14), through the same `board.link.*` names as on a CPython
board; sensors are the host's fakes; a fault the backend cannot show says so."""

from __future__ import annotations

import time

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.esp32emu(keepalive=2, interval=1)]


@pytest.fixture
def vm_board(boards):
    return boards(1, vm="micropython")[0]


def _online(board, obs, **items):
    return obs.expect(board.topic("status"), {"online": True, **items}, timeout=15)


def test_blackhole_fires_the_will_and_heal_brings_it_back(vm_board, esp32emu_observer):
    """Item 5 over the proxy: both directions silent, nothing closed -> Will
    within D; healed -> the board reconnects on its own (same boot)."""
    board, obs = vm_board, esp32emu_observer
    board.boot()
    _online(board, obs)
    board.link.blackhole()
    will = obs.expect(board.topic("status"), lambda m: m.json() == {"online": False},
                      timeout=board.will_deadline + 3)
    assert will.t - board.last_sent_at <= board.will_deadline
    board.link.heal()
    _online(board, obs, boot=1)


def test_dead_broker_is_noticed_within_two_keepalives(vm_board, esp32emu_observer):
    """Item 7: broker->board blackholed (the board's bytes still arrive): the
    firmware declares the link dead within 2*KA and backs off."""
    board, obs = vm_board, esp32emu_observer
    board.boot()
    _online(board, obs)
    board.console.expect("mqtt: online", timeout=5)
    t0 = time.monotonic()
    board.link.blackhole(rx=True, tx=False)
    board.console.expect("link lost", timeout=2 * board.keepalive + 1)
    assert time.monotonic() - t0 <= 2 * board.keepalive + 0.5
    board.link.heal()
    obs.expect(board.topic("status"), lambda m: m.json().get("online") is True and not m.retain, timeout=15)


def test_latency_profile_delays_every_byte(vm_board, esp32emu_observer):
    """The proxy shapes with emulator/net/pipe.py: 300 ms each way -> a command's
    round trip through the board takes at least 600 ms."""
    board, obs = vm_board, esp32emu_observer
    board.boot()
    _online(board, obs)
    board.console.expect("mqtt: online", timeout=5)
    board.link({"latency_ms": 300})
    t0 = time.monotonic()
    obs.publish(board.topic("cmd"), {"id": "slow", "op": "ping"})
    res = obs.expect(board.topic("cmd/result"), {"id": "slow", "ok": True}, timeout=10)
    assert res.t - t0 >= 0.6


def test_sensor_fault_reaches_the_firmware_through_i2c(vm_board, esp32emu_observer):
    """The BME280 is the host's chip fake: unplugged, the VM's I2C reads NAK
    (ENODEV) and telemetry names it in "err" while the other readings stay."""
    board, obs = vm_board, esp32emu_observer
    board.boot()
    obs.expect(board.topic("telemetry"), lambda m: "t" in m.json(), timeout=15)
    board.sensor_fault("bme280", "missing")
    bad = obs.expect(board.topic("telemetry"), lambda m: "t" in m.json().get("err", {}), timeout=10).json()
    assert "bat" in bad and "mcu" in bad


def test_unsupported_fault_is_a_clear_error(vm_board):
    vm_board.boot()
    with pytest.raises(RuntimeError, match="dns_fail is not supported on vm=micropython boards"):
        vm_board.link.dns_fail(duration=1)
    with pytest.raises(RuntimeError, match="connect_refuse_rate is not supported on vm=micropython boards"):
        vm_board.link({"connect_refuse_rate": 0.5})
    vm_board.link("nb-iot")  # the named profiles only shape bytes: fine


def test_broker_killed_and_restarted_board_returns(vm_board, esp32emu_observer, mosquitto):
    """Item 10: Mosquitto SIGKILLed and started again on the same port: the
    board notices, backs off and is online again within backoff cap + 5 s."""
    board, obs = vm_board, esp32emu_observer
    board.boot()
    _online(board, obs)
    board.console.expect("mqtt: online", timeout=5)
    mosquitto.kill()
    t_up = time.monotonic()
    mosquitto.start()
    board.console.expect("mqtt: online", timeout=board.config["backoff"]["cap_ms"] / 1000 + 5)
    assert time.monotonic() - t_up <= board.config["backoff"]["cap_ms"] / 1000 + 5


def test_dht22_reads_through_the_host_sensor(boards, esp32emu_observer):
    """A DHT22 on pin 4: the VM's `dht` asks the host's emulated sensor."""
    board = boards(1, vm="micropython", sensors=[{"type": "dht22", "pin": 4}, {"type": "mcu"}])[0]
    board.boot()
    msg = esp32emu_observer.expect(board.topic("telemetry"), lambda m: "t" in m.json(), timeout=15).json()
    assert 0 < msg["h"] <= 100 and "p" not in msg and "err" not in msg, msg
