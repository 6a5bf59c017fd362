"""esp32emu: boots the MicroPython firmware in `firmware/` inside emulated ESP32 boards.

Host-side (CPython) package, laid out by job (docs/architecture.md has the
map and the dependency direction; tests/test_layering.py keeps it true):
`board/` one emulated board (and `board/vm/`, one on the real interpreter),
`net/` its link, `firmware/` the firmware folder, `broker/` a private
Mosquitto and the PKI, `observe/` paho observers, `run/` one board from the
CLI and scenarios, `fleet/` thousands of boards, `realboard/` real boards
and the pty board, `testing/` the pytest plugin; `cli.py` on top.
"""

__version__ = "0.1.0"
