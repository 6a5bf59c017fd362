# The reconnect backoff (mqtt_session.backoff_window) under the MicroPython
# VM (run by tests/micropython/run.mjs). Plain asserts, no pytest.

import sys

try:
    import mqtt_session  # noqa: F401 - probes whether firmware/ is on sys.path
except ImportError:  # CPython: firmware/ is not on sys.path yet
    sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/firmware")

from mqtt_session import backoff_window


def test_windows_double_until_cap():
    got = [backoff_window(500, 30000, n) for n in range(9)]
    assert got == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000], got


def test_huge_attempts_stay_small_ints():
    # no big ints: the doubling stops at the cap whatever the attempt
    for attempt in (31, 64, 1000, 10 ** 6):
        assert backoff_window(1, 3600000, attempt) == 3600000


def test_cap_equal_to_base_and_negative_attempt():
    assert backoff_window(250, 250, 7) == 250
    assert backoff_window(500, 30000, -3) == 500
