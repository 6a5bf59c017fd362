"""backoff.Backoff under CPython: windows, cap, full-jitter distribution."""

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

from backoff import Backoff  # noqa: E402


def test_windows_double_until_cap():
    b = Backoff(500, 30000, random.Random(1).randrange)
    assert [b.window_ms(n) for n in range(9)] == [
        500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000,
    ]


def test_window_defaults_to_current_attempt():
    b = Backoff(100, 1000, random.Random(1).randrange)
    assert b.window_ms() == 100
    b.next_delay_ms()
    b.next_delay_ms()
    assert b.attempt == 2
    assert b.window_ms() == 400


def test_cap_equal_to_base():
    b = Backoff(250, 250, random.Random(1).randrange)
    assert all(b.window_ms(n) == 250 for n in range(50))


@pytest.mark.parametrize("attempt", [31, 64, 1000, 10**6, 2**64])
def test_no_overflow_for_huge_attempts(attempt):
    b = Backoff(1, 3_600_000, random.Random(1).randrange)
    assert b.window_ms(attempt) == 3_600_000
    b.reset(attempt)
    assert 0 <= b.next_delay_ms() <= 3_600_000
    assert b.attempt == attempt + 1


def test_negative_attempt_is_first_window():
    b = Backoff(500, 30000, random.Random(1).randrange)
    assert b.window_ms(-3) == 500


def test_full_jitter_distribution():
    rng = random.Random(12345)
    b = Backoff(100, 800, rng.randrange)
    b.reset(10)  # capped window of 800
    draws = [b.next_delay_ms() for _ in range(10_000)]
    assert min(draws) >= 0 and max(draws) <= 800
    assert min(draws) == 0 and max(draws) == 800  # both ends reachable
    # uniform: every tenth of the window holds roughly a tenth of the draws
    buckets = [0] * 10
    for d in draws:
        buckets[min(d * 10 // 801, 9)] += 1
    assert all(800 <= n <= 1200 for n in buckets), buckets
    # covers the window: nearly every value appears
    assert len(set(draws)) > 790


def test_each_delay_within_its_attempt_window():
    rng = random.Random(7)
    b = Backoff(500, 30000, rng.randrange)
    for n in range(40):
        w = b.window_ms(n)
        d = b.next_delay_ms()
        assert 0 <= d <= w


def test_rand_below_called_with_window_plus_one():
    calls = []

    def rand_below(n):
        calls.append(n)
        return n - 1

    b = Backoff(500, 4000, rand_below)
    delays = [b.next_delay_ms() for _ in range(6)]
    assert calls == [501, 1001, 2001, 4001, 4001, 4001]
    assert delays == [500, 1000, 2000, 4000, 4000, 4000]


def test_reset():
    b = Backoff(500, 30000, random.Random(3).randrange)
    for _ in range(5):
        b.next_delay_ms()
    assert b.attempt == 5
    b.reset()
    assert b.attempt == 0 and b.window_ms() == 500
    b.reset(3)
    assert b.attempt == 3 and b.window_ms() == 4000
    b.reset(-1)
    assert b.attempt == 0


def test_seeded_runs_repeat():
    a = Backoff(500, 30000, random.Random(99).randrange)
    b = Backoff(500, 30000, random.Random(99).randrange)
    assert [a.next_delay_ms() for _ in range(20)] == [b.next_delay_ms() for _ in range(20)]


def test_fleet_spreads_first_reconnects():
    # SPEC section 4 item 12 in miniature: 100 boards, first delay after a
    # broker restart at a 5 s window; no 1 s bucket gets 30 % of them.
    delays = []
    for seed in range(100):
        b = Backoff(5000, 30000, random.Random(seed).randrange)
        delays.append(b.next_delay_ms())
    buckets = {}
    for d in delays:
        buckets[d // 1000] = buckets.get(d // 1000, 0) + 1
    assert max(buckets.values()) < 30


@pytest.mark.parametrize(
    "base, cap",
    [(0, 100), (-1, 100), (100, 99), (True, 100), (100, True), (1.5, 100), (100, 200.0), ("1", 10)],
)
def test_bad_parameters(base, cap):
    with pytest.raises(ValueError):
        Backoff(base, cap, random.Random(1).randrange)
