"""The physical world around one board: the air its sensors sit in
(diurnal temperature with slow drift, humidity anti-correlated with it,
pressure drifting with the weather), its battery (discharge, sag while the
radio transmits), the MCU's own temperature, the voltages its ADC pins see,
and its I2C buses. Seeded per board so boards in a fleet differ and a run
can be replayed; time comes from the injected `now` (seconds).

The sensor chips that turn this world into register values are in
emulator/board/sensors.py; this module only knows physics."""

from __future__ import annotations

import math
import random
import statistics
import time
from typing import Callable

from emulator.board.fakes import mp_oserror
from emulator.rng import SmallRandom

EIO = 5
ENODEV = 19


class I2CBus:
    """An I2C bus: devices by address; an absent address NAKs (ENODEV).
    With `error_rate` > 0 each transfer fails with EIO that often (a loose
    wire, a long cable, noise), drawn from the bus's seeded generator."""

    def __init__(self, rng: random.Random | None = None):
        self.devices: dict[int, object] = {}
        self.rng = rng or SmallRandom(0)
        self.error_rate = 0.0

    def scan(self) -> list[int]:
        return sorted(self.devices)

    def device(self, addr: int):
        """The chip that answers one transfer to `addr` (OSError when none
        does, or when the transfer fails)."""
        dev = self.devices.get(addr)
        if dev is None:
            raise mp_oserror(ENODEV)  # no ACK from that address
        if self.error_rate and self.rng.random() < self.error_rate:
            raise mp_oserror(EIO)
        return dev

    def read(self, addr: int, reg: int, n: int) -> bytes:
        return self.device(addr).read(reg, n)

    def write(self, addr: int, reg: int, data: bytes) -> None:
        self.device(addr).write(reg, data)


# N(0, 1) at 1024 evenly spaced probabilities (their midpoints): a sensor's
# noise as one table lookup on 10 random bits, where random.gauss spends two
# draws, a logarithm, a square root and two trigonometric calls (the ADC
# draws nine a telemetry message). Its tails stop at 3.3 sigma.
_NORMAL = tuple(statistics.NormalDist().inv_cdf((i + 0.5) / 1024) for i in range(1024))


class Noise:
    """Standard normal draws from `rng` (call it), six from each 60-bit draw."""

    __slots__ = ("rng", "_bits")

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._bits = 1

    def __call__(self) -> float:
        bits = self._bits
        if bits < 1024:  # the marker bit came down: six used, draw again
            bits = self.rng.getrandbits(60) | 1 << 60
        self._bits = bits >> 10
        return _NORMAL[bits & 1023]


class Drift:
    """A slow random wander (Ornstein-Uhlenbeck): mean 0, standard deviation
    `sigma`, correlation time `tau_s`. Deterministic for a given generator
    and sequence of query times."""

    def __init__(self, rng: random.Random, sigma: float, tau_s: float):
        self.rng, self.sigma, self.tau_s = rng, sigma, tau_s
        self.value = rng.gauss(0, sigma)
        self.t: float | None = None

    def at(self, t: float) -> float:
        if self.t is None:
            self.t = t
        dt = t - self.t
        if dt > 0:
            a = math.exp(-dt / self.tau_s)
            self.value = self.value * a + self.sigma * math.sqrt(1 - a * a) * self.rng.gauss(0, 1)
            self.t = t
        return self.value


# Open-circuit voltage of a Li-ion cell by state of charge.
OCV = ((0.0, 3.0), (0.05, 3.45), (0.1, 3.6), (0.2, 3.7), (0.4, 3.78), (0.6, 3.87), (0.8, 4.0), (0.9, 4.08), (1.0, 4.2))


class Battery:
    """A Li-ion cell feeding the board: its charge runs down with the idle
    current and every radio burst; while the radio transmits the terminal
    voltage sags by I*R, and recovers over a few seconds afterwards."""

    TX_MA = 220.0  # extra current while the radio transmits
    RELAX_S = 3.0  # how fast the after-burst sag recovers
    SAMPLE_S = 0.005  # readings closer than this share one computed voltage

    def __init__(self, rng: random.Random, now: Callable[[], float]):
        self.now = now
        self.capacity_mah = rng.uniform(1800, 2600)
        self.soc = rng.uniform(0.75, 0.98)
        self.r_ohm = rng.uniform(0.12, 0.25)
        self.idle_ma = rng.uniform(70, 110)
        self.t = now()
        self.tx_until = self.t - 3600.0  # no burst yet
        self.tx_s = 0.0  # transmit time not yet charged to the cell
        self._v_at = -1e18  # when volts() last computed the cell voltage
        self._v = 0.0

    def transmit(self, nbytes: int) -> None:
        """The radio sends `nbytes`: a burst of a few ms plus airtime."""
        t = self.now()
        airtime = 0.002 + nbytes * 8 / 5e6
        self.tx_until = max(t, self.tx_until) + airtime
        self.tx_s += airtime
        self._v_at = -1e18  # the sag starts now

    def _advance(self, t: float) -> None:
        dt = max(0.0, t - self.t)
        self.t = max(self.t, t)
        used_mah = (self.idle_ma * dt + self.TX_MA * self.tx_s) / 3600
        self.tx_s = 0.0
        self.soc = max(0.0, self.soc - used_mah / self.capacity_mah)

    def ocv(self) -> float:
        for (s0, v0), (s1, v1) in zip(OCV, OCV[1:]):
            if self.soc <= s1:
                return v0 + (v1 - v0) * (self.soc - s0) / (s1 - s0)
        return OCV[-1][1]

    def volts(self) -> float:
        t = self.now()
        if t == self._v_at or 0 <= t - self._v_at < self.SAMPLE_S:
            return self._v  # ADC samples taken back to back see one cell voltage
        self._v_at = t
        self._v = self._volts(t)
        return self._v

    def _volts(self, t: float) -> float:
        self._advance(t)
        sag = self.idle_ma / 1000 * self.r_ohm
        tx_sag = self.TX_MA / 1000 * self.r_ohm
        if t < self.tx_until:
            sag += tx_sag
        else:
            sag += 0.4 * tx_sag * math.exp(-(t - self.tx_until) / self.RELAX_S)
        return self.ocv() - sag


