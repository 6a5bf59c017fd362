"""The emulator's physical world and its bus-level sensor fakes, on their own:
environment models, the BME280 register map (whose raw words the firmware's
integer compensation must turn back into the physical values), the DHT22
frames, the ADC, faults, reproducibility by seed, and the scenario action."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from emulator.board.environment import Environment, I2CBus
from emulator.board.fakes.dhtfake import DhtModule
from emulator.board.sensors import Bme280Chip, Dht22Sensor, apply_fault, manual_clock, raw_words, wire
from emulator.run.scenario import ScenarioError, parse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
import bme280  # noqa: E402  (the firmware driver's pure math)


def env_at(seed: int = 1, clock=None) -> Environment:
    return Environment(random.Random(seed), now=clock or manual_clock())


def measure(chip: Bme280Chip, clock, ctrl_meas: int = 0x25, ctrl_hum: int = 0x01) -> tuple[int, int, int]:
    chip.write(0xF2, bytes([ctrl_hum]))
    chip.write(0xF4, bytes([ctrl_meas]))
    clock.advance(0.2)  # x16 everywhere takes ~100 ms
    d = chip.read(0xF7, 8)
    return (d[3] << 12) | (d[4] << 4) | (d[5] >> 4), (d[0] << 12) | (d[1] << 4) | (d[2] >> 4), (d[6] << 8) | d[7]


def firmware_cal(chip: Bme280Chip):
    return bme280.parse_calibration(chip.read(0x88, 26), chip.read(0xE1, 7))


# -- environment ------------------------------------------------------------------


def test_environment_is_reproducible_by_seed_and_differs_between_boards():
    def series(seed):
        clock = manual_clock()
        env = env_at(seed, clock)
        out = []
        for _ in range(20):
            clock.advance(600)
            out.append((env.temperature(), env.humidity(), env.pressure(), env.battery.volts()))
        return out

    assert series(3) == series(3)
    assert series(3) != series(4)


def test_diurnal_temperature_and_anticorrelated_humidity():
    clock = manual_clock(0.0)
    env = env_at(5, clock)
    temps, hums = [], []
    for _ in range(48):
        clock.advance(1800)
        temps.append(env.temperature())
        hums.append(env.humidity())
    assert max(temps) - min(temps) > 2.0, "day and night differ"
    hottest = temps.index(max(temps)) % 48 / 2  # hour of the day
    assert 10 <= hottest <= 20
    mt, mh = sum(temps) / 48, sum(hums) / 48
    cov = sum((t - mt) * (h - mh) for t, h in zip(temps, hums))
    assert cov < 0, "warmer air, lower relative humidity"


def test_pressure_drifts_slowly_with_the_weather():
    clock = manual_clock()
    env = env_at(6, clock)
    p0 = env.pressure()
    clock.advance(60)
    assert abs(env.pressure() - p0) < 0.5, "no weather change in a minute"
    days = []
    for _ in range(30):
        clock.advance(86400)
        days.append(env.pressure())
    assert max(days) - min(days) > 2.0 and 850 < min(days) and max(days) < 1060


def test_battery_discharges_and_sags_while_the_radio_sends():
    clock = manual_clock()
    env = env_at(7, clock)
    v0 = env.battery.volts()
    env.radio_transmit(100_000)  # 160 ms on the air
    during = env.battery.volts()
    assert 0.02 < v0 - during < 0.1
    clock.advance(0.2)
    after = env.battery.volts()
    assert during < after < v0, "recovers over a few seconds"
    clock.advance(30)
    assert v0 - env.battery.volts() < 0.005
    clock.advance(6 * 3600)
    assert env.battery.volts() < v0 - 0.03, "six hours of current drain the cell"


# -- BME280 register map ---------------------------------------------------------------


def test_chip_id_calibration_and_reset_values():
    clock = manual_clock()
    chip = Bme280Chip(env_at(1, clock), random.Random(2))
    assert chip.read(0xD0, 1) == b"\x60"
    cal = firmware_cal(chip)
    assert (cal.t, cal.p, cal.h) == (chip.cal_t, chip.cal_p, chip.cal_h)
    assert chip.read(0xF7, 8) == bytes((0x80, 0, 0, 0x80, 0, 0, 0x80, 0)), "nothing measured yet"


def test_forced_mode_status_and_back_to_sleep():
    clock = manual_clock()
    chip = Bme280Chip(env_at(1, clock), random.Random(2))
    chip.write(0xF2, b"\x01")
    chip.write(0xF4, b"\x25")
    assert chip.read(0xF3, 1) == b"\x08", "measuring"
    assert chip.read(0xF7, 1) == b"\x80", "data registers hold the old values meanwhile"
    clock.advance(0.009)
    assert chip.read(0xF3, 1) == b"\x00"
    assert chip.read(0xF4, 1)[0] & 3 == 0, "forced mode returns to sleep"
    assert chip.read(0xF7, 1) != b"\x80"


def test_ctrl_hum_takes_effect_only_with_ctrl_meas():
    clock = manual_clock()
    chip = Bme280Chip(env_at(1, clock), random.Random(2))
    chip.write(0xF2, b"\x01")  # humidity x1 latched by the next ctrl_meas write
    _, _, adc_h = measure(chip, clock, ctrl_hum=0x01)
    assert adc_h != 0x8000
    chip.write(0xF2, b"\x00")  # humidity skipped, but not latched yet...
    chip.write(0xF4, b"\x24")  # ...until here (and mode sleep: no measurement)
    _, _, adc_h = measure(chip, clock, ctrl_hum=0x00)
    assert adc_h == 0x8000, "a skipped channel reads 0x8000"


@pytest.mark.parametrize("seed", range(6))
def test_firmware_compensation_of_raw_words_gives_the_physical_values(seed):
    rng = random.Random(seed)
    chip = Bme280Chip(env_at(seed), rng)
    cal = firmware_cal(chip)
    for _ in range(20):
        t, p, h = rng.uniform(-30, 60), rng.uniform(600, 1080), rng.uniform(5, 95)
        words = raw_words(t, p, h, chip.cal_t, chip.cal_p, chip.cal_h)
        ct, cp, ch = bme280.compensate(*words, cal)
        assert abs(ct - t) < 0.011 and abs(cp - p) < 0.02 and abs(ch - h) < 0.02, (t, p, h, ct, cp, ch)


def test_resolution_follows_oversampling():
    clock = manual_clock()
    chip = Bme280Chip(env_at(1, clock), random.Random(2))
    x1 = [measure(chip, clock, 0x25) for _ in range(10)]
    assert all(t & 0xF == 0 and p & 0xF == 0 for t, p, _ in x1), "16 bits at x1"
    x16 = [measure(chip, clock, (5 << 5) | (5 << 2) | 1) for _ in range(10)]
    assert any(t & 0xF for t, _, _ in x16), "20 bits at x16"
    skipped = measure(chip, clock, (0 << 5) | (1 << 2) | 1)
    assert skipped[0] == 0x80000


def test_soft_reset_restores_the_registers():
    clock = manual_clock()
    chip = Bme280Chip(env_at(1, clock), random.Random(2))
    measure(chip, clock)
    chip.write(0xE0, b"\xb6")
    assert chip.read(0xF7, 8)[0] == 0x80 and chip.read(0xF4, 1) == b"\x00"


def test_chip_is_reproducible_by_seed():
    def run(seed):
        clock = manual_clock()
        chip = Bme280Chip(env_at(seed, clock), random.Random(seed))
        return [measure(chip, clock) for _ in range(5)]

    assert run(11) == run(11) and run(11) != run(12)


# -- the bus and faults --------------------------------------------------------------------


def test_missing_and_bus_errors_on_the_bus():
    clock = manual_clock()
    env = env_at(1, clock)
    wire(env, [{"type": "bme280", "i2c": 0, "addr": 0x76}])
    bus = env.i2c_bus(0)
    assert bus.scan() == [0x76]
    with pytest.raises(OSError) as e:
        bus.read(0x77, 0xD0, 1)
    assert e.value.errno == 19
    undo = apply_fault(env, "bme280", "missing")
    assert bus.scan() == []
    undo()
    assert bus.read(0x76, 0xD0, 1) == b"\x60"
    apply_fault(env, "bme280", "bus_errors")
    errors = 0
    for _ in range(200):
        try:
            bus.read(0x76, 0xD0, 1)
        except OSError as err:
            assert err.errno == 5
            errors += 1
    assert 60 < errors < 140


def test_unknown_fault_is_refused():
    with pytest.raises(ValueError, match="has no fault"):
        apply_fault(env_at(), "dht22", "missing")


def test_wiring_keeps_a_chip_across_boots():
    env = env_at()
    wire(env, [{"type": "bme280"}])
    chip = env.i2c_bus(0).devices[0x76]
    apply_fault(env, "bme280", "missing")
    wire(env, [{"type": "bme280"}])  # a reboot: the chip is still unplugged
    assert env.i2c_bus(0).devices == {} and env.sensors[("bme280", 0, 0x76)] is chip


# -- DHT22 and the dht module ------------------------------------------------------------------


class FakeBoard:
    def __init__(self, env):
        self.env = env


def test_dht22_frames_decode_like_the_real_module():
    clock = manual_clock()
    env = env_at(2, clock)
    env.temp_mean = -30  # a freezer: negative temperatures are sign and magnitude
    wire(env, [{"type": "dht22", "pin": 4}])
    dht = DhtModule(FakeBoard(env))

    class Pin:
        _id = 4

    d = dht.DHT22(Pin())
    d.measure()
    assert (sum(d.buf[:4]) & 0xFF) == d.buf[4]
    assert d.buf[2] & 0x80 and d.temperature() < -20
    assert abs(d.temperature() - env.temperature()) < 1.0
    assert 0 <= d.humidity() <= 100


def test_dht22_failures_are_oserrors():
    clock = manual_clock()
    env = env_at(2, clock)
    wire(env, [{"type": "dht22", "pin": 4}])
    dht = DhtModule(FakeBoard(env))

    class Pin:
        def __init__(self, n):
            self._id = n

    with pytest.raises(OSError) as e:
        dht.DHT22(Pin(5)).measure()  # nothing on pin 5
    assert e.value.errno == 116
    apply_fault(env, "dht22", "bus_errors")
    kinds = set()
    for _ in range(40):
        clock.advance(2.0)
        try:
            dht.DHT22(Pin(4)).measure()
            kinds.add("ok")
        except OSError as err:
            kinds.add(err.args[0])
    assert kinds == {"ok", 116, "checksum error"}


def test_dht22_is_reproducible_by_seed():
    def run(seed):
        clock = manual_clock()
        s = Dht22Sensor(env_at(seed, clock), random.Random(seed))
        out = []
        for _ in range(5):
            clock.advance(2.0)
            buf = bytearray(5)
            s.readinto(buf)
            out.append(bytes(buf))
        return out

    assert run(1) == run(1) and run(1) != run(2)


# -- ADC -------------------------------------------------------------------------------------------


def test_adc_attenuation_ranges_and_noise(tmp_path):
    from emulator.board.board import Board
    from emulator.board.fakes.machinefake import MachineModule
    from emulator.board.loader import FirmwareImage

    board = Board("adc", FirmwareImage(), tmp_path / "adc")
    board.env.adc_inputs[35] = lambda: 2.05  # a 4.1 V cell behind a 1:2 divider
    machine = MachineModule(board)
    pin = machine.Pin(35)
    adc11 = machine.ADC(pin, atten=machine.ADC.ATTN_11DB)
    uv = [adc11.read_uv() for _ in range(50)]
    assert all(abs(u - 2_050_000) < 40_000 for u in uv) and len(set(uv)) > 3, "noisy around 2.05 V"
    adc0 = machine.ADC(pin, atten=machine.ADC.ATTN_0DB)
    assert adc0.read_u16() == 65535 and adc0.read() == 4095, "saturated above ~1.1 V"
    assert adc0.read_uv() <= 1_100_000
    with pytest.raises(ValueError):
        machine.ADC(pin, atten=7)


# -- scenario -------------------------------------------------------------------------------------


def scenario(event: str):
    text = "[[event]]\nat = 1\n" + event
    import tomllib

    return parse(tomllib.loads(text), text, Path("s.toml"))


def test_scenario_sensor_fault_parses_and_checks():
    sc = scenario('action = "sensor_fault"\nsensor = "bme280"\nfault = "stuck"\nduration = 5\n')
    assert sc.events[0].params == {"sensor": "bme280", "fault": "stuck", "duration": 5}
    with pytest.raises(ScenarioError, match=r"s.toml:5: dht22 faults are"):
        scenario('action = "sensor_fault"\nsensor = "dht22"\nfault = "stuck"\n')
    with pytest.raises(ScenarioError, match=r"s.toml:4: sensor_fault needs sensor"):
        scenario('action = "sensor_fault"\nsensor = "sht31"\nfault = "stuck"\n')


def test_bus_without_rng_still_works():
    bus = I2CBus()
    with pytest.raises(OSError):
        bus.read(0x76, 0, 1)


def test_fast_inverse_matches_bisection():
    """The hinted search gives exactly the bisection's raw words, from any hint, for
    temperatures, pressures and humidities across the chip's range."""
    import random

    from emulator.board import sensors as S
    rng = random.Random(7)
    cal_t, cal_p, cal_h = S._CAL_T, S._CAL_P, S._CAL_H
    for _ in range(300):
        t = rng.uniform(-40, 85)
        fn_t = lambda a: S.float_t(a, cal_t)[0]  # noqa: E731
        adc_t = S._invert_by_bisection(fn_t, t, 20, True)
        for hint in (0, (1 << 20) - 1, adc_t, adc_t + rng.randrange(-50, 50)):
            assert S._invert(fn_t, t, 20, True, hint) == adc_t
        t_fine = S.float_t(adc_t, cal_t)[1]
        p = rng.uniform(300, 1100) * 100
        fn_p = lambda a: S.float_p(a, t_fine, cal_p)  # noqa: E731
        want = S._invert_by_bisection(fn_p, p, 20, False)
        assert S._invert(fn_p, p, 20, False, want + rng.randrange(-300, 300)) == want
        h = rng.choice([0.0, 100.0, rng.uniform(0, 100)])
        fn_h = lambda a: S.float_h(a, t_fine, cal_h)  # noqa: E731
        want = S._invert_by_bisection(fn_h, h, 16, True)
        assert S._invert(fn_h, h, 16, True, rng.randrange(0, 1 << 16)) == want


