"""Emulated boards for tests: `plugin.py` (the pytest plugin, entry point
pytest11 `esp32emu`: fixtures mosquitto, board, boards, observer),
`handles.py` (what a test gets: BoardHandle, its console, link and flash),
`harness.py` (`Emulator`: boards on an event loop in a background thread,
driven from synchronous code).

May import emulator.run, .observe, .board, .broker, .firmware and the base
modules; never emulator.fleet, .realboard or the CLI. Nothing is imported
here: pytest loads the plugin module itself.
"""
