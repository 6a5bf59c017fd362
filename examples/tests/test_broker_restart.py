"""My device comes back by itself after the broker restarts.

The broker goes away (a deploy, a crash) and comes back on the same port.
The device must notice, back off, reconnect, subscribe to its commands
again and republish its birth, without rebooting.

Run: pytest examples/tests            (the esp32emu plugin provides the fixtures)
"""

import pytest


@pytest.mark.esp32emu(keepalive=2)
def test_device_recovers_after_broker_restart(board, mosquitto, observer):
    board.config["backoff"] = {"base_ms": 200, "cap_ms": 2000}  # edit config.json before boot
    board.boot()
    first = observer.expect(board.topic("status"), {"online": True}, timeout=10)

    mosquitto.restart()  # SIGTERM, then start again on the same port

    # A new birth from the same boot: it reconnected, it did not reboot.
    again = observer.expect(board.topic("status"), {"online": True, "boot": first.json()["boot"]}, timeout=15)
    assert again.json()["reset"] == first.json()["reset"]

    # It listens to commands again (resubscribed after the reconnect)...
    observer.publish(board.topic("cmd"), {"id": "after-restart", "op": "ping"})
    observer.expect(board.topic("cmd/result"), {"id": "after-restart", "ok": True}, timeout=5)
    # ...and telemetry flows.
    observer.expect(board.topic("telemetry"), lambda m: "seq" in m.json(), timeout=5)
