"""Sensor chips at the bus level, and the faults a scenario can give them.

- `Bme280Chip`: the BME280's register map on a fake I2C bus (chip id 0x60,
  calibration registers, ctrl_hum/ctrl_meas/config, status, data). A forced
  or normal-mode measurement samples the board's Environment and stores raw
  ADC words made by inverting the datasheet's (floating point) compensation,
  so the firmware's own integer compensation is what turns them back into
  degC, hPa and %RH. Resolution and noise follow the oversampling settings.
- `Dht22Sensor`: the one-wire DHT22 behind the board's `dht` module
  (emulator/board/fakes/dhtfake.py): 40-bit frames with a checksum, at most one
  fresh measurement per 2 s, and its failure modes (no answer -> ETIMEDOUT,
  flipped bits -> checksum error).
- `wire(env, specs)`: attach the fakes that a board's config.json describes
  (the emulated hardware is built to match the configuration).
- `apply_fault(env, sensor, fault)`: stuck-at, spikes, missing device,
  intermittent bus errors, unplugged DHT; returns the function that undoes it.

Everything is drawn from generators seeded by the board's Environment.
"""

from __future__ import annotations

import math
import random
import struct

from emulator.board.environment import Divider
from emulator.board.fakes import mp_oserror

ETIMEDOUT = 116  # ESP32's value (not Linux's 110)

# Faults each sensor type supports (scenario action "sensor_fault").
FAULTS: dict[str, tuple[str, ...]] = {
    "bme280": ("stuck", "spike", "missing", "bus_errors"),
    "dht22": ("spike", "bus_errors", "unplugged"),
}

# Calibration of the datasheet's worked example (dig_T1..dig_P9) and of a
# typical chip (dig_H1..dig_H6); each emulated chip varies around them.
_CAL_T = (27504, 26435, -1000)
_CAL_P = (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
_CAL_H = (75, 362, 0, 313, 50, 30)
_SKIPPED_20 = 0x80000
_SKIPPED_16 = 0x8000


# -- the datasheet's floating point compensation (section 8.1) and its inverse --


def float_t(adc_t: float, cal_t) -> tuple[float, float]:
    t1, t2, t3 = cal_t
    var1 = (adc_t / 16384.0 - t1 / 1024.0) * t2
    x = adc_t / 131072.0 - t1 / 8192.0
    t_fine = var1 + x * x * t3
    return t_fine / 5120.0, t_fine


def float_p(adc_p: float, t_fine: float, cal_p) -> float:
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal_p
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * p6 / 32768.0
    var2 = var2 + var1 * p5 * 2.0
    var2 = var2 / 4.0 + p4 * 65536.0
    var1 = (p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * p1
    if var1 == 0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    return p + (p9 * p * p / 2147483648.0 + p * p8 / 32768.0 + p7) / 16.0


def float_h(adc_h: float, t_fine: float, cal_h) -> float:
    h1, h2, h3, h4, h5, h6 = cal_h
    v = t_fine - 76800.0
    v = (adc_h - (h4 * 64.0 + h5 / 16384.0 * v)) * (h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v)))
    v = v * (1.0 - h1 * v / 524288.0)
    return min(100.0, max(0.0, v))


def _invert(fn, target: float, bits: int, rising: bool, hint: int | None = None) -> int:
    """The raw word in 0..2**bits-1 whose compensated value is nearest `target`
    (fn is monotonic in the word). Given a `hint` (the answer for the chip's
    previous, nearby reading) it gallops out from there to bracket the answer
    and bisects the bracket: a handful of evaluations instead of twenty for
    slowly changing air. Same answer as plain bisection, hint or not."""
    n = 1 << bits

    def before(i: int) -> bool:  # True while word i is still below the answer
        return (fn(i) < target) == rising

    if hint is None:
        return _invert_by_bisection(fn, target, bits, rising)
    g = min(max(hint, 0), n - 1)
    # The usual case, a hint on the answer or next to it, in two evaluations:
    # the first word not below the target is g or g+1, and each value found
    # is used again for the final "nearer neighbour" choice.
    fg = fn(g)
    if (fg < target) == rising:
        if g + 1 == n:  # the top word is still below: it is the nearest (the gallop would step past it)
            return g
        f1 = fn(g + 1)
        if (f1 < target) != rising:  # the first word not below: g+1
            return g if abs(fg - target) < abs(f1 - target) else g + 1
    elif g == 0:
        return 0
    else:
        f0 = fn(g - 1)
        if (f0 < target) == rising:  # the first word not below: g
            return g - 1 if abs(f0 - target) < abs(fg - target) else g
    step = 1
    if before(g):
        lo, hi = g + 1, n - 1
        while lo < hi:
            probe = min(g + step, n - 1)
            if not before(probe):
                hi = probe
                break
            if probe == n - 1:
                lo = n - 1
                break
            lo, step = probe + 1, step * 2
    else:
        lo, hi = 0, g
        while True:
            probe = g - step
            if probe < 0:
                break
            if before(probe):
                lo = probe + 1
                break
            hi, step = probe, step * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if before(mid):
            lo = mid + 1
        else:
            hi = mid
    if lo > 0 and abs(fn(lo - 1) - target) < abs(fn(lo) - target):
        lo -= 1
    return lo


