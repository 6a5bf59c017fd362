"""A small seeded random generator with `random.Random`'s API.

CPython's Mersenne Twister keeps 2.5 KB of state per generator, and a board
owns several (its own, its environment's parts, its link's pipes): at 10,000
boards that alone is hundreds of megabytes. SplitMix64 keeps 8 bytes, is
reproducible from any seed (ints, strings, bytes), and passes BigCrush,
which is more than fault injection and sensor noise need.
"""

from __future__ import annotations

import hashlib
import os
import random as _random

_MASK64 = (1 << 64) - 1


class SmallRandom:
    __slots__ = ("_state", "gauss_next")

    def __init__(self, seed: object = None):
        self.seed(seed)

    def seed(self, a: object = None) -> None:
        if a is None:
            a = os.urandom(8)
        if isinstance(a, str):
            a = a.encode()
        if isinstance(a, (bytes, bytearray)):
            a = int.from_bytes(hashlib.sha256(a).digest()[:8], "big")
        if not isinstance(a, int):
            a = hash(a)
        self._state = (a ^ (a >> 64)) & _MASK64
        self.gauss_next = None

    def _next64(self) -> int:
        self._state = z = (self._state + 0x9E3779B97F4A7C15) & _MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        return z ^ (z >> 31)

    def random(self) -> float:
        return (self._next64() >> 11) * (1.0 / 9007199254740992.0)

    def getrandbits(self, k: int) -> int:
        if 0 < k <= 64:  # one word (the sensors' noise takes 60 bits a time): _next64 inline
            self._state = z = (self._state + 0x9E3779B97F4A7C15) & _MASK64
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            return (z ^ (z >> 31)) >> (64 - k)
        if k < 0:
            raise ValueError("number of bits must be non-negative")
        out, have = 0, 0
        while have < k:
            out = (out << 64) | self._next64()
            have += 64
        return out >> (have - k)

    def getstate(self) -> tuple:
        return (self._state, self.gauss_next)

    def setstate(self, state: tuple) -> None:
        self._state, self.gauss_next = state

    # The rest of the API is random.Random's own pure-Python code, which only
    # needs random() and getrandbits().
    _randbelow = _random.Random._randbelow_with_getrandbits
    randrange = _random.Random.randrange
    randint = _random.Random.randint
    choice = _random.Random.choice
    choices = _random.Random.choices
    sample = _random.Random.sample
    shuffle = _random.Random.shuffle
    uniform = _random.Random.uniform
    triangular = _random.Random.triangular
    gauss = _random.Random.gauss
    normalvariate = _random.Random.normalvariate
    expovariate = _random.Random.expovariate
    randbytes = _random.Random.randbytes
