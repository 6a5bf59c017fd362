"""SPEC §4 items 1-6 and 9, and the telemetry cadence: one emulated board running the real firmware
against a real Mosquitto, watched by an independent paho-mqtt observer."""

from __future__ import annotations

import itertools
import json
import re
import time

import pytest

from tests.boards import D, KA, PacketTap, both_backends, is_birth, is_will

pytestmark = pytest.mark.integration


def start_board(emu, broker, device_id, **cfg):
    cfg.setdefault("keepalive", KA)
    cfg.setdefault("interval", 1)
    cfg.setdefault("backoff", {"base_ms": 200, "cap_ms": 2000})
    return emu.add_board(device_id, broker.host, broker.port, **cfg)


@both_backends
def test_connect_carries_will_keepalive_and_stable_client_id(emu, broker, observer):
    """Item 1: Will flag, Will QoS 1, Will retain, KA and the device id in CONNECT."""
    obs = observer(broker)
    obs.subscribe("devices/#")
    board = emu.add_board("dev-c1", broker.host, broker.port, keepalive=KA, interval=60, start=False)
    tap = PacketTap(board)
    emu.call(board.start)
    obs.wait_for(is_birth("dev-c1"), 10)
    connect = tap.sent()[0][1]
    # Parsed by hand, independent of the firmware's codec.
    assert connect[0] == 0x10
    i = 1
    while connect[i] & 0x80:
        i += 1
    i += 1
    assert connect[i : i + 6] == b"\x00\x04MQTT"
    assert connect[i + 6] == 4  # protocol level 3.1.1
    flags = connect[i + 7]
    assert flags & 0x04, "Will flag"
    assert (flags >> 3) & 0x03 == 1, "Will QoS 1"
    assert flags & 0x20, "Will retain"
    assert flags & 0x02, "clean session"
    assert int.from_bytes(connect[i + 8 : i + 10], "big") == KA
    n = int.from_bytes(connect[i + 10 : i + 12], "big")
    assert connect[i + 12 : i + 12 + n] == b"dev-c1"
    # Mosquitto's own view of the connection.
    assert re.search(r"as dev-c1 \(p2, c1, k2\)", broker.log_text())
    # Stable across a reboot: the second CONNECT names the same client id.
    emu.call(board.hard_reset)
    obs.wait_for(is_birth("dev-c1", boot=2), 15)
    assert len(re.findall(r"as dev-c1 \(p2, c1, k2\)", broker.log_text())) == 2