def _invert_by_bisection(fn, target: float, bits: int, rising: bool) -> int:
    """The plain version of `_invert`, kept as its reference in the tests."""
    lo, hi = 0, (1 << bits) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if (fn(mid) < target) == rising:
            lo = mid + 1
        else:
            hi = mid
    if lo > 0 and abs(fn(lo - 1) - target) < abs(fn(lo) - target):
        lo -= 1
    return lo


def _root(a: float, b: float, c: float) -> float | None:
    """The root of a*x*x + b*x + c near -c/b (the one that stays finite as
    a -> 0), computed without cancellation; None if there is none."""
    d = b * b - 4 * a * c
    if d < 0:
        return None
    q = b + (d**0.5 if b >= 0 else -(d**0.5))
    return -2 * c / q if q else None


def _word(x: float | None, bits: int, fallback: int | None) -> int | None:
    if x is None or x != x or abs(x) > 1 << (bits + 1):
        return fallback
    return min(max(round(x), 0), (1 << bits) - 1)


def _guess_t(t_c: float, cal_t, fallback: int | None) -> int | None:
    # t_fine = 8*t2*x + t3*x*x with x = adc/131072 - t1/8192 (float_t)
    t1, t2, t3 = cal_t
    x = _root(t3, 8.0 * t2, -t_c * 5120.0)
    return _word(None if x is None else (x + t1 / 8192.0) * 131072.0, 20, fallback)


def _guess_p(p_pa: float, t_fine: float, cal_p, fallback: int | None) -> int | None:
    # float_p: out = P + (p9*P*P/2**31 + P*p8/32768 + p7)/16, P linear in adc
    p1, p2, p3, p4, p5, p6, p7, p8, p9 = cal_p
    var1 = t_fine / 2.0 - 64000.0
    var2 = (var1 * var1 * p6 / 32768.0 + var1 * p5 * 2.0) / 4.0 + p4 * 65536.0
    var1 = (1.0 + ((p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0) / 32768.0) * p1
    if var1 == 0:
        return fallback
    big_p = _root(p9 / 2147483648.0 / 16.0, 1.0 + p8 / 32768.0 / 16.0, p7 / 16.0 - p_pa)
    return _word(None if big_p is None else 1048576.0 - var2 / 4096.0 - big_p * var1 / 6250.0, 20, fallback)


def _guess_h(h_pct: float, t_fine: float, cal_h, fallback: int | None) -> int | None:
    # float_h: out = v*(1 - h1*v/524288) with v = (adc - k)*m (before the clamp)
    h1, h2, h3, h4, h5, h6 = cal_h
    v0 = t_fine - 76800.0
    k = h4 * 64.0 + h5 / 16384.0 * v0
    m = h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v0 * (1.0 + h3 / 67108864.0 * v0))
    v = _root(-h1 / 524288.0, 1.0, -h_pct)
    return _word(None if v is None or not m else v / m + k, 16, fallback)


def raw_words(
    t_c: float, p_hpa: float, h_pct: float, cal_t, cal_p, cal_h, hint: tuple[int, int, int] | None = None
) -> tuple[int, int, int]:
    """(adc_T, adc_P, adc_H) that a chip with this calibration reports for
    this air: the inverse of the compensation, exactly plain bisection's
    answer. The compensation solved for the word (a quadratic each) lands
    on the answer or its neighbour, and two evaluations settle which; when
    it does not, a search from `hint` (the chip's previous answer) does.
    A chip keeps an `Inverse` (below) with its constants instead."""
    inverse = Inverse(cal_t, cal_p, cal_h)
    inverse.last = hint
    return inverse(t_c, p_hpa, h_pct)


