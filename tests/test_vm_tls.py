"""Mutual TLS on a board on the real interpreter (SPEC §4 item 18): the
unix port's mbedTLS speaks to Mosquitto through the link proxy, which only
moves bytes; the board's certificate opens its own topics."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.esp32emu(keepalive=3, interval=1)]


def test_mutual_tls_through_the_proxy(mosquitto_tls, boards, observer_factory):
    obs = observer_factory(mosquitto_tls)
    board = boards(1, broker=mosquitto_tls, vm="micropython")[0]
    assert board.config["broker"]["tls"] is True
    board.boot()
    birth = obs.expect(board.topic("status"), {"online": True}, timeout=30).json()
    assert birth["boot"] == 1
    obs.expect(board.topic("telemetry"), {"seq": 0}, timeout=10)
