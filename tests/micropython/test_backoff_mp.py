# backoff.py under the MicroPython VM (run by tests/micropython/run.mjs).
# Plain asserts, no pytest. Randomness is a deterministic LCG so every run
# draws the same numbers.

from backoff import Backoff


class Lcg:
    # Numerical Recipes LCG, 32-bit; rand_below(n) in [0, n).
    def __init__(self, seed):
        self.state = seed & 0xFFFFFFFF

    def rand_below(self, n):
        self.state = (self.state * 1664525 + 1013904223) & 0xFFFFFFFF
        return (self.state >> 8) % n


def _raises(exc, fn, *args):
    try:
        fn(*args)
    except exc:
        return True
    return False


def test_windows_double_until_cap():
    b = Backoff(500, 30000, Lcg(1).rand_below)
    got = [b.window_ms(n) for n in range(9)]
    assert got == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000], got
    assert b.window_ms() == 500
    assert b.window_ms(-1) == 500


def test_no_overflow_for_huge_attempts():
    b = Backoff(1, 3600000, Lcg(2).rand_below)
    for attempt in (31, 64, 1000, 1 << 29, 10 ** 6):
        assert b.window_ms(attempt) == 3600000
    b.reset(1000)
    d = b.next_delay_ms()
    assert 0 <= d <= 3600000
    assert b.attempt == 1001


def test_delays_stay_in_window_and_cover_it():
    rng = Lcg(12345)
    b = Backoff(100, 800, rng.rand_below)
    lo = 10 ** 9
    hi = -1
    seen = set()
    for _ in range(2000):
        b.reset(10)
        d = b.next_delay_ms()
        assert 0 <= d <= 800, d
        lo = min(lo, d)
        hi = max(hi, d)
        seen.add(d // 80)
    assert lo < 10 and hi > 790, (lo, hi)
    assert len(seen) == 11  # 0..800 in steps of 80: every bucket hit (800 alone is bucket 10)


def test_each_delay_within_its_attempt_window():
    b = Backoff(500, 30000, Lcg(7).rand_below)
    for n in range(40):
        w = b.window_ms(n)
        d = b.next_delay_ms()
        assert 0 <= d <= w, (n, d, w)


def test_rand_below_gets_window_plus_one():
    calls = []

    def top(n):
        calls.append(n)
        return n - 1

    b = Backoff(500, 4000, top)
    delays = [b.next_delay_ms() for _ in range(6)]
    assert calls == [501, 1001, 2001, 4001, 4001, 4001], calls
    assert delays == [500, 1000, 2000, 4000, 4000, 4000], delays


def test_with_getrandbits_like_the_firmware():
    import random

    if not hasattr(random, "getrandbits"):
        return
    random.seed(42)

    def rand_below(n):
        # what the firmware does: rejection sampling on getrandbits
        bits = 1
        while (1 << bits) < n:
            bits += 1
        while True:
            r = random.getrandbits(bits)
            if r < n:
                return r

    b = Backoff(500, 30000, rand_below)
    for _ in range(200):
        w = b.window_ms()
        assert 0 <= b.next_delay_ms() <= w


def test_reset():
    b = Backoff(500, 30000, Lcg(3).rand_below)
    for _ in range(5):
        b.next_delay_ms()
    assert b.attempt == 5
    b.reset()
    assert b.attempt == 0 and b.window_ms() == 500
    b.reset(3)
    assert b.attempt == 3 and b.window_ms() == 4000


def test_bad_parameters_and_bool_is_not_int():
    r = Lcg(1).rand_below
    for base, cap in ((0, 100), (-1, 100), (100, 99), (True, 100), (100, True), (1.5, 100), ("1", 10)):
        assert _raises(ValueError, Backoff, base, cap, r), (base, cap)