# How far from the midway between two words the exact solution must lie for
# its rounding to be the nearest word with no evaluation: the compensation
# bends by under 2e-6 of its slope from one word to the next (humidity's,
# the most: 2*h1*m/524288), which moves the midway by < 1e-6 word, and the
# closed form and the evaluations err by ~1e-11 word; calls closer than
# 0.001 word to the midway (0.2 %) are settled by evaluating.
_SURE = 0.499


def _sure(x: float, top: int) -> int:
    """round(x), the real-valued solution's word, when it is certainly the
    nearest (inside 1..top-1 and clear of a tie by _SURE), else -1."""
    if 1.0 <= x < top:
        w = round(x)
        if -_SURE < x - w < _SURE:
            return w
    return -1


class Inverse:
    """`raw_words` for one chip's calibration, cheap. Each word solves its
    compensation in closed form (a quadratic each, the calibration's share
    computed once); when that real-valued solution rounds clearly (_SURE),
    the rounding is the nearest word, which is what plain bisection finds;
    a near tie, a clamp or a word at the end of the range goes to `_invert`
    (the evaluations decide, exactly). The previous answer is its hint."""

    __slots__ = ("cal_t", "cal_p", "cal_h", "_t", "_p", "_h1", "last")

    def __init__(self, cal_t, cal_p, cal_h):
        self.cal_t, self.cal_p, self.cal_h = cal_t, cal_p, cal_h
        t1, t2, t3 = cal_t
        # float_t's t1/1024.0 and t1/8192.0, t2, t3, and the quadratic's b
        self._t = (t1 / 1024.0, t1 / 8192.0, t2, t3, 8.0 * t2)
        p7, p8, p9 = cal_p[6:]
        # float_p's last line as a quadratic in P: a, b, and c without the target
        self._p = (p9 / 2147483648.0 / 16.0, 1.0 + p8 / 32768.0 / 16.0, p7 / 16.0)
        self._h1 = -cal_h[0] / 524288.0  # float_h's quadratic in v: a (b = 1)
        self.last: tuple[int, int, int] | None = None  # the previous answer

    def __call__(self, t_c: float, p_hpa: float, h_pct: float) -> tuple[int, int, int]:
        sqrt = math.sqrt
        hint = self.last or (None, None, None)
        # -- temperature: t_fine = 8*t2*x + t3*x*x, x = adc/131072 - t1/8192
        c1, c2, t2, t3, b = self._t
        c = -t_c * 5120.0
        d = b * b - 4 * t3 * c
        adc_t = -1
        if d >= 0:
            q = b + (sqrt(d) if b >= 0 else -sqrt(d))
            if q:
                adc_t = _sure((-2 * c / q + c2) * 131072.0, 1048575)
        if adc_t < 0:
            cal_t = self.cal_t
            adc_t = _invert(lambda a: float_t(a, cal_t)[0], t_c, 20, True, _guess_t(t_c, cal_t, hint[0]))
        x = adc_t / 131072.0 - c2
        t_fine = (adc_t / 16384.0 - c1) * t2 + x * x * t3  # float_t's
        # -- pressure: float_p's P is linear in the word, its output quadratic in P
        p1, p2, p3, p4, p5, p6 = self.cal_p[:6]
        p_pa = p_hpa * 100
        var1 = t_fine / 2.0 - 64000.0
        var2 = (var1 * var1 * p6 / 32768.0 + var1 * p5 * 2.0) / 4.0 + p4 * 65536.0
        var1 = (1.0 + ((p3 * var1 * var1 / 524288.0 + p2 * var1) / 524288.0) / 32768.0) * p1
        adc_p = -1
        qa, b, c = self._p
        c -= p_pa
        d = b * b - 4 * qa * c
        if d >= 0 and var1:
            q = b + (sqrt(d) if b >= 0 else -sqrt(d))
            if q:
                adc_p = _sure(1048576.0 - var2 / 4096.0 + 2 * c / q * var1 / 6250.0, 1048575)
        if adc_p < 0:
            cal_p = self.cal_p
            adc_p = _invert(lambda a: float_p(a, t_fine, cal_p), p_pa, 20, False, _guess_p(p_pa, t_fine, cal_p, hint[1]))
        # -- humidity: out = v*(1 - h1*v/524288), v = (adc - k)*m, clamped to 0..100
        adc_h = -1
        if 0.05 < h_pct < 99.95:
            h1, h2, h3, h4, h5, h6 = self.cal_h
            v0 = t_fine - 76800.0
            m = h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v0 * (1.0 + h3 / 67108864.0 * v0))
            d = 1.0 + 4 * self._h1 * h_pct
            if d >= 0 and m:
                adc_h = _sure(2 * h_pct / (1.0 + sqrt(d)) / m + h4 * 64.0 + h5 / 16384.0 * v0, 65535)
        if adc_h < 0:
            cal_h = self.cal_h
            adc_h = _invert(lambda a: float_h(a, t_fine, cal_h), h_pct, 16, True, _guess_h(h_pct, t_fine, cal_h, hint[2]))
        self.last = words = (adc_t, adc_p, adc_h)
        return words


