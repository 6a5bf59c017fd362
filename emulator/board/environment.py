"""The physical world around one board: the air its sensors sit in
(diurnal temperature with slow drift, humidity anti-correlated with it,
pressure drifting with the weather), its battery (discharge, sag while the
radio transmits), the MCU's own temperature, the voltages its ADC pins see,
and its I2C buses. Seeded per board so boards in a fleet differ and a run
can be replayed; time comes from the injected `now` (seconds). The air is
computed exactly every KNOT_S seconds of that clock and on a straight line
in between: a reading costs a few multiplications (issue 15).

The sensor chips that turn this world into register values are in
emulator/board/sensors.py; this module only knows physics."""

from __future__ import annotations

import bisect
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


# The air is computed exactly at knots this many seconds apart (on a grid of
# the clock: multiples of KNOT_S) and linearly between them. The drifts wander
# over hours, the day over 24 h: between knots the straight line is off by
# well under a millidegree (the day's curvature: ~3e-7 degC), and a reading
# costs a few multiplications instead of three exponentials, three square
# roots, three gaussian draws and a cosine.
KNOT_S = 10.0

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
    `sigma`, correlation time `tau_s`. `step(dt)` moves it on by dt seconds
    with the process's exact transition (one noise draw whatever dt), so the
    Environment advances it on a coarse time grid (KNOT_S) and interpolates
    between knots. Deterministic for a given generator and sequence of steps."""

    __slots__ = ("noise", "sigma", "tau_s", "value", "_a", "_s")

    def __init__(self, rng: random.Random, sigma: float, tau_s: float):
        self.noise = Noise(rng)
        self.sigma, self.tau_s = sigma, tau_s
        self.value = sigma * self.noise()
        self._a = math.exp(-KNOT_S / tau_s)  # the usual step (one knot) precomputed
        self._s = sigma * math.sqrt(1 - self._a * self._a)

    def step(self, dt: float) -> float:
        if dt == KNOT_S:
            a, s = self._a, self._s
        else:
            a = math.exp(-dt / self.tau_s)
            s = self.sigma * math.sqrt(1 - a * a)
        self.value = v = self.value * a + s * self.noise()
        return v


# Open-circuit voltage of a Li-ion cell by state of charge.
OCV = ((0.0, 3.0), (0.05, 3.45), (0.1, 3.6), (0.2, 3.7), (0.4, 3.78), (0.6, 3.87), (0.8, 4.0), (0.9, 4.08), (1.0, 4.2))
_OCV_SOC = tuple(soc for soc, _ in OCV)


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
        soc = self.soc
        i = bisect.bisect_left(_OCV_SOC, soc, 1)  # the first point at or above soc (its segment's top)
        if i == len(OCV):
            return OCV[-1][1]
        (s0, v0), (s1, v1) = OCV[i - 1], OCV[i]
        return v0 + (v1 - v0) * (soc - s0) / (s1 - s0)

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


# The site's parameters (Environment): setting one refits the current interval.
_SITE = frozenset(("temp_mean", "temp_swing", "peak_hour", "rh_mean", "rh_per_degree", "sea_level_hpa", "altitude_m"))


class Divider:
    """An ADC input: the battery's voltage behind a resistor divider (ratio
    >= 1). Environment.adc_volts/adc_code read it without the call."""

    __slots__ = ("battery", "ratio")

    def __init__(self, battery: Battery, ratio: float):
        self.battery, self.ratio = battery, ratio

    def __call__(self) -> float:
        return self.battery.volts() / self.ratio


class Environment:
    """The world around one board. `rng` seeds everything (boards differ
    by seed); `now` gives the time in seconds (the wall clock by default,
    a manual clock in tests)."""

    _line = (math.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None)  # read by __setattr__ until __init__ sets its own

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
        # The grid interval the air is interpolated in (_knot), one list
        # changed in place: its start; temperature, its rate; humidity (not
        # clamped), its rate; pressure, its rate (_fit); its end; the drifts'
        # values at the start and at the end.
        self._line = [math.inf, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, None, None, None]
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
        t = self.now()
        line = self._line
        d = t - line[0]
        if not 0.0 <= d < KNOT_S:
            d = self._knot(t)
        return line[1] + d * line[2]

    def humidity(self) -> float:
        """Relative humidity in %: falls when the air warms (same water, warmer air)."""
        return self.air()[2]

    def pressure(self) -> float:
        """Station pressure in hPa: the weather's drift, lowered by the altitude."""
        return self.air()[1]

    def air(self) -> tuple[float, float, float]:
        """(temperature, pressure, humidity) at one instant: what a chip that
        measures all three at once (the BME280) samples, with one clock read
        and one temperature."""
        t = self.now()
        line = self._line
        d = t - line[0]
        if not 0.0 <= d < KNOT_S:
            d = self._knot(t)
        rh = line[3] + d * line[4]
        return line[1] + d * line[2], line[5] + d * line[6], 98.0 if rh > 98.0 else 3.0 if rh < 3.0 else rh

    def _knot(self, t: float) -> float:
        """Move the interpolation to the grid interval holding `t` and return
        t's offset into it. The drifts take one exact step to the interval's
        start (however far that is) and one more to its end; a clock that went
        back holds the air at the interval's start."""
        k = math.floor(t / KNOT_S) * KNOT_S
        drifts = (self._t_drift, self._h_drift, self._p_drift)
        line = self._line
        start, end = line[0], line[7]
        if end is None:  # the first reading: the drifts' first values are the knot's
            values = [d.value for d in drifts]
        elif k < start:
            return 0.0
        elif k == end:
            values = line[9]
        else:
            values = [d.step(k - end) for d in drifts]
        line[0], line[7], line[8], line[9] = k, k + KNOT_S, values, [d.step(KNOT_S) for d in drifts]
        self._fit()
        return t - k

    def _fit(self) -> None:
        """The straight lines across the current interval, from its knots."""
        line = self._line
        t0, rh0, p0 = self._at_knot(line[0], line[8])
        t1, rh1, p1 = self._at_knot(line[7], line[9])
        line[1:7] = t0, (t1 - t0) / KNOT_S, rh0, (rh1 - rh0) / KNOT_S, p0, (p1 - p0) / KNOT_S

    def __setattr__(self, name: str, value) -> None:
        # A site parameter changed (the board carried outdoors, a test's
        # freezer): the air follows at once, not at the next knot.
        object.__setattr__(self, name, value)
        if name in _SITE and self._line[7] is not None:
            self._fit()

    def _at_knot(self, t: float, drifts) -> tuple[float, float, float]:
        """(temperature, unclamped humidity, pressure) exactly at time t."""
        dt, dh, dp = drifts
        hour = (t % 86400) / 3600
        temp = self.temp_mean + self.temp_swing * math.cos(2 * math.pi * (hour - self.peak_hour) / 24) + dt
        rh = self.rh_mean - self.rh_per_degree * (temp - self.temp_mean) + dh
        return temp, rh, (self.sea_level_hpa + dp) * (1 - 2.25577e-5 * self.altitude_m) ** 5.25588

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
        if source.__class__ is Divider:
            return source.battery.volts() / source.ratio
        return source()

    def adc_code(self, pin: int, per_volt: float, noise_codes) -> int:
        """One raw code of a 12-bit converter on `pin`: the pin's voltage
        times `per_volt` (codes per volt) plus one draw of `noise_codes` (the
        standard normal table _NORMAL scaled to codes), rounded and clamped
        to 0..4095. The ADC's nine reads a telemetry message in one call
        each: the noise draw is Noise's, inline."""
        source = self.adc_inputs.get(pin)
        if source.__class__ is Divider:
            battery = source.battery
            t = battery.now()
            at = battery._v_at
            if t == at or 0 <= t - at < battery.SAMPLE_S:  # Battery.volts, inline: the burst's later reads
                v = battery._v / source.ratio
            else:
                v = battery.volts() / source.ratio
        elif source is None:
            v = abs(self.rng.gauss(0.05, 0.03))
        else:
            v = source()
        noise = self.noise
        bits = noise._bits
        if bits < 1024:
            bits = noise.rng.getrandbits(60) | 1 << 60
        noise._bits = bits >> 10
        code = round(v * per_volt + noise_codes[bits & 1023])
        return 0 if code < 0 else 4095 if code > 4095 else code

    def i2c_bus(self, bus_id: int) -> I2CBus:
        bus = self.buses.get(bus_id)
        if bus is None:
            bus = self.buses[bus_id] = I2CBus(self.child(f"i2c{bus_id}"))
        return bus
