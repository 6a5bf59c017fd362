"""mqtt_session under CPython: feed bytes and ticks, assert events and the bytes
the session wants to send. The broker side is played with tests/micropython/mqtt_peer.py."""

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "micropython"))  # mqtt_peer: the broker's side

from mqtt_peer import (  # noqa: E402
    Connack, Connect, Decoder, Disconnect, Pingreq, Pingresp, ProtocolError, Puback,
    Publish, Suback, Subscribe, Unsuback, Unsubscribe, decode, encode,
)
import mqtt_session as ms  # noqa: E402
from mqtt_session import CONNECTED, CONNECTING, DISCONNECTED, Session  # noqa: E402
from packets import (  # noqa: E402 - the session's event tuples, by name
    LINK_DEAD, MESSAGE, REFUSED, Connected, LinkDead, Message, PublishAcked, Subscribed, receive,
)

WRAP = 1 << 30
KA = 10  # keepalive seconds used by most tests
KA_MS = KA * 1000


def ticks(t):
    return t % WRAP


def sent(s):
    """Decode everything the session queued since the last call."""
    d = Decoder(1 << 20)
    d.feed(s.data_to_send())
    out = []
    while (p := d.next_packet()) is not None:
        out.append(p)
    return out


def events(s):
    out = []
    while (e := s.next_event()) is not None:
        out.append(e)
    return out


def connected(now=0, **kw):
    kw.setdefault("keepalive_s", KA)
    s = Session("dev-1", **kw)
    s.start(now)
    sent(s)
    receive(s, encode(Connack()), now)
    assert events(s) == [Connected(False)]
    assert s.state == CONNECTED
    return s


# ------------------------------------------------------------------- connect


def test_start_queues_connect_with_will_and_credentials():
    s = Session("dev-1", 30, clean_session=False, will=("d/s", b"off", 1, True),
                username="u", password=b"p")
    assert s.state == DISCONNECTED
    s.start(5)
    assert s.state == CONNECTING
    assert sent(s) == [Connect("dev-1", 30, False, "d/s", b"off", 1, True, "u", b"p")]
    assert s.data_to_send() == b""
    receive(s, encode(Connack(session_present=True)), 6)
    assert events(s) == [Connected(True)]
    assert s.state == CONNECTED


def test_bad_will_topic_is_rejected_at_construction():
    with pytest.raises(ValueError):
        Session("dev-1", 30, will=("d/#", b"off", 1, True))


@pytest.mark.parametrize("rc,reason", [(1, "protocol version"), (2, "identifier rejected"),
                                       (3, "unavailable"), (4, "user name or password"),
                                       (5, "not authorized")])
def test_refused_connect(rc, reason):
    s = Session("dev-1", KA)
    s.start(0)
    sent(s)
    receive(s, encode(Connack(return_code=rc)), 10)
    (ev,) = events(s)
    assert ev[:2] == (REFUSED, rc)
    assert reason in ev[2]
    assert s.state == DISCONNECTED
    assert s.data_to_send() == b""
    s.start(20)  # may try again
    assert s.state == CONNECTING


def test_connack_timeout():
    s = Session("dev-1", KA, connect_timeout_ms=5000)
    s.start(1000)
    sent(s)
    assert s.next_timeout_ms(1000) == 5000
    assert s.next_timeout_ms(4000) == 2000
    s.tick(5999)
    assert events(s) == [] and s.state == CONNECTING
    s.tick(6000)
    assert events(s) == [LinkDead("no CONNACK within 5000 ms")]
    assert s.state == DISCONNECTED


def test_connack_arrives_in_pieces():
    s = Session("dev-1", KA)
    s.start(0)
    receive(s, b"\x20", 1)
    assert events(s) == [] and s.state == CONNECTING
    receive(s, b"\x02\x00", 2)
    receive(s, b"\x00", 3)
    assert events(s) == [Connected(False)]


@pytest.mark.parametrize("packet", [Publish("a", b"x"), Pingresp(), Puback(1), Suback(1, [0])])
def test_anything_before_connack_is_protocol_error(packet):
    s = Session("dev-1", KA)
    s.start(0)
    with pytest.raises(ProtocolError, match="expected CONNACK"):
        receive(s, encode(packet), 1)
    assert s.state == DISCONNECTED