# -- BME280 ------------------------------------------------------------------------


def _osrs(code: int) -> int:
    """Oversampling factor for a 3-bit osrs field (0 = skipped)."""
    return (0, 1, 2, 4, 8, 16, 16, 16)[code & 7]


def _mode(os_t: int, os_p: int, os_h: int) -> tuple:
    """What a measurement with these oversampling factors (0 = skipped)
    takes: its typical time in s (datasheet 9.1), the noise's standard
    deviation per channel (datasheet: ~0.005 degC, ~1.3 Pa, ~0.02 %RH at x1,
    shrinking with oversampling), and the masks of the bits T and P resolve
    (16 at x1, one more per doubling; 0 = skipped), H's flag."""
    ms = 1 + 2 * os_t + (2 * os_p + 0.5 if os_p else 0) + (2 * os_h + 0.5 if os_h else 0)
    keep_t = ~((1 << (20 - min(20, 15 + os_t.bit_length()))) - 1) & 0xFFFFF if os_t else 0
    keep_p = ~((1 << (20 - min(20, 15 + os_p.bit_length()))) - 1) & 0xFFFFF if os_p else 0
    return (
        ms / 1000,
        0.005 / max(os_t, 1) ** 0.5,
        0.013 / max(os_p, 1) ** 0.5,
        0.02 / max(os_h, 1) ** 0.5,
        keep_t,
        keep_p,
        1 if os_h else 0,
    )


_MODES: dict[int, tuple] = {}  # (osrs_t, osrs_p, osrs_h) codes -> _mode(...), shared by all chips