class Environment:
    """The world around one board. `rng` seeds everything (boards differ
    by seed); `now` gives the time in seconds (the wall clock by default,
    a manual clock in tests)."""

    def __init__(self, rng: random.Random, now: Callable[[], float] = time.time):
        self.rng = rng
        self.now = now
        self.key = "%016x" % rng.getrandbits(64)  # names the child generators
        # The site: a room or a shed somewhere, each board its own.
        self.temp_mean = rng.uniform(16.0, 25.0)
        self.temp_swing = rng.uniform(1.5, 5.0)  # half the day-night difference
        self.peak_hour = rng.uniform(14.0, 16.5)
        self.rh_mean = rng.uniform(35.0, 60.0)
        self.rh_per_degree = rng.uniform(2.0, 4.0)  # warmer air, lower relative humidity
        self.sea_level_hpa = rng.uniform(1005.0, 1022.0)
        self.altitude_m = rng.uniform(0.0, 400.0)
        self.mcu_heating = rng.uniform(14.0, 22.0)  # the chip runs warmer than the air
        self._t_drift = Drift(self.child("drift:t"), 0.8, 3 * 3600)
        self._h_drift = Drift(self.child("drift:h"), 3.0, 2 * 3600)
        self._p_drift = Drift(self.child("drift:p"), 6.0, 30 * 3600)
        self.battery = Battery(self.child("battery"), now)
        self.noise = Noise(rng)  # N(0, 1) draws for the sensors' noise (ADC, BME280, MCU)
        self.buses: dict[int, I2CBus] = {}
        self.adc_inputs: dict[int, Callable[[], float]] = {}  # pin -> volts at the pin
        self.dht: dict[int, object] = {}  # pin -> a DHT sensor wired there
        self.sensors: dict[tuple, object] = {}  # (type, where...) -> chip fake, kept across boots

    def child(self, name: str) -> random.Random:
        """A generator of its own for one part of the world (reproducible)."""
        return SmallRandom(f"{self.key}:{name}")

    # -- the air ---------------------------------------------------------------

    def temperature(self) -> float:
        """Air temperature in degC: a day-night cycle plus a slow drift."""
        return self._temperature(self.now())

    def humidity(self) -> float:
        """Relative humidity in %: falls when the air warms (same water, warmer air)."""
        t = self.now()
        return self._humidity(self._temperature(t), t)

    def pressure(self) -> float:
        """Station pressure in hPa: the weather's drift, lowered by the altitude."""
        return self._pressure(self.now())

    def air(self) -> tuple[float, float, float]:
        """(temperature, pressure, humidity) at one instant: what a chip that
        measures all three at once (the BME280) samples, with one clock read
        and one temperature."""
        t = self.now()
        temp = self._temperature(t)
        return temp, self._pressure(t), self._humidity(temp, t)

    def _temperature(self, t: float) -> float:
        hour = (t % 86400) / 3600
        day = math.cos(2 * math.pi * (hour - self.peak_hour) / 24)
        return self.temp_mean + self.temp_swing * day + self._t_drift.at(t)

    def _humidity(self, temp: float, t: float) -> float:
        rh = self.rh_mean - self.rh_per_degree * (temp - self.temp_mean) + self._h_drift.at(t)
        return min(98.0, max(3.0, rh))

    def _pressure(self, t: float) -> float:
        sea = self.sea_level_hpa + self._p_drift.at(t)
        return sea * (1 - 2.25577e-5 * self.altitude_m) ** 5.25588

    # -- the board -------------------------------------------------------------

    def mcu_temperature(self) -> float:
        return self.temperature() + self.mcu_heating + 0.3 * self.noise()

    def radio_transmit(self, nbytes: int) -> None:
        self.battery.transmit(nbytes)

    def adc_volts(self, pin: int) -> float:
        """The voltage at an ADC pin: what is wired there, else a floating
        input's few tens of millivolts."""
        source = self.adc_inputs.get(pin)
        if source is None:
            return abs(self.rng.gauss(0.05, 0.03))
        return source()

    def i2c_bus(self, bus_id: int) -> I2CBus:
        bus = self.buses.get(bus_id)
        if bus is None:
            bus = self.buses[bus_id] = I2CBus(self.child(f"i2c{bus_id}"))
        return bus