@pytest.mark.parametrize("packet", [Connack(), Connect("x"), Subscribe(1, [("a", 0)]),
                                    Unsubscribe(1, ["a"]), Pingreq(), Disconnect()])
def test_packets_a_client_must_never_receive(packet):
    s = connected()
    with pytest.raises(ProtocolError):
        receive(s, encode(packet), 1)
    assert s.state == DISCONNECTED


def test_malformed_bytes_raise_protocol_error_and_drop_state():
    s = connected()
    with pytest.raises(ProtocolError, match="reserved flags"):
        receive(s, b"\xd1\x00", 1)  # PINGRESP with a reserved flag
    assert s.state == DISCONNECTED
    receive(s, b"\xd0\x00", 2)  # late bytes after the drop are ignored
    assert events(s) == []


# ------------------------------------------------------------------ keepalive


def test_pingreq_after_three_quarters_ka_of_idle():
    s = connected(0)
    assert s.next_timeout_ms(0) == 7500
    s.tick(7499)
    assert sent(s) == []
    s.tick(7500)
    assert sent(s) == [Pingreq()]
    s.tick(9000)
    assert sent(s) == []  # only one PINGREQ outstanding
    receive(s, encode(Pingresp()), 9100)
    assert events(s) == [] and s.state == CONNECTED
    assert s.next_timeout_ms(9100) == 7500 - 1600  # tx idle since 7500


def test_pingreq_when_tx_busy_but_rx_silent():
    # telemetry every second keeps tx busy; the broker sends nothing back
    s = connected(0)
    for t in range(1000, 7500, 1000):
        s.publish("d/t", b"1", now_ms=t)
        s.tick(t)
        assert sent(s) == [Publish("d/t", b"1")]
    s.tick(7500)
    assert sent(s) == [Pingreq()]


def test_no_pingreq_while_both_directions_busy():
    s = connected(0)
    for t in range(500, 30000, 500):
        s.publish("d/t", b"1", now_ms=t)
        receive(s, encode(Publish("d/c", b"x")), t)
        s.tick(t)
        assert Pingreq() not in sent(s)
    assert s.state == CONNECTED


def test_idle_link_with_answering_broker_stays_up():
    s = connected(0)
    t = 0
    pings = []
    while t < 10 * KA_MS:
        t += max(1, s.next_timeout_ms(t))
        s.tick(t)
        if Pingreq() in sent(s):
            pings.append(t)
            receive(s, encode(Pingresp()), t + 50)
    assert s.state == CONNECTED and events(s) == []
    assert len(pings) >= 10
    assert all(b - a <= KA_MS for a, b in zip(pings, pings[1:]))


def test_dead_broker_while_publishing_is_noticed_within_two_ka():
    s = connected(0)
    last_rx = 0
    t = 0
    while s.state == CONNECTED:
        t += 100
        if t % 1000 == 0:
            s.publish("d/t", b"1", now_ms=t)
        s.tick(t)
        sent(s)
    assert events(s) == [LinkDead("no PINGRESP within 10000 ms")]
    assert t - last_rx < 2 * KA_MS
    assert t - last_rx >= KA_MS  # not earlier than one keepalive after the last byte


def test_late_bytes_after_pingreq_postpone_link_dead():
    s = connected(0)
    s.tick(7500)
    assert sent(s) == [Pingreq()]
    receive(s, b"\x30", 12000)  # start of a packet: the link is alive
    s.tick(17500)
    assert events(s) == []
    assert s.next_timeout_ms(17500) == 4500
    s.tick(22000)
    assert events(s) == [LinkDead("no PINGRESP within 10000 ms")]


@settings(max_examples=60, deadline=None)
@given(start=st.integers(0, WRAP - 1),
       rx_gaps=st.lists(st.integers(1, 3 * KA_MS), max_size=8),
       step=st.integers(1, 700))
