"""Running emulated boards for a command: `commands.py` (`esp32emu run`,
one board with its console on stdout, and `esp32emu broker`), `scenario.py`
(TOML timelines of faults aimed at boards and the broker, used by `run`,
`fleet` and the plugin), `stopping.py` (Ctrl-C, --duration and a graceful
shutdown).

May import emulator.board, .net, .firmware, .broker and the base modules;
never emulator.fleet, .testing, .realboard or the CLI.
"""
