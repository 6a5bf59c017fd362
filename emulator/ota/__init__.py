"""Over-the-air updates, the host side (issue 18): `release.py` (`esp32emu
release build`: the signed manifest, the files, the key checks), `serve.py`
(`esp32emu release serve`: HTTP(S) with Range, fault hooks for tests and
scenarios), `rollout.py` (`esp32emu rollout`: waves of the `ota` command over
the broker, the live table and the JSON report).

May import emulator.observe (the one paho connection), emulator.board (the
VM backend's mpy-cross cache, for `--mpy`), emulator.firmware, emulator.broker
and the base modules; never emulator.run, .fleet, .dashboard or the CLI.
"""
