"""mqtt_codec under CPython: one (packet, bytes) table drives encode and decode,
malformed input is rejected with ProtocolError (and nothing else, even for
random garbage in random chunks), oversize PUBLISH is skipped, and paho-mqtt
checks the wire format independently."""

import socket
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import mqtt_codec as c  # noqa: E402
from mqtt_codec import (  # noqa: E402
    Connack, Connect, Decoder, Disconnect, Pingreq, Pingresp, ProtocolError, Puback,
    Publish, Suback, Subscribe, Unsuback, Unsubscribe, decode, encode,
)

H = bytes.fromhex


def _publish_of_remaining_length(n):
    # PUBLISH QoS 0, topic "t" (3 bytes of variable header), payload fills the rest
    return Publish("t", b"x" * (n - 3))


def _varint_case(n, varint_hex):
    return (_publish_of_remaining_length(n), b"\x30" + H(varint_hex) + b"\x00\x01t" + b"x" * (n - 3))


# (id, packet, wire bytes). Vectors marked "spec" are the examples of the
# MQTT 3.1.1 specification (OASIS Standard, 29 October 2014).
CASES = [
    ("connect-minimal", Connect("c"), H("100d 00044d515454 04 02 003c 0001 63")),
    ("connect-empty-id-persistent", Connect("", keepalive=0, clean_session=False),
     H("100c 00044d515454 04 00 0000 0000")),
    # spec 3.1.2.10 figure 3.6: flags 0xCE = user, password, will QoS 1, will, clean; KA 10
    ("connect-spec-ce", Connect("cid", keepalive=10, will_topic="w", will_payload=b"bye",
                                will_qos=1, username="u", password=b"pw"),
     H("101e 00044d515454 04 ce 000a 0003 636964 0001 77 0003 627965 0001 75 0002 7077")),
    ("connect-will-retain-qos1-all", Connect("c", will_topic="a/b", will_payload=b"x",
                                             will_qos=1, will_retain=True, username="u",
                                             password=b"p"),
     H("101b 00044d515454 04 ee 003c 0001 63 0003 612f62 0001 78 0001 75 0001 70")),
    ("connect-username-only", Connect("c", keepalive=30, username="u"),
     H("1010 00044d515454 04 82 001e 0001 63 0001 75")),
    ("connect-will-qos0-empty-payload", Connect("c", will_topic="w"),
     H("1012 00044d515454 04 06 003c 0001 63 0001 77 0000")),
    ("connack", Connack(), H("2002 0000")),
    ("connack-session-present", Connack(session_present=True), H("2002 0100")),
    ("connack-refused-5", Connack(return_code=5), H("2002 0005")),
    ("publish-qos0", Publish("a/b", b"hi"), H("3007 0003 612f62 6869")),
    # spec 3.3.2.3 figure 3.11: topic "a/b", packet id 10
    ("publish-spec-qos1-id10", Publish("a/b", b"hi", qos=1, packet_id=10),
     H("3209 0003 612f62 000a 6869")),
    ("publish-qos1-dup-retain", Publish("a/b", b"hi", qos=1, retain=True, dup=True, packet_id=10),
     H("3b09 0003 612f62 000a 6869")),
    ("publish-qos2", Publish("a/b", b"", qos=2, packet_id=65535), H("3407 0003 612f62 ffff")),
    ("publish-retained-clear", Publish("a/b", b"", retain=True), H("3105 0003 612f62")),
    # spec 1.5.3 figure 1.3: "A\U0002A6D4" encodes as 00 05 41 F0 AA 9B 94
    ("publish-spec-utf8", Publish("A\U0002A6D4", b""), H("3007 0005 41f0aa9b94")),
    ("puback", Puback(1), H("4002 0001")),
    ("puback-ffff", Puback(65535), H("4002 ffff")),
    ("subscribe", Subscribe(1, [("a/#", 1)]), H("8208 0001 0003 612f23 01")),
    # spec 3.8.3 figure 3.22: "a/b" QoS 1 and "c/d" QoS 2, packet id 10
    ("subscribe-spec", Subscribe(10, [("a/b", 1), ("c/d", 2)]),
     H("820e 000a 0003 612f62 01 0003 632f64 02")),
    ("subscribe-plus", Subscribe(2, [("a/+", 0), ("#", 1)]),
     H("820c 0002 0003 612f2b 00 0001 23 01")),
    # spec 3.9.3 figure 3.26: codes 0, 2 and failure
    ("suback-spec", Suback(10, [0, 2, 0x80]), H("9005 000a 00 02 80")),
    ("suback-one", Suback(1, [1]), H("9003 0001 01")),
    # spec 3.10.3 figure 3.30: "a/b" and "c/d"
    ("unsubscribe-spec", Unsubscribe(10, ["a/b", "c/d"]), H("a20c 000a 0003 612f62 0003 632f64")),
    ("unsuback", Unsuback(3), H("b002 0003")),
    ("pingreq", Pingreq(), H("c000")),
    ("pingresp", Pingresp(), H("d000")),
    ("disconnect", Disconnect(), H("e000")),
    # spec 2.2.3 table 2.4: remaining-length boundaries
    ("remaining-length-127", *_varint_case(127, "7f")),
    ("remaining-length-128", *_varint_case(128, "8001")),
    ("remaining-length-16383", *_varint_case(16383, "ff7f")),
    ("remaining-length-16384", *_varint_case(16384, "808001")),
    ("remaining-length-2097151", *_varint_case(2097151, "ffff7f")),
    ("remaining-length-2097152", *_varint_case(2097152, "80808001")),
]