def test_dead_link_detection_bound(start, rx_gaps, step):
    """Whatever the broker sends before going silent, LinkDead comes within
    [KA, 2*KA) of the last received byte, and never while it still talks
    more often than every KA/2 (ticks may wrap during the run)."""
    s = connected(ticks(start))
    t = start
    last_rx = start
    rx_at = []
    acc = start
    for gap in rx_gaps:
        acc += gap
        rx_at.append(acc)
    while s.state == CONNECTED:
        nxt = t + min(step, max(1, s.next_timeout_ms(ticks(t))))
        while rx_at and rx_at[0] <= nxt:
            r = rx_at.pop(0)
            if s.state == CONNECTED:
                receive(s, encode(Pingresp()), ticks(r))
                last_rx = r
        t = nxt
        s.tick(ticks(t))
        sent(s)
        assert t - last_rx < 2 * KA_MS
    (ev,) = events(s)
    assert ev[0] == LINK_DEAD
    assert KA_MS <= t - last_rx < 2 * KA_MS


def test_keepalive_zero_disables_pings():
    s = connected(0, keepalive_s=0)
    assert s.next_timeout_ms(0) > 0
    s.tick(10 ** 6)
    assert sent(s) == [] and s.state == CONNECTED


def test_next_timeout_is_never_negative():
    s = connected(0)
    assert s.next_timeout_ms(50000) == 0
    s.tick(50000)
    assert s.next_timeout_ms(60000 + 100) == 0


# --------------------------------------------------------------- ticks wrap


def test_keepalive_across_ticks_wrap():
    start = WRAP - 3000
    s = connected(start)
    s.tick(ticks(start + 7499))
    assert sent(s) == []
    assert s.next_timeout_ms(ticks(start + 7000)) == 500
    s.tick(ticks(start + 7500))  # = 4500 after the wrap
    assert sent(s) == [Pingreq()]
    s.tick(ticks(start + 7500 + KA_MS - 1))
    assert events(s) == []
    s.tick(ticks(start + 7500 + KA_MS))
    assert events(s) == [LinkDead("no PINGRESP within 10000 ms")]


def test_connack_timeout_across_ticks_wrap():
    s = Session("dev-1", KA, connect_timeout_ms=2000)
    s.start(WRAP - 1000)
    s.tick(999)  # 1999 ms later
    assert s.state == CONNECTING
    s.tick(1000)
    assert events(s) == [LinkDead("no CONNACK within 2000 ms")]


def test_ticks_diff_helper():
    assert ms._ticks_diff(5, WRAP - 5) == 10
    assert ms._ticks_diff(WRAP - 5, 5) == -10
    assert ms._ticks_diff(100, 40) == 60


# ---------------------------------------------------------- QoS 1 outgoing


def test_qos1_publish_acked():
    s = connected(0)
    pid = s.publish("d/s", b"on", qos=1, retain=True, now_ms=1)
    assert pid == 1
    assert sent(s) == [Publish("d/s", b"on", 1, True, False, 1)]
    assert s.inflight_count() == 1
    receive(s, encode(Puback(1)), 2)
    assert events(s) == [PublishAcked(1)]
    assert s.inflight_count() == 0
    receive(s, encode(Puback(1)), 3)  # unknown / duplicate ack: ignored
    assert events(s) == [] and s.state == CONNECTED


def test_qos1_resent_with_dup_after_reconnect_in_order():
    s = connected(0)
    a = s.publish("d/a", b"1", qos=1, now_ms=1)
    b = s.publish("d/b", b"2", qos=1, now_ms=1)
    c = s.publish("d/c", b"3", qos=1, now_ms=1)
    assert len(sent(s)) == 3
    receive(s, encode(Puback(b)), 2)
    assert events(s) == [PublishAcked(b)]
    s.connection_lost(3)
    assert s.state == DISCONNECTED
    d = s.publish("d/d", b"4", qos=1, now_ms=4)  # queued while offline
    assert s.data_to_send() == b""
    s.start(5)
    assert sent(s) == [Connect("dev-1", KA)]  # nothing before CONNACK
    receive(s, encode(Connack(session_present=True)), 6)
    assert events(s) == [Connected(True)]
    assert sent(s) == [
        Publish("d/a", b"1", 1, False, True, a),
        Publish("d/c", b"3", 1, False, True, c),
        Publish("d/d", b"4", 1, False, False, d),
    ]
    assert s.inflight_count() == 3


