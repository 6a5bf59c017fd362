"""The firmware's MQTT transport against brokers that misbehave, played by
a small scripted MQTT server on 127.0.0.1: one that refuses the command
subscription (SUBACK 0x80), one that never answers the SUBSCRIBE, one that
declares a 256 MB PUBLISH and drips it. One emulated board each, running
the real firmware; a real Mosquitto for the control case."""

from __future__ import annotations

import json
import time

import pytest

from tests.boards import KA, ConsoleWatch, PacketTap
from tests.scripted_broker import (
    PINGRESP, ScriptedServer, drip_huge_publish, read_packet, serve_until_subscribe, suback,
)

pytestmark = pytest.mark.integration

@pytest.fixture
def scripted():
    made: list[ScriptedServer] = []

    def make(script) -> ScriptedServer:
        server = ScriptedServer(script)
        made.append(server)
        return server

    yield make
    for s in made:
        s.close()


# -- D2: the command subscription refused or unanswered ---------------------------------


def test_refused_command_subscription_is_logged_closed_and_retried_with_backoff(emu, scripted):
    """A broker that answers the command SUBSCRIBE with 0x80 (what an ACL
    refusal looks like on brokers that report it; Mosquitto 2.0.11 grants
    the subscription and filters at delivery instead): the board says so on
    its console, closes without a birth, and retries with backoff."""
    publishes: list[bytes] = []

    def script(conn, server):
        pid = serve_until_subscribe(conn)
        conn.sendall(suback(pid, 0x80))
        while True:  # until the board closes: anything but a PINGREQ is recorded
            first, body = read_packet(conn)
            if first >> 4 == 12:
                conn.sendall(PINGRESP)
            elif first >> 4 == 3:
                with server.cond:
                    publishes.append(body)

    server = scripted(script)
    console = ConsoleWatch()
    emu.add_board("dev-sub1", "127.0.0.1", server.port, keepalive=KA, interval=1,
                  backoff={"base_ms": 200, "cap_ms": 1600}, console=console)
    refused = console.wait_count("broker refused the command subscription (SUBACK 0x80)", 4, 30)
    assert refused[0] == "mqtt: broker refused the command subscription (SUBACK 0x80)"
    retries = console.wait_count("command subscription refused; retry", 4, 10)
    server.wait(lambda: len(server.closed) >= 4, 10, "four closed connections")
    # The board closed each connection right after the SUBACK (no keepalive
    # expiry, no waiting), never sent a birth or telemetry, and backed off.
    assert not publishes, publishes[:3]
    opened = server.opened
    assert len(opened) <= 12, "hot loop: too many connections"
    gaps = [b - a for a, b in zip(opened, opened[1:4])]
    assert all(g >= 0.05 for g in gaps) and sum(gaps) > 0.3, f"retries too fast: {gaps}"
    delays = [int(line.rsplit(" in ", 1)[1].split()[0]) for line in retries]
    assert max(delays[1:]) <= 1600, delays
    assert not [x for x in console.lines if "mqtt: online" in x]


def test_suback_that_never_comes_times_out_and_retries(emu, scripted):
    """A broker that takes the SUBSCRIBE and never answers: the board gives
    up after the SUBACK deadline (10 s), closes, and connects again."""
    def script(conn, server):
        serve_until_subscribe(conn)
        server.mark(f"subscribe{len(server.opened)}")
        while True:  # keep answering pings: only the SUBACK is missing
            first, _ = read_packet(conn)
            if first >> 4 == 12:
                conn.sendall(PINGRESP)

    server = scripted(script)
    console = ConsoleWatch()
    emu.add_board("dev-sub2", "127.0.0.1", server.port, keepalive=KA, interval=60,
                  backoff={"base_ms": 200, "cap_ms": 1000}, console=console)
    server.wait(lambda: "subscribe1" in server.marks, 15, "SUBSCRIBE")
    server.wait(lambda: len(server.closed) >= 1, 20, "close after the SUBACK deadline")
    waited = server.closed[0] - server.marks["subscribe1"]
    assert 9.5 <= waited <= 14, f"closed {waited:.1f} s after the SUBSCRIBE"
    line = console.wait_count("no SUBACK within 10000 ms", 1, 5)[0]
    assert "retry" in line
    server.wait(lambda: len(server.opened) >= 2, 10, "second connection")


# -- the started-packet deadline ----------------------------------------------------------