CASE_IDS = [case[0] for case in CASES]


@pytest.mark.parametrize("name,packet,wire", CASES, ids=CASE_IDS)
def test_encode_matches_table(name, packet, wire):
    assert encode(packet) == wire


@pytest.mark.parametrize("name,packet,wire", CASES, ids=CASE_IDS)
def test_decode_matches_table(name, packet, wire):
    assert decode(wire) == packet


@pytest.mark.parametrize("name,packet,wire", [c for c in CASES if len(c[2]) < 300],
                         ids=[c[0] for c in CASES if len(c[2]) < 300])
def test_decoder_one_byte_at_a_time(name, packet, wire):
    d = Decoder()
    for i in range(len(wire)):
        assert d.next_packet() is None
        d.feed(wire[i:i + 1])
    assert d.next_packet() == packet
    assert d.next_packet() is None


def test_whole_table_in_one_stream():
    small = [(p, w) for _, p, w in CASES if len(w) < 300]
    d = Decoder()
    d.feed(b"".join(w for _, w in small))
    got = []
    while True:
        p = d.next_packet()
        if p is None:
            break
        got.append(p)
    assert got == [p for p, _ in small]


def test_largest_remaining_length_header_is_accepted_and_waits():
    d = Decoder(max_packet=c.MAX_REMAINING_LENGTH)
    d.feed(b"\x30\xff\xff\xff\x7f\x00\x01t")
    assert d.next_packet() is None  # 268,435,455 bytes announced, more needed


def test_packet_equality_and_repr():
    assert Publish("a", b"x") != Publish("a", b"y")
    assert Publish("a", b"x") != Puback(1)
    assert Pingreq() == Pingreq() and Pingreq() != Pingresp()
    assert repr(Puback(7)) == "Puback(packet_id=7)"
    assert "topic='a'" in repr(Publish("a", b"x"))


# ------------------------------------------------------------ malformed input