class Bme280Chip:
    """A BME280 on an I2C bus: read(reg, n) and write(reg, data) as the
    bus calls them. Time comes from the environment's clock."""

    CHIP_ID = 0x60

    def __init__(self, env, rng: random.Random):
        self.env = env
        self.rng = rng
        self.cal_t = tuple(v + rng.randint(-d, d) for v, d in zip(_CAL_T, (300, 300, 50)))
        self.cal_p = tuple(v + rng.randint(-d, d) for v, d in zip(_CAL_P, (400, 200, 100, 300, 20, 1, 100, 200, 100)))
        self.cal_h = tuple(v + rng.randint(-d, d) for v, d in zip(_CAL_H, (5, 20, 0, 20, 5, 3)))
        # Each part's accuracy (datasheet: +-0.5 degC, +-1 hPa, +-3 %RH).
        self.offsets = (rng.uniform(-0.5, 0.5), rng.uniform(-1.0, 1.0), rng.uniform(-3.0, 3.0))
        self.fault: str | None = None
        self._spike_sign = 1
        self.conversions = 0
        self._inverse = Inverse(self.cal_t, self.cal_p, self.cal_h)  # the raw words for the air
        self._reset()

    def _reset(self) -> None:
        regs = bytearray(256)
        regs[0xD0] = self.CHIP_ID
        t1, t2, t3 = self.cal_t
        regs[0x88:0xA0] = struct.pack("<HhhHhhhhhhhh", t1, t2, t3, *self.cal_p)
        h1, h2, h3, h4, h5, h6 = self.cal_h
        regs[0xA1] = h1
        regs[0xE1:0xE8] = struct.pack("<hBBBBb", h2, h3, (h4 >> 4) & 0xFF, (h4 & 0x0F) | ((h5 & 0x0F) << 4), (h5 >> 4) & 0xFF, h6)
        regs[0xF7:0xFF] = bytes((0x80, 0, 0, 0x80, 0, 0, 0x80, 0))  # reset values: nothing measured
        self.regs = regs
        self._ctrl_hum = 0  # the latched copy: ctrl_hum takes effect with a ctrl_meas write
        self._busy_until = 0.0
        self._pending: bytes | None = None

    # -- the bus side --

    def read(self, reg: int, n: int) -> bytes:
        self._tick()
        if reg == 0xF3:  # status: measuring while a conversion runs
            self.regs[0xF3] = 0x08 if self._pending is not None else 0
        if reg + n <= 256:
            return bytes(self.regs[reg : reg + n])
        return bytes(self.regs[(reg + i) & 0xFF] for i in range(n))

    def write(self, reg: int, data: bytes) -> None:
        if len(data) == 1:  # the usual write: one register
            self._write(reg, data[0])
            return
        # Writes are register/value pairs after the first (datasheet 6.2.1).
        pairs = [(reg, data[0])] if data else []
        rest = data[1:]
        pairs += [(rest[i], rest[i + 1]) for i in range(0, len(rest) - 1, 2)]
        for r, v in pairs:
            self._write(r, v)

    def _write(self, r: int, v: int) -> None:
        self._tick()
        if r == 0xE0:
            if v == 0xB6:
                self._reset()
        elif r in (0xF2, 0xF5):
            self.regs[r] = v
        elif r == 0xF4:
            self.regs[r] = v
            self._ctrl_hum = self.regs[0xF2] & 7
            if v & 3:
                self._start()

    # -- the measurement --

    def _start(self) -> None:
        ctrl = self.regs[0xF4]
        key = (ctrl >> 2) << 3 | self._ctrl_hum
        mode = _MODES.get(key)
        if mode is None:
            mode = _MODES[key] = _mode(_osrs(ctrl >> 5), _osrs(ctrl >> 2), _osrs(self._ctrl_hum))
        self._busy_until = self.env.now() + mode[0]
        self._pending = self._sample(mode)
        self.conversions += 1

    def _sample(self, mode) -> bytes:
        _, sd_t, sd_p, sd_h, keep_t, keep_p, keep_h = mode
        dt, dp, dh = self.offsets
        env = self.env
        t, p, h = env.air()
        t += dt
        p += dp
        h += dh
        if self.fault == "spike":
            rng = self.rng
            s = self._spike_sign = -self._spike_sign
            t += s * rng.uniform(15.0, 30.0)
            p += s * rng.uniform(30.0, 80.0)
            h += s * rng.uniform(30.0, 50.0)
        noise = env.noise  # N(0, 1) draws (environment.Noise)
        t += sd_t * noise()
        p += sd_p * noise()
        h += sd_h * noise()
        adc_t, adc_p, adc_h = self._inverse(t, p, 100.0 if h > 100.0 else 0.0 if h < 0.0 else h)
        # Without the IIR filter, T and P resolve 16 bits at x1, one more per doubling.
        adc_t = adc_t & keep_t if keep_t else _SKIPPED_20
        adc_p = adc_p & keep_p if keep_p else _SKIPPED_20
        adc_h = adc_h if keep_h else _SKIPPED_16
        return bytes(
            (adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0xF) << 4, adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0xF) << 4, adc_h >> 8, adc_h & 0xFF)
        )

    def _tick(self) -> None:
        if self._pending is None or self.env.now() < self._busy_until:
            return
        if self.fault != "stuck":  # a stuck chip keeps its old data registers
            self.regs[0xF7:0xFF] = self._pending
        self._pending = None
        ctrl = self.regs[0xF4]
        if ctrl & 3 == 3:
            self._start()  # normal mode: the next conversion follows at once (t_standby ignored)
        else:
            self.regs[0xF4] = ctrl & ~3  # forced mode: back to sleep


# -- DHT22 ---------------------------------------------------------------------------


