"""The firmware's sensor registry (firmware/sensors.py, bme280.py) running in
an emulated board's module table against the bus-level fakes, without a
broker: readings, plausibility checks, and every fault as an "err" field
while the other sensors still report."""

from __future__ import annotations

import asyncio
import time
import types

import pytest

from emulator.board.board import Board
from emulator.board.loader import BoardModules, FirmwareImage
from emulator.firmware.config import default_config

IMAGE = FirmwareImage()
BME = {"type": "bme280", "i2c": 0, "sda": 21, "scl": 22, "addr": 0x76}
BAT = {"type": "battery", "pin": 35, "atten": 11, "divider": 2.0}
DHT = {"type": "dht22", "pin": 4, "prefix": "dht_"}


class Rig:
    """A board's firmware `sensors` module, its Sensors object and its world;
    `advance(s)` moves the board's ticks and its environment's clock."""

    def __init__(self, tmp_path, specs, seed=0, wired=None):
        cfg = default_config("dev-s", "127.0.0.1", 1, sensors=specs if wired is None else wired)
        self.board = Board("dev-s", IMAGE, tmp_path / "dev-s", config=cfg, seed=seed)
        self.shift = 0.0
        self.board.env.now = lambda: time.time() + self.shift
        self.board._wire_sensors()
        self.mods = BoardModules(IMAGE, self.board.flash_dir, self.board._fakes(), print, self.board.fs.open)
        self.module = self.mods.load("sensors")
        self.log: list[str] = []
        self.sensors = self.module.Sensors(specs, self.log.append)

    def advance(self, s: float) -> None:
        self.shift += s
        self.board.clock.ticks_offset_ms += int(s * 1000)

    def read(self) -> dict:
        out: dict = {}
        asyncio.run(self.sensors.read_all(out))
        return out

    def fault(self, sensor, fault):
        return self.board.sensor_fault(sensor, fault)


def test_default_sensors_read_plausible_values(tmp_path):
    rig = Rig(tmp_path, [BME, BAT, {"type": "mcu"}])
    r = rig.read()
    assert set(r) == {"t", "p", "h", "bat", "mcu"}, r
    env, chip = rig.board.env, rig.board.env.sensors[("bme280", 0, 0x76)]
    assert abs(r["t"] - (env.temperature() + chip.offsets[0])) < 0.05
    assert abs(r["p"] - (env.pressure() + chip.offsets[1])) < 0.2
    assert abs(r["h"] - (env.humidity() + chip.offsets[2])) < 0.5
    assert abs(r["bat"] - env.battery.volts()) < 0.05
    assert r["mcu"] > r["t"]


def test_empty_sensor_list_means_the_mcu_alone(tmp_path):
    rig = Rig(tmp_path, [])
    assert set(rig.read()) == {"mcu"}


def test_classic_esp32_falls_back_to_raw_temperature(tmp_path):
    rig = Rig(tmp_path, [{"type": "mcu"}])
    # The classic ESP32's esp32 module has only raw_temperature(), in degF.
    rig.mods.modules["esp32"] = types.SimpleNamespace(raw_temperature=lambda: 113)
    assert rig.read() == {"mcu": 45.0}


def test_bme280_missing_is_enodev_and_comes_back(tmp_path):
    rig = Rig(tmp_path, [BME, BAT])
    rig.read()
    undo = rig.fault("bme280", "missing")
    r = rig.read()
    assert r["err"] == {"t": "ENODEV", "p": "ENODEV", "h": "ENODEV"} and "bat" in r
    assert any("ENODEV" in line for line in rig.log), "the console says so once"
    undo()
    r = rig.read()
    assert "err" not in r and {"t", "p", "h"} <= set(r)
    assert rig.log[-1].endswith("reading again")


def test_bme280_not_configured_on_the_bus(tmp_path):
    # config.json names a chip at 0x77 but the hardware has it at 0x76.
    rig = Rig(tmp_path, [dict(BME, addr=0x77), BAT], wired=[BME, BAT])
    r = rig.read()
    assert r["err"]["t"] == "ENODEV" and "bat" in r


def test_bme280_bus_errors_are_eio(tmp_path):
    rig = Rig(tmp_path, [BME, {"type": "mcu"}])
    rig.fault("bme280", "bus_errors")
    reasons = {rig.read().get("err", {}).get("t") for _ in range(6)}
    assert "EIO" in reasons


def test_bme280_stuck_is_detected(tmp_path):
    rig = Rig(tmp_path, [BME])
    rig.read()
    rig.fault("bme280", "stuck")
    got = [rig.read().get("err", {}).get("t") for _ in range(6)]
    assert got[:3] == [None, None, None] and got[-1] == "stuck", got