MALFORMED = [
    ("0000", "unknown packet type 0"),
    ("f000", "unknown packet type 15"),
    ("c100", "reserved flags"),
    ("d800", "reserved flags"),
    ("e200", "reserved flags"),
    ("4102 0001", "reserved flags"),
    ("8008 0001 0003 612f23 01", "reserved flags"),  # SUBSCRIBE must have flags 0010
    ("a007 0003 0003 612f23", "reserved flags"),
    ("3605 0003 612f62", "QoS 3"),
    ("30ffffffff01", "exceeds 4 bytes"),
    ("3002 0000", "empty topic"),
    ("3005 0003 612f23", "wildcard"),
    ("3005 0003 612f2b", "wildcard"),
    ("3004 0002 fffe", "UTF-8"),
    ("3005 0003 eda080", "UTF-8|surrogate"),
    ("3004 0002 6100", "NUL"),
    ("3205 0003 612f62", "truncated PUBLISH packet id"),
    ("3207 0003 612f62 0000", "packet id 0"),
    ("3003 0005 61", "truncated PUBLISH topic"),
    ("3001 00", "truncated PUBLISH topic length"),
    ("3803 0001 61", "DUP set at QoS 0"),
    ("c001 00", "remaining length must be 0"),
    ("d001 00", "remaining length must be 0"),
    ("e001 00", "remaining length must be 0"),
    ("4003 000100", "remaining length must be 2"),
    ("4001 00", "remaining length must be 2"),
    ("4002 0000", "packet id 0"),
    ("b003 000100", "remaining length must be 2"),
    ("2003 000000", "remaining length must be 2"),
    ("2002 0200", "CONNACK reserved flag"),
    ("2002 0006", "reserved"),
    ("2002 0105", "session present with return code"),
    ("5002 0001", "QoS 2 is not supported"),
    ("6202 0001", "QoS 2 is not supported"),
    ("7002 0001", "QoS 2 is not supported"),
    ("8202 0001", "without topic filters"),
    ("a202 0001", "without topic filters"),
    ("8206 0001 0001 61 03", "QoS byte"),
    ("8205 0001 0001 61", "truncated SUBSCRIBE QoS"),
    ("8207 0001 0002 2361 01", "'#' must be a whole, final level"),
    ("8208 0001 0003 232f61 01", "'#' must be a whole, final level"),
    ("8207 0001 0002 612b 01", "'+' must be a whole level"),
    ("8206 0001 0000 01 01", "empty topic filter"),
    ("9002 0001", "without return codes"),
    ("9003 0001 03", "reserved"),
    ("100d 00044d515455 04 02 003c 0001 63", "not MQTT"),
    ("100d 00044d515454 03 02 003c 0001 63", "protocol level"),
    ("100d 00044d515454 04 03 003c 0001 63", "CONNECT reserved flag"),
    ("100d 00044d515454 04 0a 003c 0001 63", "without will flag"),
    ("100d 00044d515454 04 22 003c 0001 63", "without will flag"),
    ("100d 00044d515454 04 42 003c 0001 63", "password flag without username"),
    ("100e 00044d515454 04 02 003c 0001 63 00", "trailing bytes in CONNECT"),
    ("1012 00044d515454 04 1e 003c 0001 63 0001 77 0000", "will QoS 3"),
    ("1012 00044d515454 04 06 003c 0001 63 0001 23 0000", "will wildcard"),
    ("100f 00044d515454 04 82 003c 0001 63 0001", "truncated username"),
    ("1007 00044d515454 04", "truncated CONNECT"),
]


@pytest.mark.parametrize("wire,message", MALFORMED, ids=[m[1] + ":" + m[0] for m in MALFORMED])
def test_malformed_is_protocol_error(wire, message):
    with pytest.raises(ProtocolError, match=message.replace("+", r"\+")):
        decode(H(wire))


@pytest.mark.parametrize("wire,message", MALFORMED, ids=[m[1] + ":" + m[0] for m in MALFORMED])
def test_malformed_one_byte_at_a_time(wire, message):
    # the error shows up no later than the byte that completes the packet
    data = H(wire)
    d = Decoder()
    with pytest.raises(ProtocolError):
        for i in range(len(data)):
            d.feed(data[i:i + 1])
            assert d.next_packet() is None


def test_decode_incomplete_and_trailing():
    with pytest.raises(ProtocolError, match="incomplete"):
        decode(H("3007 0003 612f62 68"))
    with pytest.raises(ProtocolError, match="incomplete"):
        decode(b"")
    with pytest.raises(ProtocolError, match="trailing"):
        decode(H("c000 c000"))


def test_non_publish_over_max_packet_is_protocol_error():
    d = Decoder(max_packet=10)
    d.feed(encode(Subscribe(1, [("a/very/long/filter", 1)]))[:3])
    with pytest.raises(ProtocolError, match="exceeds max_packet"):
        d.next_packet()


# ------------------------------------------------------------- oversize PUBLISH


@pytest.mark.parametrize("chunk", [1, 7, 100, 100000])
def test_oversize_publish_is_skipped_not_buffered(chunk):
    big = Publish("dev/cmd", bytes(range(256)) * 40, qos=1, retain=True, packet_id=77)
    wire = encode(big) + encode(Publish("dev/cmd", b"after", qos=1, packet_id=78))
    d = Decoder(max_packet=100)
    got = []
    for i in range(0, len(wire), chunk):
        d.feed(wire[i:i + chunk])
        assert len(d._buf) <= 100 + chunk  # never holds the 10 KB payload
        while True:
            p = d.next_packet()
            if p is None:
                break
            got.append(p)
    assert got == [
        Publish("dev/cmd", None, qos=1, retain=True, packet_id=77, size=10240),
        Publish("dev/cmd", b"after", qos=1, packet_id=78),
    ]


