"""A board's network link and the faults on it: `faults.py` (the fault API
every link has: profiles, blackhole, kill, abandon, WiFi loss), `link.py` (a
CPython board's link: DNS, TCP connections to the broker), `pipe.py` (one shaped direction
of one connection), `stream.py` (MicroPython's asyncio Stream over a
connection), `profiles.py` (named link profiles: latency, jitter, loss...).

May import only the base modules (emulator.rng, emulator.validation); knows
nothing of boards, MQTT or the broker.
"""
