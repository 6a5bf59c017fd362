"""The link model with the real firmware against a real Mosquitto: a board
comes online over slow links and answers commands; SPEC §4 item 7 (dead
broker: broker->device blackhole) is noticed within 2·KA and backed off."""

from __future__ import annotations

import json
import threading
import time

import pytest

from emulator.net.profiles import make_profile
from tests.boards import KA, PacketTap, is_birth, is_will

pytestmark = pytest.mark.integration


class Console:
    """Timestamped console lines of one board (called on the loop thread)."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append((time.monotonic(), line))

    def wait_for(self, needle: str, timeout: float, after: float = 0.0) -> tuple[float, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                for t, line in self.lines:
                    if t >= after and needle in line:
                        return t, line
            time.sleep(0.02)
        with self._lock:
            tail = "\n".join(line for _, line in self.lines[-15:])
        raise AssertionError(f"no console line with {needle!r} within {timeout} s; last lines:\n{tail}")


@pytest.mark.parametrize("profile", ["nb-iot", "cellular-2g"])
def test_board_comes_online_and_answers_ping_over_a_slow_link(emu, broker, observer, profile):
    dev = f"dev-{profile}"
    obs = observer(broker)
    obs.subscribe(f"devices/{dev}/#")
    board = emu.add_board(
        dev, broker.host, broker.port, seed=1, start=False,
        keepalive=10, interval=30, backoff={"base_ms": 200, "cap_ms": 2000},
    )
    emu.call(board.link.set_profile, profile)
    t0 = time.monotonic()
    emu.call(board.start)
    birth = obs.wait_for(is_birth(dev), 20)
    online_s = birth.t - t0
    lo, _ = make_profile(profile).one_way_ms()
    # SYN/SYN-ACK, CONNECT/CONNACK, then the birth one way: >= 2.5 RTTs of the minimum.
    assert online_s >= 5 * lo / 1000, online_s
    rtts = []
    for i in range(2):
        mark = len(obs.messages)
        t_cmd = time.monotonic()
        obs.publish(f"devices/{dev}/cmd", json.dumps({"id": f"p{i}", "op": "ping"}))
        res = obs.wait_for(lambda m, i=i: m.topic.endswith("cmd/result") and m.json()["id"] == f"p{i}", 15, start=mark)
        assert res.json()["ok"] is True and "pong" in res.json()["result"]
        rtts.append(res.t - t_cmd)
    # broker->board then board->broker: at least the minimum one-way delay twice.
    assert min(rtts) >= 2 * lo / 1000 - 0.01, rtts
    assert any(m.startswith(f"profile {profile}") for _, k, m in board.events if k == "link")
    print(f"{profile}: online after {online_s:.2f} s, ping RTTs {[round(r, 3) for r in rtts]}")


def test_dead_broker_is_noticed_within_two_keepalives_and_backed_off(emu, broker, observer):
    """SPEC §4 item 7: broker->device blackhole (the board's bytes still
    arrive, nothing comes back) -> the device notices within 2·KA, closes,
    and starts backoff; after the heal it is back online."""
    dev = "dev-dead-broker"
    obs = observer(broker)
    obs.subscribe(f"devices/{dev}/status")
    console = Console()
    board = emu.add_board(
        dev, broker.host, broker.port, console=console, start=False,
        keepalive=KA, interval=1, backoff={"base_ms": 200, "cap_ms": 2000},
    )
    tap = PacketTap(board)
    emu.call(board.start)
    obs.wait_for(is_birth(dev), 10)
    time.sleep(1.0)
    mark = len(obs.messages)
    t_cut = time.monotonic()
    emu.call(board.link.blackhole, True, False)  # rx only: half-open
    t_lost, line = console.wait_for("mqtt: link lost after", 2 * KA + 1, after=t_cut)
    noticed = t_lost - t_cut
    assert noticed <= 2 * KA, f"noticed after {noticed:.2f} s: {line}"
    assert "PINGRESP" in line, line
    # The board kept sending while it waited (one-way cut): PINGREQ got out.
    assert any(t > t_cut and d[:1] == b"\xc0" for t, d in tap.sent())
    t_retry, retry = console.wait_for("; retry ", 2, after=t_cut)
    assert t_retry >= t_lost
    # Its FIN reached the broker (the board->broker path is up): Will fires.
    obs.wait_for(is_will(dev), 3, start=mark)
    emu.call(board.link.heal)
    obs.wait_for(is_birth(dev, boot=1), 15, start=mark)
    log = [m for _, k, m in board.events if k == "link"]
    assert "blackhole rx=True tx=False" in log
    print(f"dead broker noticed after {noticed:.2f} s (KA={KA}): {line!r}; then {retry!r}")
