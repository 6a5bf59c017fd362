"""Link profiles: what the network between a board and the broker is like.

A profile is data (a dict of numbers), so scenario files can name one or
write their own; `make_profile` turns a name, a dict or a `Profile` into a
checked, immutable `Profile`. The link (`emulator/net/link.py`) applies it; this
module draws no random numbers and touches no sockets.

Units, all per direction unless said otherwise:

| key | meaning |
|---|---|
| `latency_ms` | one-way delay added to every byte (RTT adds both directions) |
| `jitter_ms` | the one-way delay varies uniformly by ± this much (never below 0, never reordering) |
| `bandwidth_kbps` | serialization rate, kbit/s (0 = unlimited); `up_kbps` / `down_kbps` override it per direction |
| `slice_bytes` | a write or a received chunk may be cut into pieces of 1..slice_bytes that trickle in |
| `slice_rate` | probability that a chunk longer than `slice_bytes` is cut (default 1) |
| `loss_rate` | probability that a piece is lost once and retransmitted after `rto_ms` (TCP: later bytes wait) |
| `rto_ms` | retransmission timeout used for losses |
| `dns_fail_rate` | probability that one name lookup fails with OSError(-202) |
| `connect_refuse_rate` | probability that one connect is refused (RST answers the SYN) |
| `connect_timeout_rate` | probability that one connect's SYN is lost for good (the connect hangs) |
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from functools import cached_property

# The named profiles. Numbers are one-way unless the comment says RTT.
PROFILES: dict[str, dict] = {
    # LAN WiFi next to the AP: nothing added, the fast path (no timers).
    "wifi-good": {},
    # Far from the AP / busy channel: RTT 40-140 ms, a few Mbit/s, some
    # segments split, rare losses recovered by a quick retransmission.
    "wifi-weak": {
        "latency_ms": 45,
        "jitter_ms": 25,
        "bandwidth_kbps": 2000,
        "slice_bytes": 64,
        "slice_rate": 0.2,
        "loss_rate": 0.01,
        "rto_ms": 250,
    },
    # GPRS/EDGE: RTT 300-1000 ms, ~32 kbit/s, small segments, losses cost a
    # second and a half.
    "cellular-2g": {
        "latency_ms": 325,
        "jitter_ms": 175,
        "bandwidth_kbps": 32,
        "slice_bytes": 256,
        "slice_rate": 0.5,
        "loss_rate": 0.01,
        "rto_ms": 1500,
    },
    # NB-IoT (LTE Cat-NB1/2): RTT about 600 ms, about 200 kbit/s.
    "nb-iot": {
        "latency_ms": 300,
        "jitter_ms": 60,
        "bandwidth_kbps": 200,
        "loss_rate": 0.005,
        "rto_ms": 2000,
    },
}


@dataclass(frozen=True)
class Profile:
    name: str = "custom"
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    bandwidth_kbps: float = 0.0
    up_kbps: float | None = None
    down_kbps: float | None = None
    slice_bytes: int = 0
    slice_rate: float = 1.0
    loss_rate: float = 0.0
    rto_ms: float = 1000.0
    dns_fail_rate: float = 0.0
    connect_refuse_rate: float = 0.0
    connect_timeout_rate: float = 0.0

    @cached_property  # asked on every write; a profile never changes (frozen)
    def shapes_bytes(self) -> bool:
        """False when bytes pass untouched (the link then uses no timers)."""
        return bool(
            self.latency_ms
            or self.jitter_ms
            or self.bandwidth_kbps
            or self.up_kbps
            or self.down_kbps
            or self.slice_bytes
            or self.loss_rate
        )

    def kbps(self, direction: str) -> float:
        """Bandwidth of "tx" (board->broker, up) or "rx" (down); 0 = unlimited."""
        own = self.up_kbps if direction == "tx" else self.down_kbps
        return self.bandwidth_kbps if own is None else own

    def one_way_ms(self) -> tuple[float, float]:
        """Bounds of the one-way delay of a lossless byte, serialization aside."""
        return max(0.0, self.latency_ms - self.jitter_ms), self.latency_ms + self.jitter_ms

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


_RATES = ("slice_rate", "loss_rate", "dns_fail_rate", "connect_refuse_rate", "connect_timeout_rate")
_KEYS = {f.name for f in fields(Profile)}


def profile_names() -> list[str]:
    return sorted(PROFILES)


def make_profile(spec: str | Mapping | Profile | None) -> Profile:
    """A checked `Profile` from a name, a dict (optionally `"base": "<name>"`
    to start from a named profile), a `Profile`, or None (`wifi-good`).

    Unknown names and keys, negative numbers and rates outside 0..1 raise
    ValueError naming the culprit."""
    if spec is None:
        spec = "wifi-good"
    if isinstance(spec, Profile):
        return spec
    if isinstance(spec, str):
        if spec not in PROFILES:
            raise ValueError(f"unknown link profile {spec!r} (known: {', '.join(profile_names())})")
        return _build({"name": spec, **PROFILES[spec]})
    if not isinstance(spec, Mapping):
        raise ValueError(f"a link profile is a name or a table, not {type(spec).__name__}")  # noqa: TRY004 - bad input
    spec = dict(spec)
    base = spec.pop("base", None)
    if base is not None:
        start = make_profile(base).as_dict()
        start["name"] = spec.get("name", f"{start['name']}+custom")
        spec = {**start, **spec}
    spec.setdefault("name", "custom")
    return _build(spec)


def _build(spec: dict) -> Profile:
    for key, value in spec.items():
        if key not in _KEYS:
            raise ValueError(f"unknown link profile key {key!r} (known: {', '.join(sorted(_KEYS - {'name'}))})")
        if key == "name":
            if not isinstance(value, str) or not value:
                raise ValueError("link profile 'name' must be a non-empty string")
            continue
        if value is None and key in ("up_kbps", "down_kbps"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"link profile key {key!r} must be a number, got {value!r}")  # noqa: TRY004
        if not math.isfinite(value):
            raise ValueError(f"link profile key {key!r} must be a finite number, got {value!r}")
        if value < 0:
            raise ValueError(f"link profile key {key!r} must be >= 0, got {value!r}")
        if key in _RATES and value > 1:
            raise ValueError(f"link profile key {key!r} is a probability (0..1), got {value!r}")
        if key == "slice_bytes" and int(value) != value:
            raise ValueError(f"link profile key 'slice_bytes' must be a whole number, got {value!r}")
    if "slice_bytes" in spec:
        spec["slice_bytes"] = int(spec["slice_bytes"])
    return Profile(**spec)


def tuned(profile: Profile, **changes) -> Profile:
    """`profile` with some numbers changed (a runtime fault), still checked."""
    spec = {**profile.as_dict(), **changes}
    if not changes.get("name"):
        spec["name"] = profile.name if profile.name.endswith("*") else profile.name + "*"
    return _build(spec)


__all__ = ["PROFILES", "Profile", "make_profile", "profile_names", "tuned"]
