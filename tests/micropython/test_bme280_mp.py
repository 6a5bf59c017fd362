# bme280's integer compensation inside the MicroPython VM (run by
# tests/micropython/run.mjs) and under CPython (pytest collects it too):
# the datasheet's worked example, C arithmetic (>> on negatives, division
# truncating toward zero) across small and long ints, calibration parsing.
# Plain functions and asserts only.

import sys

try:
    import bme280
except ImportError:  # CPython: firmware/ is not on sys.path yet
    sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/firmware")
    import bme280

from bme280 import Calibration, compensate, compensate_h, compensate_p, compensate_t, parse_calibration

# BST-BME280-DS002 / BMP280 datasheet worked example (T and P), typical H.
CAL = Calibration(
    (27504, 26435, -1000),
    (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000),
    (75, 362, 0, 313, 50, 30),
)


def test_temperature_worked_example():
    t, t_fine = compensate_t(519888, CAL)
    assert t_fine == 128422
    assert t == 2508  # 25.08 degC


def test_pressure_worked_example():
    # The datasheet prints 25767236; executing its 64-bit formula (in C as
    # here) gives 25767233: 100653.25 Pa, the same 100653 Pa.
    q = compensate_p(415148, 128422, CAL)
    assert q == 25767233
    assert q // 256 == 100653
    assert abs(q / 256 - 100653.27) < 0.05


def test_humidity_matches_the_float_formula():
    # The datasheet's double-precision formula (section 8.1) for the same
    # calibration; the integer one agrees within its 1/1024 %RH steps.
    for adc_h, t_fine in ((32093, 128422), (20000, 100000), (40000, 140000), (26000, 76800)):
        h1, h2, h3, h4, h5, h6 = CAL.h
        v = t_fine - 76800.0
        v = (adc_h - (h4 * 64.0 + h5 / 16384.0 * v)) * (h2 / 65536.0 * (1.0 + h6 / 67108864.0 * v * (1.0 + h3 / 67108864.0 * v)))
        v = min(100.0, max(0.0, v * (1.0 - h1 * v / 524288.0)))
        got = compensate_h(adc_h, t_fine, CAL) / 1024
        assert abs(got - v) < 0.02, (adc_h, t_fine, got, v)


def test_humidity_is_clamped_to_0_100():
    assert compensate_h(0, 128422, CAL) == 0
    assert compensate_h(65535, 128422, CAL) == 100 * 1024


def test_negative_temperatures_use_arithmetic_shifts():
    # adc_T below dig_T1 << 4 makes var1 negative: >> must floor like C's
    # arithmetic shift on two's complement (a -0.01 degC step, not 0).
    temps = [compensate_t(adc, CAL)[0] for adc in (300000, 380000, 440000, 500000)]
    assert temps == sorted(temps)
    assert temps[0] < 0 and temps[-1] > 0
    t, t_fine = compensate_t(440000, CAL)
    assert t_fine == -104
    assert t == -2  # (-104 * 5 + 128) >> 8 == -392 >> 8: floor, as C's shift; truncation gives -1


def test_pressure_across_the_range_is_monotonic_and_plausible():
    last = None
    for adc_p in range(250000, 600001, 50000):
        p = compensate_p(adc_p, 128422, CAL) / 25600
        assert 300 < p < 1300, (adc_p, p)
        assert last is None or p < last
        last = p


def test_compensate_gives_floats_in_units():
    t, p, h = compensate(519888, 415148, 32093, CAL)
    assert t == 25.08
    assert abs(p - 1006.5325) < 0.001
    assert 0 < h < 100


def test_parse_calibration_signed_fields():
    a = bytearray(26)
    # dig_T1 = 27504 (u16), dig_T2 = 26435, dig_T3 = -1000, dig_P1..dig_P9, dig_H1 = 75
    vals = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
    for i, v in enumerate(vals):
        v &= 0xFFFF
        a[2 * i] = v & 0xFF
        a[2 * i + 1] = v >> 8
    a[25] = 75
    # dig_H2 = -2 (s16), dig_H3 = 0, dig_H4 = -300 (12 bits), dig_H5 = 50, dig_H6 = -3
    b = bytes((0xFE, 0xFF, 0x00, (-300 >> 4) & 0xFF, (-300 & 0x0F) | ((50 & 0x0F) << 4), (50 >> 4) & 0xFF, 0xFD))
    cal = parse_calibration(bytes(a), b)
    assert cal.t == (27504, 26435, -1000)
    assert cal.p == (36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
    assert cal.h == (75, -2, 0, -300, 50, -3)


def test_c_division_truncates_toward_zero():
    assert bme280._cdiv(7, 2) == 3
    assert bme280._cdiv(-7, 2) == -3
    assert bme280._cdiv(7, -2) == -3
    assert bme280._cdiv(-(1 << 62), 3) == -((1 << 62) // 3)
