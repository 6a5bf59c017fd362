"""What talks to real boards over a serial port: `flash.py` (`esp32emu
flash` through mpremote), `monitor.py` (`esp32emu monitor`), and the
emulated board that looks like one (`serial_board.py`, `esp32emu serial`: a
pty with a MicroPython REPL, `repl.py` its protocol).

May import emulator.run, .board, .broker, .firmware and the base modules;
never emulator.fleet, .testing or the CLI.
"""