class Dht22Sensor:
    """A DHT22 (AM2302) on one GPIO: `readinto(buf)` is the 40-bit transfer
    the `dht` module's dht_readinto does."""

    MIN_PERIOD_S = 2.0

    def __init__(self, env, rng: random.Random):
        self.env = env
        self.rng = rng
        self.offsets = (rng.uniform(-0.5, 0.5), rng.uniform(-2.0, 2.0))
        self.fault: str | None = None
        self._spike_sign = 1
        self._frame = None
        self._at = -1e18

    def _measure(self) -> bytes:
        env, rng = self.env, self.rng
        t = env.temperature() + self.offsets[0] + rng.gauss(0, 0.05)
        h = env.humidity() + self.offsets[1] + rng.gauss(0, 0.3)
        if self.fault == "spike":
            s = self._spike_sign = -self._spike_sign
            t += s * rng.uniform(15.0, 30.0)
            h += s * rng.uniform(30.0, 50.0)
        h10 = max(0, min(1000, round(h * 10)))
        t10 = max(-400, min(800, round(t * 10)))
        tw = (-t10 | 0x8000) if t10 < 0 else t10  # sign and magnitude
        b = [h10 >> 8, h10 & 0xFF, tw >> 8, tw & 0xFF]
        return bytes(b + [sum(b) & 0xFF])

    def readinto(self, buf) -> None:
        if self.fault == "unplugged":
            raise mp_oserror(ETIMEDOUT)  # nobody pulls the line low
        now = self.env.now()
        if self._frame is None or now - self._at >= self.MIN_PERIOD_S:
            self._frame = self._measure()  # sooner than 2 s: the last values again
            self._at = now
        frame = bytearray(self._frame)
        if self.fault == "bus_errors":
            r = self.rng.random()
            if r < 0.4:
                raise mp_oserror(ETIMEDOUT)  # the start pulse was missed
            if r < 0.8:
                frame[self.rng.randrange(4)] ^= 1 << self.rng.randrange(8)  # a bit read wrong
        buf[0:5] = frame


# -- wiring and faults ----------------------------------------------------------------


def wire(env, specs) -> None:
    """Attach to `env` the sensor fakes that the config entries `specs`
    describe (entries the firmware would refuse are skipped, whatever their
    shape). A chip keeps its identity (calibration, faults) across boots."""
    env.adc_inputs.clear()
    env.dht.clear()
    for bus in env.buses.values():
        bus.devices.clear()
    if not isinstance(specs, list):
        return
    for spec in specs:
        if not isinstance(spec, dict):
            continue
        kind = spec.get("type")
        if kind == "bme280":
            bus_id, addr = spec.get("i2c", 0), spec.get("addr", 0x76)
            if not (_small_int(bus_id) and bus_id in (0, 1) and _small_int(addr) and addr in (0x76, 0x77)):
                continue
            chip = _fake(env, ("bme280", bus_id, addr), Bme280Chip)
            chip.bus = env.i2c_bus(bus_id)
            chip.addr = addr
            if chip.fault != "missing":
                chip.bus.devices[addr] = chip
        elif kind == "dht22" and _small_int(spec.get("pin")):
            env.dht[spec["pin"]] = _fake(env, ("dht22", spec["pin"]), Dht22Sensor)
        elif kind == "battery":
            pin, divider = spec.get("pin", 35), spec.get("divider", 2.0)
            if _small_int(pin) and not isinstance(divider, bool) and isinstance(divider, (int, float)) and 1 <= divider <= 100:
                env.adc_inputs[pin] = Divider(env.battery, divider)


def _small_int(v) -> bool:
    """An int (not a bool) small enough for a pin, bus or I2C address."""
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255


def _fake(env, key: tuple, cls):
    dev = env.sensors.get(key)
    if dev is None:
        dev = env.sensors[key] = cls(env, env.child(":".join(map(str, key))))
    return dev


def apply_fault(env, sensor: str, fault: str):
    """Give every `sensor` (type) chip of this board the `fault`; return a
    function that clears it. ValueError when that sensor type cannot have
    that fault; a board without such a sensor is left alone."""
    if fault not in FAULTS.get(sensor, ()):
        raise ValueError(f"sensor {sensor!r} has no fault {fault!r} (known: {FAULTS})")
    chips = [dev for key, dev in env.sensors.items() if key[0] == sensor]
    for chip in chips:
        chip.fault = fault
        if fault == "missing":
            chip.bus.devices.pop(chip.addr, None)
        elif fault == "bus_errors" and sensor == "bme280":
            chip.bus.error_rate = 0.5

    def undo() -> None:
        for chip in chips:
            if chip.fault != fault:
                continue  # a later fault replaced this one
            chip.fault = None
            if fault == "missing":
                chip.bus.devices[chip.addr] = chip
            elif fault == "bus_errors" and sensor == "bme280":
                chip.bus.error_rate = 0.0

    return undo


def manual_clock(start: float = 1_700_000_000.0):
    """A clock for tests: call it for the time, `.advance(s)` to move it."""

    class Clock:
        def __init__(self):
            self.t = start

        def __call__(self) -> float:
            return self.t

        def advance(self, s: float) -> None:
            self.t += s

    return Clock()
