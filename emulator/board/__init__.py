"""One emulated board: `board.py` (the CPython board: flash, module table,
buttons, power, resets), `scripts.py` (boot.py/main.py in a greenlet, the
main task, the REPL's halt), `loader.py` (firmware code
compiled once, executed per board), `fakes/` (machine, network, esp32,
time, asyncio... bound to one board), `clock.py`, `sensors.py` and
`environment.py` (the sensor chips and the world they measure), `vm/` (the
second backend: a board on the real MicroPython interpreter) and
`backends.py` (what each backend lets firmware import).

May import emulator.net, emulator.firmware and the base modules; never
emulator.broker, .observe, .run, .fleet, .testing, .realboard or the CLI.
"""
