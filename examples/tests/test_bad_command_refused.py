"""My command handler refuses bad input and keeps running.

A backend (or an attacker) sends commands that are out of range, not JSON
at all, or unknown. Each must get an `ok: false` result that says what is
wrong, and the device must keep answering and publishing.

Run: pytest examples/tests            (the esp32emu plugin provides the fixtures)
"""

import pytest


@pytest.mark.esp32emu(keepalive=2)
def test_bad_commands_are_refused_and_the_device_keeps_going(board, observer):
    board.boot()
    observer.expect(board.topic("status"), {"online": True}, timeout=10)
    cmd, result = board.topic("cmd"), board.topic("cmd/result")

    # Out of range: an interval of 0 s would make the device spin.
    observer.publish(cmd, {"id": "bad-range", "op": "set_interval", "args": {"seconds": 0}})
    refused = observer.expect(result, {"id": "bad-range", "ok": False}, timeout=5)
    assert "seconds" in refused.json()["error"]

    # Not JSON at all: no id to echo, so the result carries id null.
    observer.publish(cmd, "{this is not json")
    refused = observer.expect(result, {"id": None, "ok": False}, timeout=5)
    assert "JSON" in refused.json()["error"]

    # An op the device does not know.
    observer.publish(cmd, {"id": "bad-op", "op": "self_destruct"})
    observer.expect(result, {"id": "bad-op", "ok": False}, timeout=5)

    # Still alive: it answers a good command and keeps publishing telemetry.
    observer.publish(cmd, {"id": "still-there", "op": "ping"})
    observer.expect(result, {"id": "still-there", "ok": True}, timeout=5)
    observer.expect(board.topic("telemetry"), timeout=5)
