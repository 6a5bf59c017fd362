"""esp32emu: boots the MicroPython firmware in `firmware/` inside emulated ESP32 boards.

Host-side (CPython) package: fakes of the board modules, links with faults,
fleets, and a private Mosquitto broker (`emulator.broker`).
"""

__version__ = "0.1.0"
