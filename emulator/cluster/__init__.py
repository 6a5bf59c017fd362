"""Fleets beyond one machine: `ray_host.py` runs a fleet's `BoardGroup`s as
Ray actors (`esp32emu fleet --ray`), the second host of the groups beside
emulator/fleet/workers.py's local processes: each actor runs the same
worker main over the same messages, and the driver keeps the observer,
the live view and the report (emulator/fleet/run.py). `local.py`: a
several-node Ray cluster on this machine, for tests and benchmarks.

Ray is optional (`pip install esp32emu[ray]`): nothing here imports it at
import time. May import emulator.fleet and everything below it; never the
CLI.
"""