def test_dripped_huge_publish_ends_the_link_after_the_packet_deadline(emu, scripted):
    """A broker that declares a 256 MB PUBLISH and drips it a byte every
    200 ms (so the link never looks idle): the board drops the link one
    keepalive period after the packet's first byte and connects again."""
    def script(conn, server):
        pid = serve_until_subscribe(conn)
        conn.sendall(suback(pid, 1))
        if len(server.opened) > 1:
            while True:  # the second connection behaves: answer pings
                first, _ = read_packet(conn)
                if first >> 4 == 12:
                    conn.sendall(PINGRESP)
        first, body = read_packet(conn)  # the birth, QoS 1
        assert first >> 4 == 3
        topic_len = int.from_bytes(body[:2], "big")
        conn.sendall(b"\x40\x02" + body[2 + topic_len:4 + topic_len])  # PUBACK
        drip_huge_publish(conn, server, b"devices/dev-drip/cmd")

    server = scripted(script)
    console = ConsoleWatch()
    emu.add_board("dev-drip", "127.0.0.1", server.port, keepalive=KA, interval=60,
                  backoff={"base_ms": 200, "cap_ms": 1000}, console=console)
    server.wait(lambda: "first_byte" in server.marks, 15, "first byte of the dripped packet")
    server.wait(lambda: len(server.closed) >= 1, 10, "close of the dripping link")
    lived = server.closed[0] - server.marks["first_byte"]
    assert KA - 0.1 <= lived <= KA + 1.5, f"link closed {lived:.2f} s after the packet started"
    line = console.wait_count("packet not completed within %d ms" % (KA * 1000), 1, 5)[0]
    assert line.startswith("mqtt: link lost after")
    server.wait(lambda: len(server.opened) >= 2, 10, "reconnect")


def test_granted_subscription_goes_online_and_takes_commands(emu, broker, observer):
    """Control: with the subscription granted the board publishes its birth
    and answers a command, and logs no refusal."""
    obs = observer(broker)
    obs.subscribe("devices/#")
    console = ConsoleWatch()
    emu.add_board("dev-sub3", broker.host, broker.port, keepalive=KA, interval=60, console=console)
    obs.wait_for(lambda m: m.topic == "devices/dev-sub3/status" and m.json().get("online"), 10)
    obs.publish("devices/dev-sub3/cmd", json.dumps({"id": "c1", "op": "ping"}))
    res = obs.wait_for(lambda m: m.topic == "devices/dev-sub3/cmd/result", 5)
    assert res.json()["ok"] is True
    assert not [x for x in console.lines if "refused the command subscription" in x]


# -- reading: one reader, never cancelled by a timer --------------------------------------


def test_stream_reads_are_never_cancelled_by_the_timers(emu, broker, observer, monkeypatch):
    """micropython/micropython#17351: a read cancelled by a timeout can lose
    the bytes arriving at that moment. Over several keepalive cycles (the
    timer loop waking for each PINGREQ) and a burst of commands, no stream
    read of the board is cancelled while the link is up: one reader task per
    connection, reading into one buffer."""
    from emulator.net.stream import Stream

    calls = {"reads": 0, "cancelled": 0, "buffers": set()}
    real_readinto, real_read = Stream.readinto, Stream.read

    async def readinto(self, buf):
        calls["reads"] += 1
        calls["buffers"].add(id(buf.obj) if isinstance(buf, memoryview) else id(buf))
        try:
            return await real_readinto(self, buf)
        except BaseException as e:
            if type(e).__name__ == "CancelledError":
                calls["cancelled"] += 1
            raise

    async def read(self, n=-1):
        calls["reads"] += 1
        try:
            return await real_read(self, n)
        except BaseException as e:
            if type(e).__name__ == "CancelledError":
                calls["cancelled"] += 1
            raise

    monkeypatch.setattr(Stream, "readinto", readinto)
    monkeypatch.setattr(Stream, "read", read)
    obs = observer(broker)
    obs.subscribe("devices/dev-rd1/#")
    board = emu.add_board("dev-rd1", broker.host, broker.port, keepalive=KA, interval=60, start=False)
    tap = PacketTap(board)
    emu.call(board.start)
    obs.wait_for(lambda m: m.topic == "devices/dev-rd1/status" and m.json().get("online"), 10)
    for i in range(30):
        obs.client.publish("devices/dev-rd1/cmd", json.dumps({"id": f"r{i}", "op": "ping"}), qos=1)
    results = set()
    deadline = time.monotonic() + 10
    while len(results) < 30:
        m = obs.wait_for(lambda m: m.topic == "devices/dev-rd1/cmd/result" and m.json()["id"] not in results,
                         max(0.1, deadline - time.monotonic()))
        results.add(m.json()["id"])
    # Three PINGREQs: the timer loop woke and slept several times meanwhile.
    t0 = tap.wait_sent(lambda t, d: d[:1] == b"\xc0", 10)
    tap.wait_sent(lambda t, d: d[:1] == b"\xc0" and t > t0 + 2 * 0.75 * KA - 0.3, 10)
    assert calls["reads"] > 3
    assert calls["cancelled"] == 0, calls
    assert len(calls["buffers"]) == 1, "a new read buffer was used"