# -- the cheap paths (issue 15): same answers, same statistics -------------------------------------


def test_raw_words_at_the_midway_between_two_words_are_still_the_bisections():
    """Targets placed exactly half way (in value) between neighbouring words,
    and a hair either side, are where rounding the closed form could pick
    the wrong neighbour: the evaluations must settle them as bisection does."""
    from emulator.board import sensors as S

    rng = random.Random(21)
    for _ in range(40):
        cal_t = tuple(v + rng.randint(-d, d) for v, d in zip(S._CAL_T, (300, 300, 50)))
        cal_p = tuple(v + rng.randint(-d, d) for v, d in zip(S._CAL_P, (400, 200, 100, 300, 20, 1, 100, 200, 100)))
        cal_h = tuple(v + rng.randint(-d, d) for v, d in zip(S._CAL_H, (5, 20, 0, 20, 5, 3)))
        w_t, w_p, w_h = rng.randrange(300_000, 700_000), rng.randrange(200_000, 600_000), rng.randrange(20_000, 45_000)
        t_mid = (S.float_t(w_t, cal_t)[0] + S.float_t(w_t + 1, cal_t)[0]) / 2
        for t in (t_mid, t_mid * (1 + 1e-15), t_mid * (1 - 1e-15)):
            adc_t = S._invert_by_bisection(lambda a: S.float_t(a, cal_t)[0], t, 20, True)
            t_fine = S.float_t(adc_t, cal_t)[1]
            p_mid = (S.float_p(w_p, t_fine, cal_p) + S.float_p(w_p + 1, t_fine, cal_p)) / 2
            h_mid = (S.float_h(w_h, t_fine, cal_h) + S.float_h(w_h + 1, t_fine, cal_h)) / 2
            for p, h in ((p_mid, h_mid), (p_mid + 1e-9, h_mid - 1e-12), (p_mid - 1e-9, h_mid + 1e-12)):
                p_hpa = p / 100  # raw_words takes hPa; the target is that times 100
                want = (
                    adc_t,
                    S._invert_by_bisection(lambda a: S.float_p(a, t_fine, cal_p), p_hpa * 100, 20, False),
                    S._invert_by_bisection(lambda a: S.float_h(a, t_fine, cal_h), h, 16, True),
                )
                assert S.raw_words(t, p_hpa, h, cal_t, cal_p, cal_h) == want
                assert S.Inverse(cal_t, cal_p, cal_h)(t, p_hpa, h) == want