def test_oversize_publish_qos0_returned_when_fully_skipped():
    d = Decoder(max_packet=16)
    wire = encode(Publish("t", b"z" * 50))
    d.feed(wire[:20])
    assert d.next_packet() is None  # 33 payload bytes still to skip
    d.feed(wire[20:])
    assert d.next_packet() == Publish("t", None, size=50)
    assert d.next_packet() is None


def test_oversize_publish_with_huge_topic_is_protocol_error():
    d = Decoder(max_packet=16)
    d.feed(encode(Publish("t" * 40, b"z" * 10))[:6])
    with pytest.raises(ProtocolError, match="topic longer than max_packet"):
        d.next_packet()


def test_oversize_publish_topic_beyond_remaining_length():
    d = Decoder(max_packet=16)
    d.feed(H("3014 0020"))  # remaining 20 > 16, topic claims 32 bytes
    with pytest.raises(ProtocolError, match="truncated PUBLISH topic"):
        d.next_packet()


# ------------------------------------------------------------ encode misuse


@pytest.mark.parametrize("packet,message", [
    (Publish("", b""), "empty topic"),
    (Publish("a/#", b""), "wildcard"),
    (Publish("a/+/b", b""), "wildcard"),
    (Publish("a\x00", b""), "NUL"),
    (Publish("a", "text"), "payload must be bytes"),
    (Publish("a", None, size=3), "payload must be bytes"),
    (Publish("a", b"", qos=1), "packet id"),
    (Publish("a", b"", qos=1, packet_id=0), "packet id"),
    (Publish("a", b"", qos=1, packet_id=65536), "packet id"),
    (Publish("a", b"", qos=0, packet_id=5), "packet id given"),
    (Publish("a", b"", qos=3, packet_id=5), "QoS"),
    (Publish("a", b"", dup=True), "DUP"),
    (Publish("a" * 65536, b""), "longer than 65535"),
    (Publish("a", b"x" * 268435453), "remaining length"),
    (Connect("c", password=b"p"), "password without username"),
    (Connect("c", will_qos=1), "without a will topic"),
    (Connect("c", will_topic="w/#"), "wildcard"),
    (Connect("c", will_topic="w", will_qos=3), "QoS"),
    (Connect("c", will_topic="w", will_payload=b"x" * 65536), "longer than 65535"),
    (Connect("c", keepalive=65536), "keepalive"),
    (Connect(b"c"), "must be str"),
    (Connack(return_code=6), "return code"),
    (Connack(session_present=True, return_code=1), "session present"),
    (Puback(0), "packet id"),
    (Subscribe(1, []), "at least one"),
    (Subscribe(1, [("a/#/b", 0)]), "'#'"),
    (Subscribe(1, [("a/b+", 0)]), "'+'"),
    (Subscribe(1, [("", 0)]), "empty topic filter"),
    (Subscribe(1, [("a", 3)]), "QoS"),
    (Unsubscribe(1, []), "at least one"),
    (Suback(1, [3]), "return code"),
    (Suback(1, []), "at least one"),
    ("not a packet", "not an MQTT packet"),
])
def test_encode_rejects_local_misuse_with_value_error(packet, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        encode(packet)


# ------------------------------------------------------------------ hypothesis

_text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                max_size=20)
_topic_names = st.text(
    st.characters(blacklist_characters="\x00+#", blacklist_categories=("Cs",)),
    min_size=1, max_size=30)
_levels = st.one_of(st.just("+"), st.text(
    st.characters(blacklist_characters="\x00+#/", blacklist_categories=("Cs",)), max_size=8))
_topic_filters = st.builds(
    lambda levels, hash_: "/".join(levels + (["#"] if hash_ else [])),
    st.lists(_levels, min_size=1, max_size=5), st.booleans(),
).filter(bool)
_ids = st.integers(1, 65535)
_bytes = st.binary(max_size=64)


@st.composite
def _publishes(draw):
    qos = draw(st.integers(0, 2))
    return Publish(draw(_topic_names), draw(st.binary(max_size=300)), qos, draw(st.booleans()),
                   draw(st.booleans()) if qos else False, draw(_ids) if qos else None)