def test_qos1_before_first_connect_goes_out_after_connack():
    s = Session("dev-1", KA)
    pid = s.publish("d/s", b"on", qos=1, retain=True)
    s.start(0)
    assert sent(s) == [Connect("dev-1", KA)]
    receive(s, encode(Connack()), 1)
    assert sent(s) == [Publish("d/s", b"on", 1, True, False, pid)]


def test_unsent_bytes_are_dropped_with_the_link():
    s = connected(0)
    s.publish("d/t", b"x", now_ms=1)
    s.connection_lost(2)
    s.start(3)
    assert sent(s) == [Connect("dev-1", KA)]


def test_inflight_cap():
    s = connected(0)
    for _ in range(ms.MAX_INFLIGHT):
        s.publish("d/s", b"x", qos=1, now_ms=1)
    with pytest.raises(ValueError, match="too many QoS 1 messages in flight"):
        s.publish("d/s", b"x", qos=1, now_ms=1)
    receive(s, encode(Puback(3)), 2)
    s.publish("d/s", b"x", qos=1, now_ms=3)


def test_packet_ids_wrap_and_skip_ids_in_use():
    s = connected(0)
    s._last_id = 65533
    ids = [s.publish("d/s", b"x", qos=1, now_ms=1) for _ in range(3)]
    assert ids == [65534, 65535, 1]
    receive(s, encode(Puback(65535)), 2)
    s._last_id = 65533  # next candidates: 65534 (in use), 65535 (free again)
    assert s.publish("d/s", b"x", qos=1, now_ms=3) == 65535
    s._last_id = 0  # 1 is in use
    assert s.publish("d/s", b"x", qos=1, now_ms=3) == 2
    sub = s.subscribe([("d/cmd", 1)], 4)
    assert sub == 3


@settings(max_examples=30, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=200), st.integers(0, 65535))
def test_packet_ids_unique_among_inflight(ack_oldest, last_id):
    s = connected(0)
    s._last_id = last_id
    live = []
    for ack in ack_oldest:
        if ack and live:
            pid = live.pop(0)
            s.data_to_send()  # the writer makes room for what the PUBACK lets out
            receive(s, encode(Puback(pid)), 1)
        elif len(live) < ms.MAX_INFLIGHT:
            pid = s.publish("d/s", b"x", qos=1, now_ms=1)
            assert 1 <= pid <= 65535 and pid not in live
            live.append(pid)
    assert s.inflight_count() == len(live)


# ----------------------------------------------------------- QoS 1 incoming


def test_qos1_message_is_pubacked_and_dup_passed_on():
    s = connected(0)
    receive(s, encode(Publish("d/cmd", b"{}", 1, False, True, 42)), 1)
    assert events(s) == [Message("d/cmd", b"{}", 1, False, True, 42, None)]
    assert sent(s) == [Puback(42)]


def test_qos0_message_needs_no_ack():
    s = connected(0)
    receive(s, encode(Publish("d/x", b"v", retain=True)), 1)
    assert events(s) == [Message("d/x", b"v", 0, True, False, None, None)]
    assert sent(s) == []


def test_qos2_message_is_protocol_error():
    s = connected(0)
    with pytest.raises(ProtocolError, match="QoS 2"):
        receive(s, encode(Publish("d/x", b"v", 2, packet_id=1)), 1)


def test_oversize_message_is_still_pubacked():
    s = connected(0, max_packet=64)
    wire = encode(Publish("d/cmd", b"z" * 1000, qos=1, packet_id=7))
    wire += encode(Publish("d/cmd", b"ok", qos=1, packet_id=8))
    for i in range(0, len(wire), 100):
        receive(s, wire[i:i + 100], 1)
    assert events(s) == [Message("d/cmd", None, 1, False, False, 7, 1000),
                         Message("d/cmd", b"ok", 1, False, False, 8, None)]
    assert sent(s) == [Puback(7), Puback(8)]
    assert s.state == CONNECTED


# --------------------------------------------------------- subscribe


def test_subscribe():
    s = connected(0)
    pid = s.subscribe([("d/cmd", 1), ("d/all/#", 0)], 1)
    assert sent(s) == [Subscribe(pid, [("d/cmd", 1), ("d/all/#", 0)])]
    receive(s, encode(Suback(pid, [1, 0x80])), 2)
    assert events(s) == [Subscribed(pid, [1, 0x80])]
    # a board never unsubscribes (no code for it: heap): any UNSUBACK and
    # unknown SUBACK ids are ignored
    assert not hasattr(s, "unsubscribe")
    receive(s, encode(Unsuback(pid)) + encode(Suback(999, [0])), 5)
    assert events(s) == []
    assert s.state == CONNECTED


