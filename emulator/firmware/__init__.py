"""The firmware as the host handles it (the code itself is the repository's
`firmware/`): `folder.py` (which folder a command boots, the bundled copy,
the can-it-boot check), `config.py` (the config.json the emulator writes
for a board), `scaffold.py` (`esp32emu new`: a firmware project to start from),
`deploy.py` (the files as they go onto a MicroPython interpreter: flash,
the boards on the real interpreter; private names get built-in names).

May import only emulator.validation; never a board, the broker or the CLI.
"""
