"""Thousands of boards: `run.py` (`esp32emu fleet`: boot, observe, report),
`workers.py` (K worker processes of boards on one loop each), `gcpolicy.py`
(the garbage collection that keeps a worker's loop lag low).

May import everything below it (emulator.run, .observe, .board, .broker,
.firmware, .net, the base modules); never emulator.testing, .realboard or
the CLI.
"""