def test_suback_with_wrong_number_of_codes():
    s = connected(0)
    pid = s.subscribe([("a", 1), ("b", 1)], 1)
    with pytest.raises(ProtocolError, match="2 filters"):
        receive(s, encode(Suback(pid, [1])), 2)


# --------------------------------------------------------- wrong state


def test_wrong_state_operations_raise_value_error():
    s = Session("dev-1", KA)
    with pytest.raises(ValueError):
        s.publish("d/t", b"x")  # QoS 0 while DISCONNECTED
    with pytest.raises(ValueError):
        s.subscribe([("d/cmd", 1)], 0)
    with pytest.raises(ValueError):
        s.disconnect(0)
    s.start(0)
    with pytest.raises(ValueError):
        s.start(0)
    with pytest.raises(ValueError):
        s.publish("d/t", b"x", now_ms=0)  # QoS 0 while CONNECTING
    with pytest.raises(ValueError):
        s.subscribe([("d/cmd", 1)], 0)


def test_local_misuse_raises_value_error_when_connected():
    s = connected(0)
    with pytest.raises(ValueError, match="wildcard"):
        s.publish("d/#", b"x", now_ms=1)
    with pytest.raises(ValueError, match="wildcard"):
        s.publish("d/+", b"x", qos=1, now_ms=1)
    assert s.inflight_count() == 0
    with pytest.raises(ValueError, match="QoS"):
        s.publish("d/t", b"x", qos=2, now_ms=1)
    with pytest.raises(ValueError, match="QoS"):
        s.subscribe([("d/cmd", 2)], 1)
    with pytest.raises(ValueError):
        s.subscribe([("d/#/x", 1)], 1)
    assert sent(s) == []


def test_disconnect_queues_disconnect():
    s = connected(0)
    s.disconnect(5)
    assert s.state == DISCONNECTED
    assert sent(s) == [Disconnect()]
    assert s.next_timeout_ms(6) > 0
    s.tick(10 ** 6)
    assert events(s) == []


def test_events_are_tuples():
    assert Connected(True) != Connected(False)
    assert LinkDead("x") == LinkDead("x") and LinkDead("x") != PublishAcked(1)
    assert PublishAcked(3) == (4, 3) and LinkDead("x") == (LINK_DEAD, "x")
    assert CONNECTING not in (CONNECTED, DISCONNECTED)


def test_withdrawn_qos1_publish_is_not_resent():
    """A superseded retained status (an old birth) can be withdrawn before
    the next CONNACK; the others are still resent with DUP."""
    s = Session("dev", 30)
    s.start(0)
    receive(s, encode(Connack()), 0)
    s.data_to_send()
    while s.next_event():
        pass
    old_birth = s.publish("devices/dev/status", b"birth-1", 1, True, 0)
    result = s.publish("devices/dev/cmd/result", b"r", 1, False, 0)
    s.data_to_send()
    s.connection_lost(10)
    assert s.withdraw(old_birth) is True
    assert s.withdraw(old_birth) is False
    s.start(20)
    s.data_to_send()
    receive(s, encode(Connack()), 20)
    out = s.data_to_send()
    assert b"birth-1" not in out
    assert decode(out) == Publish("devices/dev/cmd/result", b"r", 1, False, True, result)
    assert s.inflight_count() == 1


# ------------------------------------------------------- started-packet deadline


