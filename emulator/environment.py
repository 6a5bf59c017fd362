"""The physical world around one board: the MCU's own temperature, the
voltages its ADC pins see, and its I2C buses. Seeded per board so boards in
a fleet differ and a run can be replayed. (Sensor models grow here.)"""

from __future__ import annotations

import random


class I2CBus:
    """An I2C bus with no devices yet: every address NAKs (ENODEV)."""

    def __init__(self):
        self.devices: dict[int, object] = {}

    def scan(self) -> list[int]:
        return sorted(self.devices)

    def _dev(self, addr: int):
        dev = self.devices.get(addr)
        if dev is None:
            raise OSError(19)  # ENODEV: no ACK from that address
        return dev

    def read(self, addr: int, reg: int, n: int) -> bytes:
        return self._dev(addr).read(reg, n)

    def write(self, addr: int, reg: int, data: bytes) -> None:
        self._dev(addr).write(reg, data)


class Environment:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.mcu_base = rng.uniform(38.0, 48.0)
        self.battery_v = rng.uniform(3.9, 4.15)
        self.buses: dict[int, I2CBus] = {}

    def mcu_temperature(self) -> float:
        return self.mcu_base + self.rng.gauss(0, 0.3)

    def adc_volts(self, pin: int) -> float:
        # A 1:2 divider on the battery, as on most ESP32 battery boards.
        return self.battery_v / 2 + self.rng.gauss(0, 0.005)

    def i2c_bus(self, bus_id: int) -> I2CBus:
        return self.buses.setdefault(bus_id, I2CBus())
