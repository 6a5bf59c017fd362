# backoff.py - exponential backoff with full jitter and a cap, for reconnects.
#
# Pure logic: no I/O, no clock, no randomness of its own.  The caller injects
# `rand_below(n)` (an int in [0, n)); the firmware builds one on
# random.getrandbits, tests pass random.Random(seed).randrange.
# Must not import anything but `micropython`, and keeps no module-level state
# (thousands of emulated boards share one process).
#
# Full jitter (AWS architecture blog, "Exponential Backoff And Jitter"):
#     window(n) = min(cap, base * 2**n)
#     delay(n)  = uniform integer in [0, window(n)]
# so a fleet that lost its broker at the same instant spreads its reconnects
# over the whole window instead of stampeding in lock-step.

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# Exponent clamp: 2**30 ms is ~12 days, beyond any sensible cap, and keeps
# base << exp a small int on MicroPython.
_MAX_EXP = const(30)


def _is_int(v):
    # bool is an int subclass in CPython: True must not pass as 1.
    return isinstance(v, int) and not isinstance(v, bool)


class Backoff:
    """Exponential backoff with full jitter.

    b = Backoff(500, 30000, rand_below)
    delay = b.next_delay_ms()   # before each reconnect attempt
    b.reset()                   # after a successful connection
    """

    def __init__(self, base_ms, cap_ms, rand_below):
        if not _is_int(base_ms) or base_ms < 1:
            raise ValueError("backoff base_ms must be an integer >= 1")
        if not _is_int(cap_ms) or cap_ms < base_ms:
            raise ValueError("backoff cap_ms must be an integer >= base_ms")
        self.base_ms = base_ms
        self.cap_ms = cap_ms
        self._rand_below = rand_below
        # Smallest exponent whose window reaches the cap: larger attempts
        # need no bigger numbers.
        e = 0
        while e < _MAX_EXP and (base_ms << e) < cap_ms:
            e += 1
        self._max_exp = e
        self.attempt = 0

    def window_ms(self, attempt=None):
        """Upper bound (inclusive) of the delay for `attempt` (default: the
        current one): min(cap_ms, base_ms * 2**attempt)."""
        if attempt is None:
            attempt = self.attempt
        if attempt < 0:
            attempt = 0
        if attempt > self._max_exp:
            attempt = self._max_exp
        w = self.base_ms << attempt
        return w if w < self.cap_ms else self.cap_ms

    def next_delay_ms(self):
        """Delay before the next attempt, uniform in [0, window]; counts the
        attempt."""
        w = self.window_ms(self.attempt)
        self.attempt += 1
        return self._rand_below(w + 1)

    def reset(self, attempt=0):
        """Start over (after a successful connect), or at a given attempt."""
        self.attempt = attempt if attempt > 0 else 0
