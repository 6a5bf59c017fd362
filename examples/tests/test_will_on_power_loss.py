"""My device's Last Will fires when it loses power.

Power loss sends nothing: no DISCONNECT, no FIN. The broker notices only
when the keepalive runs out, then publishes the Will the device set when it
connected: `{"online": false}` on its status topic, retained.

Run: pytest examples/tests            (the esp32emu plugin provides the fixtures)
"""

import pytest


@pytest.mark.esp32emu(keepalive=2)
def test_will_fires_on_power_loss(board, mosquitto, observer, observer_factory):
    board.boot()
    board.console.expect("mqtt: online", timeout=10)
    birth = observer.expect(board.topic("status"), {"online": True}, timeout=10)
    assert birth.retain is False  # we were subscribed before it came: a live message

    board.power_loss()  # stays off until board.power_on()

    # Mosquitto gives up after 1.5 x keepalive and checks about every 5 s.
    will = observer.expect(
        board.topic("status"),
        lambda m: m.json() == {"online": False},
        timeout=board.will_deadline + 2,
    )
    assert will.t - birth.t >= 1.5 * board.keepalive

    # The Will is retained: a client that subscribes later learns it too.
    late = observer_factory(mosquitto, subscribe=board.topic("status"))
    late.expect(board.topic("status"), lambda m: m.retain and m.json() == {"online": False}, timeout=5)
