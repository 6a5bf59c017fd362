"""The reconnect backoff (mqtt_session.backoff_window) under CPython: windows,
cap, no big numbers, and full jitter as device.py draws it (uniform in
[0, window])."""

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

from mqtt_session import backoff_window  # noqa: E402


def test_windows_double_until_cap():
    assert [backoff_window(500, 30000, n) for n in range(9)] == [
        500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000,
    ]


def test_cap_equal_to_base():
    assert all(backoff_window(250, 250, n) == 250 for n in range(50))


@pytest.mark.parametrize("attempt", [31, 64, 1000, 10**6, 2**64])
def test_no_overflow_for_huge_attempts(attempt):
    assert backoff_window(1, 3_600_000, attempt) == 3_600_000


def test_negative_attempt_is_first_window():
    assert backoff_window(500, 30000, -3) == 500


def test_full_jitter_distribution():
    rng = random.Random(12345)
    w = backoff_window(100, 800, 10)  # capped window of 800
    draws = [rng.randrange(w + 1) for _ in range(10_000)]  # as device.py: uniform in [0, window]
    assert min(draws) == 0 and max(draws) == 800  # both ends reachable
    buckets = [0] * 10
    for d in draws:
        buckets[min(d * 10 // 801, 9)] += 1
    assert all(800 <= n <= 1200 for n in buckets), buckets


def test_fleet_spreads_first_reconnects():
    # SPEC section 4 item 12 in miniature: 100 boards, first delay after a
    # broker restart at a 5 s window; no 1 s bucket gets 30 % of them.
    buckets = {}
    for seed in range(100):
        d = random.Random(seed).randrange(backoff_window(5000, 30000, 0) + 1)
        buckets[d // 1000] = buckets.get(d // 1000, 0) + 1
    assert max(buckets.values()) < 30