def test_dripped_huge_publish_is_dead_after_the_packet_deadline():
    """A broker that declares a 256 MB PUBLISH and drips it a byte a second
    keeps _last_rx fresh (so keepalive alone never gives up); the started
    packet's deadline (the keepalive period) ends the link."""
    s = connected(0, max_packet=64)
    wire = encode(Publish("d/cmd", b"", qos=1, packet_id=7))
    header = bytes([wire[0]]) + bytes([0xFF, 0xFF, 0xFF, 0x7F])  # 268,435,455 bytes
    body = wire[2:] + b"x" * 100  # topic + id, then payload bytes
    drip = header + body
    t = 1000
    receive(s, drip[:1], t)  # the packet starts here
    started = t
    assert s.next_timeout_ms(t) <= KA_MS
    i = 1
    while s.state == CONNECTED:
        t += 1000
        if i < len(drip):
            receive(s, drip[i:i + 1], t)
            i += 1
        s.tick(t)
        sent(s)  # the PINGREQs go out, no PINGRESP can overtake the packet
        assert t - started <= KA_MS
    assert events(s) == [LinkDead("packet not completed within %d ms" % KA_MS)]
    assert t - started == KA_MS


def test_packet_deadline_restarts_with_each_packet():
    """Many small packets, each completed in time, with one always in
    progress (a chunk boundary inside every packet): never LinkDead."""
    s = connected(0)
    one = encode(Publish("d/cmd", b"p" * 20, qos=0))
    stream = one * 40
    t = 0
    for i in range(0, len(stream), 7):  # 7-byte chunks: a packet is always half-way
        t += 400  # a packet needs ~4 chunks = 1.6 s, far below KA, but 40 packets take 50 s
        receive(s, stream[i:i + 7], t)
        s.tick(t)
        sent(s)
        assert s.state == CONNECTED, events(s)
    assert len([e for e in events(s) if e[0] == MESSAGE]) == 40


def test_next_timeout_includes_the_started_packet():
    s = connected(0, keepalive_s=0)
    assert s.next_timeout_ms(0) == ms._IDLE_TIMEOUT_MS
    receive(s, encode(Puback(3))[:1], 500)
    assert s.next_timeout_ms(500) == 10000  # keepalive 0: the 10 s default
    assert s.next_timeout_ms(9000) == 1500
    s.tick(10499)
    assert s.state == CONNECTED
    receive(s, encode(Puback(3))[1:], 10499)  # completed in time
    assert s.next_timeout_ms(10499) == ms._IDLE_TIMEOUT_MS
    s.tick(30000)
    assert s.state == CONNECTED


def test_packet_deadline_without_keepalive_and_across_wrap():
    start = WRAP - 4000
    s = connected(start, keepalive_s=0, packet_timeout_ms=6000)
    receive(s, b"\x30", ticks(start))  # a PUBLISH header, nothing more
    s.tick(ticks(start + 5999))
    assert s.state == CONNECTED
    s.tick(ticks(start + 6000))
    assert events(s) == [LinkDead("packet not completed within 6000 ms")]
    assert s.state == DISCONNECTED


def test_oversize_publish_skipped_in_time_is_fine():
    """An oversize PUBLISH whose payload is discarded as it arrives also has
    the deadline, and finishing it in time clears it."""
    s = connected(0, max_packet=64)
    wire = encode(Publish("d/cmd", b"z" * 1000, qos=1, packet_id=7))
    for k, i in enumerate(range(0, len(wire), 100)):
        receive(s, wire[i:i + 100], k * 900)
        s.tick(k * 900)
        assert s.state == CONNECTED
    assert s.decoder._pos == s.decoder._end and not s.decoder._skip and s._rx_started is None
    assert events(s)[0] == Message("d/cmd", None, 1, False, False, 7, 1000)


def test_memoryview_slices_are_accepted():
    s = connected(0)
    buf = bytearray(64)
    wire = encode(Publish("d/cmd", b"abc", qos=1, packet_id=5))
    buf[:len(wire)] = wire
    mv = memoryview(buf)
    receive(s, mv[:3], 1)
    buf[:len(wire)] = b"\x00" * len(wire)  # the reader reuses its buffer
    buf[:len(wire) - 3] = wire[3:]
    receive(s, mv[:len(wire) - 3], 2)
    assert events(s) == [Message("d/cmd", b"abc", 1, False, False, 5, None)]
    assert s.received(0, 3) is None and events(s) == []


@pytest.mark.parametrize("pid", [1, 255, 256, 0x1234, 65535])
def test_puback_bytes_for_every_packet_id_width(pid):
    s = connected(0)
    receive(s, encode(Publish("d/cmd", b"x", qos=1, packet_id=pid)), 1)
    assert s.data_to_send() == b"\x40\x02" + pid.to_bytes(2, "big") == encode(Puback(pid))