def test_bme280_spike_is_rejected_and_a_real_step_accepted(tmp_path):
    rig = Rig(tmp_path, [BME])
    before = rig.read()["t"]
    undo = rig.fault("bme280", "spike")
    assert [rig.read().get("err", {}).get("t") for _ in range(3)] == ["spike"] * 3
    undo()
    assert abs(rig.read()["t"] - before) < 1.0
    # A real, lasting change (the board carried outdoors) is accepted on its second reading.
    rig.board.env.temp_mean -= 15
    assert rig.read().get("err", {}).get("t") == "spike"
    assert rig.read()["t"] < before - 10


def test_wrong_chip_id(tmp_path):
    rig = Rig(tmp_path, [BME])
    rig.board.env.sensors[("bme280", 0, 0x76)].regs[0xD0] = 0x58  # a BMP280
    assert rig.read()["err"]["t"] == "chip id 0x58, not a BME280"


def test_dht22_reads_and_its_faults(tmp_path):
    rig = Rig(tmp_path, [BME, DHT])
    r = rig.read()
    assert abs(r["dht_t"] - r["t"]) < 1.5 and 0 < r["dht_h"] <= 100
    undo = rig.fault("dht22", "unplugged")
    rig.advance(2.1)
    r = rig.read()
    assert r["err"] == {"dht_t": "ETIMEDOUT", "dht_h": "ETIMEDOUT"} and "t" in r
    undo()
    rig.advance(2.1)
    assert "err" not in rig.read()
    rig.fault("dht22", "bus_errors")
    reasons = set()
    for _ in range(12):
        rig.advance(2.1)
        reasons.add(rig.read().get("err", {}).get("dht_t"))
    assert {"ETIMEDOUT", "checksum error"} <= reasons


def test_dht22_is_read_at_most_every_2_s(tmp_path):
    rig = Rig(tmp_path, [DHT])
    first = rig.read()
    rig.fault("dht22", "unplugged")
    assert rig.read() == first, "within 2 s the last measurement is reused"
    rig.advance(2.1)
    assert "err" in rig.read()


def test_a_dht22_repeat_within_2_s_keeps_its_verdict(tmp_path):
    # Within 2 s the driver hands back the same tuple: the same measurement,
    # judged once. Judged again, a spike would pass as a confirmed real step.
    rig = Rig(tmp_path, [DHT])
    good = rig.read()
    rig.fault("dht22", "spike")
    rig.advance(2.1)
    assert rig.read()["err"]["dht_t"] == "spike"
    assert rig.read()["err"]["dht_t"] == "spike", "a repeat is not a second measurement"
    rig.advance(2.1)  # the spike's other sign: a new measurement, refused on its own
    assert rig.read()["err"]["dht_t"] == "spike"
    assert "dht_t" in good


def test_nothing_on_the_dht_pin(tmp_path):
    rig = Rig(tmp_path, [DHT], wired=[])
    assert rig.read() == {"err": {"dht_t": "ETIMEDOUT", "dht_h": "ETIMEDOUT"}}


def test_battery_attenuation_too_low_saturates(tmp_path):
    rig = Rig(tmp_path, [dict(BAT, atten=0)])
    assert rig.read() == {"err": {"bat": "over range (attenuation too low?)"}}


def test_battery_divider_scales_and_sags_while_transmitting(tmp_path):
    rig = Rig(tmp_path, [BAT])
    idle = rig.read()["bat"]
    rig.board.env.radio_transmit(200_000)  # a long burst: the radio is still sending
    sag = rig.read()["bat"]
    assert 0.02 < idle - sag < 0.2


def test_a_driver_that_cannot_start_reports_instead_of_crashing(tmp_path):
    rig = Rig(tmp_path, [{"type": "mcu"}])
    sensors = rig.module.Sensors([dict(BAT, pin=99), {"type": "mcu"}], rig.log.append)
    out: dict = {}
    asyncio.run(sensors.read_all(out))
    assert out["err"] == {"bat": "invalid pin"} and "mcu" in out
    assert any("sensors[0] battery" in line for line in rig.log)


@pytest.mark.parametrize("exc,want", [(19, "ENODEV"), (5, "EIO"), (116, "ETIMEDOUT"), (110, "ETIMEDOUT"), (42, "OSError 42")])
def test_short_reasons(tmp_path, exc, want):
    from emulator.board.fakes import mp_oserror

    rig = Rig(tmp_path, [])
    assert rig.module.reason(mp_oserror(exc)) == want
    assert rig.module.reason(ValueError("x" * 60)) == "x" * 40
    assert rig.module.reason(ValueError()) == "ValueError"
