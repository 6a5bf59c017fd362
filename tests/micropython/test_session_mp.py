# mqtt_session inside the MicroPython VM (run by tests/micropython/run.mjs):
# connect, keepalive PINGREQ and dead-link timing across the 2**30 ticks wrap,
# QoS 1 in and out with resend + DUP after reconnect. Plain functions and
# asserts only; also runs under CPython (pytest collects it too).

import sys

try:
    import mqtt_session  # noqa: F401 - probes whether firmware/ is on sys.path
except ImportError:  # CPython: firmware/ is not on sys.path yet
    sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/firmware")
    import mqtt_session  # noqa: F401 - probes whether firmware/ is on sys.path

from mqtt_peer import (  # the broker's side of the wire
    Connack, Connect, Decoder, Pingreq, Pingresp, ProtocolError, Puback, Publish, Suback,
    Subscribe, encode,
)
from mqtt_session import CONNECTED, DISCONNECTED, Session
from packets import REFUSED, Connected, LinkDead, Message, PublishAcked, Subscribed, receive  # event tuples

WRAP = 1 << 30


def sent(s):
    d = Decoder(1 << 16)
    d.feed(s.data_to_send())
    out = []
    p = d.next_packet()
    while p is not None:
        out.append(p)
        p = d.next_packet()
    return out


def events(s):
    out = []
    e = s.next_event()
    while e is not None:
        out.append(e)
        e = s.next_event()
    return out


def connected(now, ka=10):
    s = Session("dev-1", ka, will=("d/s", b'{"online": false}', 1, True))
    s.start(now)
    assert sent(s) == [Connect("dev-1", ka, True, "d/s", b'{"online": false}', 1, True)]
    receive(s, encode(Connack()), now)
    assert events(s) == [Connected(False)]
    return s


def test_refused():
    s = Session("dev-1", 10)
    s.start(0)
    receive(s, encode(Connack(return_code=4)), 1)
    ev = events(s)
    assert len(ev) == 1 and ev[0][0] == REFUSED
    assert ev[0][1] == 4 and s.state == DISCONNECTED


def test_keepalive_and_dead_link_across_wrap():
    t0 = WRAP - 2000
    s = connected(t0)
    assert s.next_timeout_ms(t0) == 7500
    s.tick((t0 + 7499) % WRAP)
    assert sent(s) == []
    s.tick((t0 + 7500) % WRAP)
    assert sent(s) == [Pingreq()]
    receive(s, encode(Pingresp()), (t0 + 7600) % WRAP)
    assert s.state == CONNECTED
    # broker goes silent: next PINGREQ 7.5 s after the last one, LinkDead 10 s later
    s.tick((t0 + 14999) % WRAP)
    assert sent(s) == []
    s.tick((t0 + 15000) % WRAP)
    assert sent(s) == [Pingreq()]
    s.tick((t0 + 24999) % WRAP)
    assert events(s) == []
    s.tick((t0 + 25000) % WRAP)
    assert events(s) == [LinkDead("no PINGRESP within 10000 ms")]
    assert s.state == DISCONNECTED


def test_busy_tx_silent_rx_still_pings():
    s = connected(0)
    for t in range(1000, 7001, 1000):
        s.publish("d/t", b"{}", now_ms=t)
        s.tick(t)
    assert Pingreq() not in sent(s)
    s.tick(7500)
    assert sent(s) == [Pingreq()]


def test_connack_timeout():
    s = Session("dev-1", 10, connect_timeout_ms=3000)
    s.start(WRAP - 1000)
    s.tick(1999)
    assert s.state != DISCONNECTED
    s.tick(2000)
    assert events(s) == [LinkDead("no CONNACK within 3000 ms")]


def test_qos1_out_resent_with_dup():
    s = connected(0)
    a = s.publish("d/s", b"on", qos=1, retain=True, now_ms=1)
    b = s.publish("d/r", b"x", qos=1, now_ms=1)
    assert len(sent(s)) == 2
    receive(s, encode(Puback(a)), 2)
    assert events(s) == [PublishAcked(a)]
    s.connection_lost(3)
    c = s.publish("d/r", b"y", qos=1, now_ms=4)
    s.start(5)
    assert sent(s) == [Connect("dev-1", 10, True, "d/s", b'{"online": false}', 1, True)]
    receive(s, encode(Connack()), 6)
    assert sent(s) == [Publish("d/r", b"x", 1, False, True, b),
                       Publish("d/r", b"y", 1, False, False, c)]
    assert s.inflight_count() == 2


def test_packet_id_wraps():
    s = connected(0)
    s._last_id = 65535
    assert s.publish("d/s", b"", qos=1, now_ms=1) == 1


def test_qos1_in_pubacked_and_subscribe():
    s = connected(0, ka=30)
    pid = s.subscribe([("d/cmd", 1)], 1)
    assert sent(s) == [Subscribe(pid, [("d/cmd", 1)])]
    receive(s, encode(Suback(pid, [1])) +
                   encode(Publish("d/cmd", b'{"id": "1"}', 1, False, True, 9)), 2)
    assert events(s) == [Subscribed(pid, [1]),
                         Message("d/cmd", b'{"id": "1"}', 1, False, True, 9, None)]
    assert sent(s) == [Puback(9)]


def test_wrong_state_and_protocol_errors():
    s = Session("dev-1", 10)
    try:
        s.publish("d/t", b"x")
    except ValueError:
        pass
    else:
        raise AssertionError("QoS 0 publish accepted while DISCONNECTED")
    s = connected(0)
    try:
        receive(s, encode(Connack()), 1)
    except ProtocolError:
        pass
    else:
        raise AssertionError("second CONNACK accepted")
    assert s.state == DISCONNECTED


def test_started_packet_deadline_drip_across_wrap():
    # A 256 MB PUBLISH declared and dripped a byte a second: LinkDead one
    # keepalive after its first byte, though bytes keep arriving.
    t0 = WRAP - 3000
    s = connected(t0, ka=5)
    drip = b"\x32\xff\xff\xff\x7f\x00\x05d/cmd\x00\x07" + b"x" * 20
    buf = bytearray(8)
    mv = memoryview(buf)
    t = t0
    i = 0
    while s.state == CONNECTED:
        if i < len(drip):
            buf[0] = drip[i]
            receive(s, mv[:1], t % WRAP)  # a slice of a reused buffer
            i += 1
        s.tick(t % WRAP)
        sent(s)
        t += 1000
    assert events(s) == [LinkDead("packet not completed within 5000 ms")]
    assert t - 1000 - t0 == 5000


def test_started_packet_deadline_cleared_by_completion():
    s = connected(0, ka=0)
    wire = encode(Puback(3))
    receive(s, wire[:1], 100)
    assert s.next_timeout_ms(100) == 10000
    receive(s, wire[1:], 10099)
    s.tick(50000)
    assert s.state == CONNECTED