# ------------------------------------------ backpressure and fixed capacity


def test_buffers_have_a_fixed_capacity():
    s = connected(0)
    size = len(s.decoder._buf)
    for i in range(200):  # a flood of QoS 1 commands, the output drained as the writer would
        receive(s, encode(Publish("d/cmd", b"x" * (i % 300), qos=1, packet_id=i + 1)), 1)
        s.data_to_send()
        assert len(s._out) <= ms._OUT_CAP and len(s._spare) <= ms._OUT_CAP
    assert len(s.decoder._buf) == size
    assert len(events(s)) == 200


def test_no_output_room_stops_parsing_until_the_writer_made_room():
    s = connected(0)
    n = len(s.decoder._buf) // 7  # 7-byte PUBLISHes: more PUBACKs than the output holds
    wire = b"".join(encode(Publish("c", b"", qos=1, packet_id=i + 1)) for i in range(n))
    assert n * 4 > ms._OUT_CAP
    space = s.decoder.space()
    space[:len(wire)] = wire
    s.received(len(wire), 1)
    got = events(s)  # PUBACKs fill the output: parsing stops with the rest buffered
    assert 0 < len(got) < n and len(s._out) + 4 > ms._OUT_CAP
    assert s.stopped == 2  # the reader waits for the writer, not for the socket
    acked = [p.packet_id for p in sent(s)]
    assert acked == list(range(1, len(got) + 1))
    while len(got) < n:
        got += events(s)
        acked += [p.packet_id for p in sent(s)]
    assert acked == list(range(1, n + 1)) and [e[6] for e in got] == acked


def test_hold_leaves_a_publish_unparsed_but_not_acks_and_pingresps():
    s = connected(0)
    s.hold = True
    pid = s.publish("d/r", b"result", qos=1, now_ms=1)
    sent(s)
    wire = encode(Puback(pid)) + encode(Publish("d/cmd", b"a", qos=1, packet_id=5)) + encode(Pingresp())
    receive(s, wire, 2)
    assert events(s) == [PublishAcked(pid)]  # the PUBLISH waits, unacknowledged
    assert s.stopped == 1  # the reader waits for hold(False), not for the socket
    assert sent(s) == []
    assert len(s.decoder.space()) < len(s.decoder._buf)  # still buffered
    s.hold = False
    assert events(s) == [Message("d/cmd", b"a", 1, False, False, 5, None)]
    assert s.stopped == 0  # all parsed: the reader reads on
    assert sent(s) == [Puback(5)]


def test_a_packet_bigger_than_the_output_buffer_goes_out_as_it_is():
    s = connected(0)
    s.publish("d/t", b"small", now_ms=1)
    s.publish("d/t", b"B" * 500, now_ms=1)
    assert not s.writable()
    with pytest.raises(ValueError, match="output full"):
        s.publish("d/t", b"more", now_ms=1)
    pid = s.publish("d/r", b"q1", qos=1, now_ms=1)  # QoS 1 waits its turn instead
    first = bytes(s.data_to_send())
    big = s.data_to_send()
    assert isinstance(big, (bytes, bytearray)) and len(big) > ms._OUT_CAP  # the encoded packet itself, no copy
    assert s.writable()
    assert [p.payload for p in decode_all(first + big + s.data_to_send())] == [b"small", b"B" * 500, b"q1"]
    assert s.inflight_count() == 1 and pid


def test_qos1_window_sends_the_rest_as_pubacks_come():
    s = connected(0)
    pids = [s.publish("d/r", b"%d" % i, qos=1, now_ms=1) for i in range(12)]
    out = []
    while s.has_data_to_send():
        out += sent(s)
    assert [p.packet_id for p in out] == pids[:8]  # a window of 8 on the wire
    receive(s, encode(Puback(pids[0])) + encode(Puback(pids[1])), 2)
    assert events(s) == [PublishAcked(pids[0]), PublishAcked(pids[1])]
    assert [p.packet_id for p in sent(s)] == pids[8:10]


def decode_all(data):
    d = Decoder(1 << 20)
    d.feed(data)
    out = []
    while (p := d.next_packet()) is not None:
        out.append(p)
    return out
