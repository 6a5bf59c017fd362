"""Watching devices through the broker with paho-mqtt: `connection.py`
(the one paho connection every observer here uses), `counting.py` (the
fleet's FleetObserver: per-device presence, births, Wills, seq loss,
command RTT, as counts), `recording.py` (the plugin's ObserverClient: every
message kept for a test to wait on), `watch.py` (`esp32emu watch` and the
live table the fleet shows).

May import emulator.broker and emulator.validation; never boards (it sees
devices only as a broker client would), emulator.run, .fleet or the CLI.
"""