def test_a_chip_reuses_its_inverse_and_its_words_decode_to_the_air():
    clock = manual_clock()
    env = env_at(4, clock)
    chip = Bme280Chip(env, random.Random(4))
    cal = firmware_cal(chip)
    for _ in range(30):
        clock.advance(37.0)
        t, p, h = env.air()
        words = chip._inverse(t, p, h)
        assert words == raw_words(t, p, h, chip.cal_t, chip.cal_p, chip.cal_h)
        ct, cp, ch = bme280.compensate(*words, cal)
        assert abs(ct - t) < 0.011 and abs(cp - p) < 0.02 and abs(ch - h) < 0.02


def test_the_air_is_continuous_between_knots_and_exact_at_them():
    """Between the knots (KNOT_S apart) the air moves on a straight line; at a
    knot it is the day cycle plus the drifts, with no jump."""
    from emulator.board.environment import KNOT_S

    clock = manual_clock(1_700_000_000.0)
    env = env_at(8, clock)
    prev = env.air()
    for _ in range(int(5 * KNOT_S / 0.25)):
        clock.advance(0.25)
        now = env.air()
        assert all(abs(a - b) < 0.01 for a, b in zip(now, prev)), (now, prev)
        prev = now
    # a knot's value is the exact day cycle plus the drifts at that instant
    k = env._line[0]  # the current interval's start
    clock.t = k
    t, _, _ = env.air()
    import math

    day = math.cos(2 * math.pi * ((k % 86400) / 3600 - env.peak_hour) / 24)
    drift = t - env.temp_mean - env.temp_swing * day
    assert abs(drift) < 4 * 0.8 and drift == pytest.approx(env._line[1] - env.temp_mean - env.temp_swing * day)
    # the site changes (carried outdoors): the air follows at once, not at the next knot
    clock.advance(KNOT_S / 2)
    t, p, h = env.air()
    env.temp_mean -= 15
    env.altitude_m += 100
    t2, p2, h2 = env.air()
    assert t2 == pytest.approx(t - 15) and p2 < p - 10 and h2 == pytest.approx(h)  # RH follows the site's mean