@both_backends
def test_birth_is_retained_for_new_subscribers(emu, broker, observer):
    """Item 2: subscribed-before sees RETAIN=0, subscribed-after sees RETAIN=1."""
    early = observer(broker)
    early.subscribe("devices/dev-b1/status")
    start_board(emu, broker, "dev-b1", interval=60)
    live = early.wait_for(is_birth("dev-b1"), 10)
    assert live.retain is False
    body = live.json()
    assert set(body) == {"online", "fw", "boot", "reset", "ip"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", body["fw"])
    assert body["boot"] == 1 and body["reset"] == "power_on"
    assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", body["ip"])
    late = observer(broker)
    late.subscribe("devices/dev-b1/status")
    kept = late.wait_for(is_birth("dev-b1"), 5)
    assert kept.retain is True and kept.json() == body


@both_backends
def test_clean_shutdown_sends_planned_offline_and_no_will(emu, broker, observer):
    """Item 3: DISCONNECT -> no Will within D; retained status is the planned offline."""
    obs = observer(broker)
    obs.subscribe("devices/dev-s1/status")
    board = start_board(emu, broker, "dev-s1")
    obs.wait_for(is_birth("dev-s1"), 10)
    emu.shutdown_board(board)
    mark = len(obs.messages)
    planned = obs.wait_for(lambda m: m.topic.endswith("/status") and not m.json()["online"], 5)
    assert planned.json() == {"online": False, "reason": "shutdown"}
    assert "Client dev-s1 disconnected." in broker.log_text()
    with pytest.raises(AssertionError, match="no matching message"):
        obs.wait_for(is_will("dev-s1"), D, start=mark)
    late = observer(broker)
    late.subscribe("devices/dev-s1/status")
    kept = late.wait_topic("devices/dev-s1/status", 5)
    assert kept.retain and kept.json() == {"online": False, "reason": "shutdown"}


@both_backends
@pytest.mark.parametrize("profile", ["wifi-good", "wifi-weak"])
@pytest.mark.parametrize("rst", [True, False], ids=["RST", "FIN"])
def test_killed_socket_fires_will_within_one_second(emu, broker, observer, rst, profile):
    """Item 4: socket killed -> Will within 1 s; item 9: the board comes back."""
    obs = observer(broker)
    obs.subscribe("devices/dev-k1/#")
    board = start_board(emu, broker, "dev-k1", start=False)
    emu.call(board.link.set_profile, profile)
    emu.call(board.start)
    obs.wait_for(is_birth("dev-k1"), 10)
    mark = len(obs.messages)
    t_kill = time.monotonic()
    assert emu.call(board.link.kill_connections, rst) == 1
    will = obs.wait_for(is_will("dev-k1"), 5, start=mark)
    assert will.t - t_kill <= 1.0
    # Item 9: a new birth (same boot) after the reconnect, and commands still work.
    obs.wait_for(is_birth("dev-k1", boot=1), 10, start=mark)
    obs.publish("devices/dev-k1/cmd", json.dumps({"id": "after-kill", "op": "ping"}))
    res = obs.wait_for(lambda m: m.topic.endswith("cmd/result"), 5)
    assert res.json()["id"] == "after-kill" and res.json()["ok"] is True


@both_backends
@pytest.mark.parametrize("profile", ["wifi-good", "nb-iot"])
def test_power_loss_will_between_one_and_a_half_keepalive_and_deadline(emu, broker, observer, profile):
    """Item 5: no FIN, no bytes -> Will no earlier than 1.5*KA, no later than D,
    on a fast link and on a slow one."""
    obs = observer(broker)
    obs.subscribe("devices/dev-p1/status")
    board = start_board(emu, broker, "dev-p1", start=False)
    emu.call(board.link.set_profile, profile)
    emu.call(board.start)
    tap = PacketTap(board)
    obs.wait_for(is_birth("dev-p1"), 10)
    mark = len(obs.messages)
    emu.call(board.power_cycle, 60.0)  # stays off for the whole test
    will = obs.wait_for(is_will("dev-p1"), D + 3, start=mark)
    silent = will.t - tap.last_sent_at()
    assert 1.5 * KA <= silent <= D, f"Will after {silent:.2f} s of silence"


def test_idle_link_stays_up_with_pings(emu, broker, observer):
    """Item 6: with no telemetry, PINGREQ at least every KA and no timeout over 10*KA."""
    obs = observer(broker)
    obs.subscribe("devices/dev-i1/status")
    board = start_board(emu, broker, "dev-i1", interval=3600)
    tap = PacketTap(board)
    obs.wait_for(is_birth("dev-i1"), 10)
    mark = len(obs.messages)
    with pytest.raises(AssertionError, match="no matching message"):
        obs.wait_for(lambda m: True, 10 * KA, start=mark)  # nothing at all: no Will, no rebirth
    sent = tap.sent()
    pings = [t for t, data in sent if data[:2] == b"\xc0\x00"]
    assert len(pings) >= 10 * KA / KA - 1
    times = [t for t, _ in sent]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) <= KA, f"longest silence {max(gaps):.2f} s"
    assert emu.call(lambda: len(board.link.connections)) == 1


def test_telemetry_keeps_its_cadence_after_a_busy_moment(emu, broker, observer):
    """Telemetry runs on a fixed-rate schedule: a wake that comes late (here
    the whole emulator loop stalls for 1.5 s) delays that one message, not
    every later one. (A fleet's boards then keep the spread they booted with
    instead of bunching up behind each busy moment of the shared loop.)"""
    obs = observer(broker)
    obs.subscribe("devices/dev-r1/telemetry")
    start_board(emu, broker, "dev-r1", interval=1)

    def seq_at_least(n):
        return lambda m: m.json()["seq"] >= n

    first = obs.wait_for(seq_at_least(1), 10)
    emu.call(time.sleep, 1.5, timeout=5)  # the loop thread is busy: the next message is due meanwhile
    last = obs.wait_for(seq_at_least(first.json()["seq"] + 5), 10)
    got = {m.json()["seq"]: m.t for m in obs.messages if m.topic.endswith("/telemetry")}
    s0 = first.json()["seq"]
    residual = {s: got[s] - got[s0] - (s - s0) for s in range(s0, last.json()["seq"] + 1)}
    assert max(residual.values()) >= 0.3, f"the stall did not delay a message: {residual}"
    late = [s for s, r in residual.items() if r >= 0.3]
    after = {s: r for s, r in residual.items() if s > late[0] + 1}
    assert after and max(abs(r) for r in after.values()) < 0.2, f"cadence lost after the stall: {residual}"