@st.composite
def _connects(draw):
    will = draw(st.booleans())
    user = draw(st.one_of(st.none(), _text))
    return Connect(
        draw(_text), draw(st.integers(0, 65535)), draw(st.booleans()),
        draw(_topic_names) if will else None, draw(_bytes) if will else b"",
        draw(st.integers(0, 2)) if will else 0, draw(st.booleans()) if will else False,
        user, draw(st.one_of(st.none(), _bytes)) if user is not None else None)


PACKETS = st.one_of(
    _connects(),
    st.builds(lambda rc, sp: Connack(sp and rc == 0, rc), st.integers(0, 5), st.booleans()),
    _publishes(),
    st.builds(Puback, _ids),
    st.builds(Subscribe, _ids, st.lists(st.tuples(_topic_filters, st.integers(0, 2)),
                                        min_size=1, max_size=4)),
    st.builds(Suback, _ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4)),
    st.builds(Unsubscribe, _ids, st.lists(_topic_filters, min_size=1, max_size=4)),
    st.builds(Unsuback, _ids),
    st.just(Pingreq()), st.just(Pingresp()), st.just(Disconnect()),
)


@settings(max_examples=300, deadline=None)
@given(PACKETS)
def test_roundtrip_generated_packets(packet):
    wire = encode(packet)
    assert decode(wire) == packet


@settings(max_examples=100, deadline=None)
@given(st.lists(PACKETS, min_size=1, max_size=8), st.data())
def test_stream_of_packets_in_random_chunks(packets, data):
    wire = b"".join(encode(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    d = Decoder()
    got = []
    prev = 0
    for cut in cuts + [len(wire)]:
        d.feed(wire[prev:cut])
        prev = cut
        while (p := d.next_packet()) is not None:
            got.append(p)
    assert got == packets


def _drain(d):
    while d.next_packet() is not None:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 300))
def test_garbage_raises_only_protocol_error(data, max_packet):
    d = Decoder(max_packet)
    d.feed(data)
    try:
        _drain(d)
    except ProtocolError:
        pass
    try:
        decode(data)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=20), st.integers(1, 64))
def test_garbage_in_chunks_raises_only_protocol_error(chunks, max_packet):
    d = Decoder(max_packet)
    try:
        for chunk in chunks:
            d.feed(chunk)
            _drain(d)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(PACKETS, st.integers(0, 200), st.integers(0, 255))
def test_corrupted_packets_raise_only_protocol_error(packet, index, value):
    # flip one byte of a valid packet: near-valid input reaches deeper parser paths
    wire = bytearray(encode(packet))
    wire[index % len(wire)] = value
    try:
        decode(bytes(wire))
    except ProtocolError:
        pass


# --------------------------------------------------- independent peer: paho


def test_paho_client_speaks_our_wire_format():
    """paho-mqtt (a real MQTT client) against a socket we drive with our codec."""
    mqtt = pytest.importorskip("paho.mqtt.client")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-1",
                         protocol=mqtt.MQTTv311)
    client.will_set("devices/dev-1/status", b'{"online": false}', qos=1, retain=True)
    client.username_pw_set("user", "secret")
    received = []
    client.on_message = lambda cl, ud, msg: received.append((msg.topic, msg.payload, msg.qos))
    try:
        client.connect("127.0.0.1", port, keepalive=7)
        conn, _ = listener.accept()
        conn.settimeout(5)
        d = Decoder()

        def read_packet():
            while (p := d.next_packet()) is None:
                d.feed(conn.recv(4096))
            return p

        assert read_packet() == Connect("dev-1", 7, True, "devices/dev-1/status",
                                        b'{"online": false}', 1, True, "user", b"secret")
        conn.sendall(encode(Connack()))
        client.loop(timeout=1)
        assert client.is_connected()

        client.publish("devices/dev-1/telemetry", b"42", qos=1)
        client.loop_write()
        pub = read_packet()
        assert (pub.topic, pub.payload, pub.qos, pub.dup) == ("devices/dev-1/telemetry", b"42",
                                                              1, False)
        client.subscribe("devices/dev-1/cmd", qos=1)
        client.loop_write()
        sub = read_packet()
        assert sub.topics == [("devices/dev-1/cmd", 1)]

        conn.sendall(encode(Publish("devices/dev-1/cmd", b"x" * 300, qos=1, packet_id=9)))
        for _ in range(10):
            client.loop(timeout=0.2)
            if received:
                break
        assert received == [("devices/dev-1/cmd", b"x" * 300, 1)]
        assert read_packet() == Puback(9)
    finally:
        client.disconnect()
        client.loop(timeout=0.2)
        listener.close()