def test_the_drifts_keep_their_spread_and_correlation_time():
    from emulator.board.environment import KNOT_S, Drift
    from emulator.rng import SmallRandom

    d = Drift(SmallRandom(3), sigma=2.0, tau_s=600.0)
    xs = [d.step(KNOT_S) for _ in range(60_000)]  # ~1000 correlation times
    mean = sum(xs) / len(xs)
    sd = (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
    assert abs(mean) < 0.3 and 1.8 < sd < 2.2
    lag = int(600 / KNOT_S)  # one correlation time: autocorrelation ~ 1/e
    r = sum((a - mean) * (b - mean) for a, b in zip(xs, xs[lag:])) / (len(xs) - lag) / sd**2
    assert 0.25 < r < 0.5
    # a long jump is one exact step: the value forgets where it was
    far = [Drift(SmallRandom(s), 2.0, 600.0) for s in range(400)]
    ys = [x.step(1e6) for x in far]
    assert 1.7 < (sum(y * y for y in ys) / len(ys)) ** 0.5 < 2.3


def test_adc_noise_is_the_converters_sigma_in_codes():
    from emulator.board.environment import Divider
    from emulator.board.fakes.machinefake import _NOISE_CODES, _PER_VOLT, ADC

    clock = manual_clock()
    env = env_at(9, clock)
    env.adc_inputs[35] = lambda: 1.6  # a steady source: no battery window, every read new
    codes = [env.adc_code(35, _PER_VOLT[3], _NOISE_CODES[3]) for _ in range(6000)]
    mean = sum(codes) / len(codes)
    sd = (sum((c - mean) ** 2 for c in codes) / len(codes)) ** 0.5
    assert abs(mean - 1.6 * _PER_VOLT[3]) < 0.2
    assert abs(sd - ADC.NOISE_V * _PER_VOLT[3]) < 0.1 * ADC.NOISE_V * _PER_VOLT[3]
    # a battery divider: the same code scale, reads in one sample window share one voltage
    env.adc_inputs[35] = Divider(env.battery, 2.0)
    v = env.battery.volts() / 2.0
    burst = [env.adc_code(35, _PER_VOLT[3], _NOISE_CODES[3]) for _ in range(9)]
    assert all(abs(c - v * _PER_VOLT[3]) < 4 * ADC.NOISE_V * _PER_VOLT[3] for c in burst)
    assert env.adc_volts(35) == v
    # and the same seed gives the same codes
    again = env_at(9, manual_clock())
    again.adc_inputs[35] = lambda: 1.6
    assert [again.adc_code(35, _PER_VOLT[3], _NOISE_CODES[3]) for _ in range(50)] == codes[:50]


def test_small_random_one_word_fast_path_is_the_general_one():
    from emulator.rng import SmallRandom

    a, b = SmallRandom("x"), SmallRandom("x")
    for k in (1, 10, 60, 63, 64):
        got = a.getrandbits(k)
        out = b._next64() >> (64 - k)  # the general path's answer for k <= 64
        assert got == out and 0 <= got < 1 << k
    assert a.getrandbits(0) == 0 and a.getrandbits(130) == b.getrandbits(130)
