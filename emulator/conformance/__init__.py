"""`esp32emu conformance`: the device-visible behaviours of any MQTT 3.1.1
broker (Last Will, retain, keepalive, takeover, limits), checked with
emulated boards running the real firmware and an independent paho observer:
`checks.py` (one function per behaviour, a `Row` each), `run.py` (boots the
boards, runs the checks concurrently under deadlines, prints the table and
writes the JSON report).

May import emulator.testing (its `Emulator` harness), .run, .observe,
.board, .broker, .firmware and the base modules; never emulator.fleet,
.realboard, .dashboard or the CLI.
"""
