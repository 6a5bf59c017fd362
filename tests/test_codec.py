"""mqtt_codec under CPython. The device's codec speaks one direction each
way: it encodes what a client sends and decodes what a broker sends. Two
(packet, bytes) tables drive encode and decode; every malformed broker packet
(and a packet only a client sends) is rejected with ProtocolError (and
nothing else, even for random garbage in random chunks); oversize PUBLISH is
skipped. The other end of the wire is played by tests/micropython/mqtt_peer.py
(the full two-way codec) and, independently, by a real Mosquitto."""

import socket
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "micropython"))

import mqtt_codec as c  # noqa: E402
import mqtt_peer as peer  # noqa: E402
import packets  # noqa: E402
from mqtt_codec import Decoder, ProtocolError, encode  # noqa: E402
from packets import (  # noqa: E402 - the firmware's packet tuples, by name
    Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Publish, Suback, Subscribe,
    Unsuback, Unsubscribe, as_tuple,
)

H = bytes.fromhex


def feed(d, data):
    """Copy data into the decoder's free space, as the client's reader does
    with readinto (it must fit: the buffer never grows)."""
    space = d.space()
    assert len(data) <= len(space), f"{len(data)} bytes do not fit in {len(space)}"
    space[:len(data)] = data
    d.wrote(len(data))


def stream(d, data):
    """Feed data however big, parsing as room runs out (the reader's loop);
    returns the packets."""
    got = []
    mv = memoryview(data)
    while True:
        while (p := d.next_packet()) is not None:
            got.append(p)
        if not len(mv):
            return got
        space = d.space()
        n = min(len(space), len(mv))
        assert n, "decoder buffer full of an unparsed packet"
        space[:n] = mv[:n]
        d.wrote(n)
        mv = mv[n:]


def decode(data, max_packet=None):
    """Exactly one whole broker packet (ProtocolError if incomplete or trailing
    bytes); the decoder's buffer holds data whole unless max_packet is given."""
    d = Decoder(len(data) if max_packet is None else max_packet)
    got = stream(d, data)
    if not got:
        raise ProtocolError("incomplete packet")
    if len(got) > 1 or d._skip or d._pos < d._end:
        raise ProtocolError("trailing bytes after packet")
    return got[0]


def fields(p):
    """A packet of either module (the peer's object, the firmware's tuple) as the
    firmware's tuple, to compare across them."""
    return as_tuple(p)


def _publish_of_remaining_length(n):
    # PUBLISH QoS 0, topic "t" (3 bytes of variable header), payload fills the rest
    return Publish("t", b"x" * (n - 3))


def _varint_case(n, varint_hex):
    return (_publish_of_remaining_length(n), b"\x30" + H(varint_hex) + b"\x00\x01t" + b"x" * (n - 3))


# (id, packet, wire bytes). Vectors marked "spec" are the examples of the
# MQTT 3.1.1 specification (OASIS Standard, 29 October 2014).
PUBLISH_CASES = [
    ("publish-qos0", Publish("a/b", b"hi"), H("3007 0003 612f62 6869")),
    # spec 3.3.2.3 figure 3.11: topic "a/b", packet id 10
    ("publish-spec-qos1-id10", Publish("a/b", b"hi", qos=1, packet_id=10),
     H("3209 0003 612f62 000a 6869")),
    ("publish-qos1-dup-retain", Publish("a/b", b"hi", qos=1, retain=True, dup=True, packet_id=10),
     H("3b09 0003 612f62 000a 6869")),
    ("publish-retained-clear", Publish("a/b", b"", retain=True), H("3105 0003 612f62")),
    # spec 1.5.3 figure 1.3: "A\U0002A6D4" encodes as 00 05 41 F0 AA 9B 94
    ("publish-spec-utf8", Publish("A\U0002A6D4", b""), H("3007 0005 41f0aa9b94")),
    ("puback", Puback(1), H("4002 0001")),
    ("puback-ffff", Puback(65535), H("4002 ffff")),
    # spec 2.2.3 table 2.4: remaining-length boundaries
    ("remaining-length-127", *_varint_case(127, "7f")),
    ("remaining-length-128", *_varint_case(128, "8001")),
    ("remaining-length-16383", *_varint_case(16383, "ff7f")),
    ("remaining-length-16384", *_varint_case(16384, "808001")),
    ("remaining-length-2097151", *_varint_case(2097151, "ffff7f")),
    ("remaining-length-2097152", *_varint_case(2097152, "80808001")),
]

# What the device sends: encode() must produce these bytes.
ENCODE_CASES = [
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
    ("publish-qos2", Publish("a/b", b"", qos=2, packet_id=65535), H("3407 0003 612f62 ffff")),
    ("subscribe", Subscribe(1, [("a/#", 1)]), H("8208 0001 0003 612f23 01")),
    # spec 3.8.3 figure 3.22: "a/b" QoS 1 and "c/d" QoS 2, packet id 10
    ("subscribe-spec", Subscribe(10, [("a/b", 1), ("c/d", 2)]),
     H("820e 000a 0003 612f62 01 0003 632f64 02")),
    ("subscribe-plus", Subscribe(2, [("a/+", 0), ("#", 1)]),
     H("820c 0002 0003 612f2b 00 0001 23 01")),
    # spec 3.10.3 figure 3.30: "a/b" and "c/d"
    ("unsubscribe-spec", Unsubscribe(10, ["a/b", "c/d"]), H("a20c 000a 0003 612f62 0003 632f64")),
    ("pingreq", Pingreq(), H("c000")),
    ("disconnect", Disconnect(), H("e000")),
] + PUBLISH_CASES

# What a broker sends: the Decoder must return these packets.
DECODE_CASES = [
    ("connack", Connack(), H("2002 0000")),
    ("connack-session-present", Connack(session_present=True), H("2002 0100")),
    ("connack-refused-5", Connack(return_code=5), H("2002 0005")),
    # spec 3.9.3 figure 3.26: codes 0, 2 and failure
    ("suback-spec", Suback(10, [0, 2, 0x80]), H("9005 000a 00 02 80")),
    ("suback-one", Suback(1, [1]), H("9003 0001 01")),
    ("unsuback", Unsuback(3), H("b002 0003")),
    ("pingresp", Pingresp(), H("d000")),
] + PUBLISH_CASES


def _ids(cases):
    return [case[0] for case in cases]


@pytest.mark.parametrize("name,packet,wire", ENCODE_CASES, ids=_ids(ENCODE_CASES))
def test_encode_matches_table(name, packet, wire):
    assert encode(packet) == wire


@pytest.mark.parametrize("name,packet,wire", ENCODE_CASES, ids=_ids(ENCODE_CASES))
def test_the_peer_reads_what_the_device_sends(name, packet, wire):
    assert fields(peer.decode(wire)) == fields(packet)


@pytest.mark.parametrize("name,packet,wire", DECODE_CASES, ids=_ids(DECODE_CASES))
def test_decode_matches_table(name, packet, wire):
    assert decode(wire) == packet


SMALL = [case for case in DECODE_CASES if len(case[2]) < 300]


@pytest.mark.parametrize("name,packet,wire", SMALL, ids=_ids(SMALL))
def test_decoder_one_byte_at_a_time(name, packet, wire):
    d = Decoder()
    for i in range(len(wire)):
        assert d.next_packet() is None
        feed(d, wire[i:i + 1])
    assert d.next_packet() == packet
    assert d.next_packet() is None


def test_whole_table_in_one_stream():
    d = Decoder()
    got = stream(d, b"".join(w for _, _, w in SMALL))
    assert got == [p for _, p, _ in SMALL]


def test_largest_remaining_length_header_is_accepted_and_waits():
    d = Decoder(max_packet=1 << 16)
    feed(d, b"\x30\xff\xff\xff\x7f\x00\x01t")
    assert d.next_packet() is None  # 268,435,455 bytes announced, skipped as they come


def test_packet_tuples_carry_their_type():
    # packets are tuples (type number, fields...): no class per packet type
    assert Publish("a", b"x") != Publish("a", b"y")
    assert Publish("a", b"x") != Puback(1)
    assert Puback(1) != Unsuback(1) and Unsuback(1) == Unsuback(1)
    assert Subscribe(1, ["a"]) != Unsubscribe(1, ["a"])
    assert Pingreq() == Pingreq() and Pingreq() != Pingresp()
    assert decode(H("4002 0007")) == (4, 7)
    assert decode(H("3004 0001 61 78")) == (3, "a", b"x", 0, False, False, None, None)


# ------------------------------------------------------------ malformed input

MALFORMED = [
    ("0000", "unknown packet type 0"),
    ("f000", "unknown packet type 15"),
    # packets only a client sends are never valid from a broker
    ("100d 00044d515454 04 02 003c 0001 63", "broker sent CONNECT, which only a client sends"),
    ("8208 0001 0003 612f23 01", "broker sent SUBSCRIBE"),
    ("a207 0003 0003 612f23", "broker sent UNSUBSCRIBE"),
    ("c000", "broker sent PINGREQ"),
    ("c100", "broker sent PINGREQ"),
    ("e000", "broker sent DISCONNECT"),
    ("d800", "reserved flags"),
    ("d100", "reserved flags"),
    ("4102 0001", "reserved flags"),
    ("2202 0000", "reserved flags"),
    ("9803 0001 00", "reserved flags"),
    ("b102 0001", "reserved flags"),
    ("3605 0003 612f62", "QoS 3"),
    ("30ffffffff01", "exceeds 4 bytes"),
    ("3002 0000", "empty topic"),
    ("3005 0003 612f23", "wildcard"),
    ("3005 0003 612f2b", "wildcard"),
    ("3004 0002 fffe", "UTF-8"),
    ("3005 0003 eda080", "UTF-8|surrogate"),
    ("3004 0002 c080", "bad UTF-8"),  # overlong NUL
    ("3005 0003 e08080", "bad UTF-8"),  # overlong NUL, 3 bytes
    ("3006 0004 f4908080", "bad UTF-8"),  # past U+10FFFF
    ("3004 0002 6100", "NUL"),
    ("3205 0003 612f62", "truncated PUBLISH packet id"),
    ("3207 0003 612f62 0000", "packet id 0"),
    ("3003 0005 61", "truncated PUBLISH topic"),
    ("3001 00", "truncated PUBLISH topic length"),
    ("3803 0001 61", "DUP set at QoS 0"),
    ("d001 00", "remaining length must be 0"),
    ("4003 000100", "remaining length must be 2"),
    ("4001 00", "remaining length must be 2"),
    ("4002 0000", "packet id 0"),
    ("b003 000100", "remaining length must be 2"),
    ("b002 0000", "packet id 0"),
    ("2003 000000", "remaining length must be 2"),
    ("2001 00", "remaining length must be 2"),
    ("2002 0200", "CONNACK reserved flag"),
    ("2002 0006", "reserved"),
    ("2002 0105", "session present with return code"),
    ("5002 0001", "QoS 2 is not supported"),
    ("6202 0001", "QoS 2 is not supported"),
    ("7002 0001", "QoS 2 is not supported"),
    ("9002 0001", "without return codes"),
    ("9001 00", "truncated SUBACK packet id"),
    ("9003 0000 00", "packet id 0"),
    ("9003 0001 03", "reserved"),
    ("9004 0001 00 81", "reserved"),
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
            feed(d, data[i:i + 1])
            assert d.next_packet() is None


def test_non_publish_over_max_packet_is_protocol_error():
    d = Decoder(max_packet=10)
    feed(d, peer.encode(peer.Suback(1, [0] * 20))[:3])
    with pytest.raises(ProtocolError, match="SUBACK of 22 bytes exceeds max_packet 10"):
        d.next_packet()


# ------------------------------------------------------------- oversize PUBLISH


@pytest.mark.parametrize("chunk", [1, 7, 100, 100000])
def test_oversize_publish_is_skipped_not_buffered(chunk):
    big = Publish("dev/cmd", bytes(range(256)) * 40, qos=1, retain=True, packet_id=77)
    wire = encode(big) + encode(Publish("dev/cmd", b"after", qos=1, packet_id=78))
    d = Decoder(max_packet=100)
    got = []
    for i in range(0, len(wire), chunk):
        got += stream(d, wire[i:i + chunk])
        assert len(d._buf) == 192  # never grows: the 10 KB payload is not held
    assert got == [
        Publish("dev/cmd", None, qos=1, retain=True, packet_id=77, size=10240),
        Publish("dev/cmd", b"after", qos=1, packet_id=78),
    ]


@pytest.mark.parametrize("chunk", [1, 100, 5000])
def test_publish_bigger_than_the_buffer_is_read_into_its_own_payload(chunk):
    # up to max_packet, a PUBLISH that does not fit in the fixed buffer is
    # whole: topic and id parsed in the buffer, the payload read straight
    # into one bytearray (space() is its rest), the buffer never grows
    big = Publish("dev/cmd", bytes(range(256)) * 4, qos=1, packet_id=9)
    wire = encode(big) + peer.encode(peer.Pingresp())
    d = Decoder(max_packet=2000, size=64)
    got = []
    for i in range(0, len(wire), chunk):
        got += stream(d, wire[i:i + chunk])
        assert len(d._buf) == 64
    assert got == [big, Pingresp()]
    assert isinstance(got[0][2], bytearray) and len(got[0][2]) == 1024


def test_big_publish_behind_other_packets_is_read_whole():
    # its topic arrives at the end of the buffer, behind a parsed packet:
    # room is made by moving it to the front, not refused
    d = Decoder(max_packet=2000, size=64)
    big = Publish("t" * 40, b"y" * 500, qos=1, packet_id=3)
    wire = peer.encode(peer.Pingresp()) * 10 + encode(big)
    assert stream(d, wire[:30]) == [Pingresp()] * 10
    assert stream(d, wire[30:]) == [big]


def test_payload_is_read_in_place():
    d = Decoder(max_packet=2000, size=64)
    wire = encode(Publish("t", b"x" * 300))
    feed(d, wire[:10])
    assert d.next_packet() is None
    space = d.space()
    assert len(space) == len(wire) - 10  # the rest of the payload, not the buffer
    space[:] = wire[10:]
    d.wrote(len(space))
    assert d.next_packet() == Publish("t", b"x" * 300)


def test_non_publish_bigger_than_the_buffer_is_protocol_error():
    d = Decoder(max_packet=4096, size=16)
    feed(d, peer.encode(peer.Suback(1, [0] * 20))[:3])
    with pytest.raises(ProtocolError, match="SUBACK of 22 bytes exceeds max_packet 11"):
        d.next_packet()


def test_oversize_publish_qos0_returned_when_fully_skipped():
    d = Decoder(max_packet=16)
    wire = encode(Publish("t", b"z" * 50))
    feed(d, wire[:20])
    assert d.next_packet() is None  # 33 payload bytes still to skip
    assert stream(d, wire[20:]) == [Publish("t", None, size=50)]  # 35 bytes > the 21-byte buffer
    assert d.next_packet() is None


def test_oversize_publish_with_huge_topic_is_protocol_error():
    d = Decoder(max_packet=16)
    feed(d, encode(Publish("t" * 40, b"z" * 10))[:6])
    with pytest.raises(ProtocolError, match="topic longer than max_packet"):
        d.next_packet()


def test_oversize_publish_topic_beyond_remaining_length():
    d = Decoder(max_packet=16)
    feed(d, H("3014 0020"))  # remaining 20 > 16, topic claims 32 bytes
    with pytest.raises(ProtocolError, match="truncated PUBLISH topic"):
        d.next_packet()


def test_compacting_keeps_the_stream_intact():
    # Many packets through one decoder: the parsed prefix is dropped in place.
    d = Decoder()
    wire = b"".join(encode(Publish("t/%d" % i, b"p" * (i % 50), 1, packet_id=i + 1)) for i in range(300))
    got = []
    for i in range(0, len(wire), 333):
        got += stream(d, wire[i:i + 333])
    assert len(d._buf) == 192
    assert [(p[1], len(p[2]), p[6]) for p in got] == [("t/%d" % i, i % 50, i + 1) for i in range(300)]


# ------------------------------------------------------------ encode misuse


@pytest.mark.parametrize("packet,message", [
    (Publish("", b""), "empty topic"),
    (Publish("a/#", b""), "wildcard"),
    (Publish("a/+/b", b""), "wildcard"),
    (Publish("a\x00", b""), "NUL"),
    (Publish(b"a", b""), "topic must be str"),
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
    (Connect("c", will_topic="w", will_payload="text"), "will payload must be bytes"),
    (Connect("c", keepalive=65536), "keepalive"),
    (Connect(b"c"), "must be str"),
    (Connect("c", username="u", password="pw"), "password must be bytes"),
    (Puback(0), "packet id"),
    (Subscribe(1, []), "at least one"),
    (Subscribe(1, [("a/#/b", 0)]), "'#'"),
    (Subscribe(1, [("a/b+", 0)]), "'+'"),
    (Subscribe(1, [("", 0)]), "empty topic filter"),
    (Subscribe(1, [("a\x00", 0)]), "NUL"),
    (Subscribe(1, [(b"a", 0)]), "filter must be str"),
    (Subscribe(1, [("a", 3)]), "QoS"),
    (Subscribe(0, [("a", 0)]), "packet id"),
    (Unsubscribe(1, []), "at least one"),
    (Unsubscribe(1, ["a/#/b"]), "'#'"),
    # packets only a broker sends
    (Connack(), "not a packet the device sends"),
    (Suback(1, [0]), "not a packet the device sends"),
    (Unsuback(1), "not a packet the device sends"),
    (Pingresp(), "not a packet the device sends"),
    ("not a packet", "not a packet the device sends"),
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


def _publishes(m, max_qos):
    @st.composite
    def make(draw):
        qos = draw(st.integers(0, max_qos))
        return m.Publish(draw(_topic_names), draw(st.binary(max_size=300)), qos, draw(st.booleans()),
                         draw(st.booleans()) if qos else False, draw(_ids) if qos else None)

    return make()


@st.composite
def _connects(draw):
    will = draw(st.booleans())
    user = draw(st.one_of(st.none(), _text))
    return Connect(
        draw(_text), draw(st.integers(0, 65535)), draw(st.booleans()),
        draw(_topic_names) if will else None, draw(_bytes) if will else b"",
        draw(st.integers(0, 2)) if will else 0, draw(st.booleans()) if will else False,
        user, draw(st.one_of(st.none(), _bytes)) if user is not None else None)


# What the device sends (its own classes, for encode()).
CLIENT_PACKETS = st.one_of(
    _connects(),
    _publishes(packets, 2),
    st.builds(Puback, _ids),
    st.builds(Subscribe, _ids, st.lists(st.tuples(_topic_filters, st.integers(0, 2)),
                                        min_size=1, max_size=4)),
    st.builds(Unsubscribe, _ids, st.lists(_topic_filters, min_size=1, max_size=4)),
    st.just(Pingreq()), st.just(Disconnect()),
)

# What a broker sends (the peer's classes, for peer.encode()); QoS 2 is never
# delivered to a client that subscribes at QoS <= 1.
BROKER_PACKETS = st.one_of(
    st.builds(lambda rc, sp: peer.Connack(sp and rc == 0, rc), st.integers(0, 5), st.booleans()),
    _publishes(peer, 1),
    st.builds(peer.Puback, _ids),
    st.builds(peer.Suback, _ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=4)),
    st.builds(peer.Unsuback, _ids),
    st.just(peer.Pingresp()),
)


@settings(max_examples=300, deadline=None)
@given(CLIENT_PACKETS)
def test_what_the_device_encodes_the_peer_decodes(packet):
    assert fields(peer.decode(encode(packet))) == fields(packet)


@settings(max_examples=300, deadline=None)
@given(BROKER_PACKETS)
def test_what_a_broker_encodes_the_device_decodes(packet):
    assert fields(decode(peer.encode(packet))) == fields(packet)


@settings(max_examples=100, deadline=None)
@given(st.lists(BROKER_PACKETS, min_size=1, max_size=8), st.data())
def test_stream_of_packets_in_random_chunks(packets, data):
    wire = b"".join(peer.encode(p) for p in packets)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    d = Decoder()
    got = []
    prev = 0
    for cut in cuts + [len(wire)]:
        got += stream(d, wire[prev:cut])
        prev = cut
    assert [fields(p) for p in got] == [fields(p) for p in packets]


def _drain(d):
    while d.next_packet() is not None:
        pass


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 300))
def test_garbage_raises_only_protocol_error(data, max_packet):
    d = Decoder(max_packet)
    try:
        stream(d, data)
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
            stream(d, chunk)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(BROKER_PACKETS, st.integers(0, 200), st.integers(0, 255))
def test_corrupted_packets_raise_only_protocol_error(packet, index, value):
    # flip one byte of a valid packet: near-valid input reaches deeper parser paths
    wire = bytearray(peer.encode(packet))
    wire[index % len(wire)] = value
    try:
        decode(bytes(wire))
    except ProtocolError:
        pass


# ------------------------------------------------ independent peer: Mosquitto


def test_mosquitto_speaks_our_wire_format(broker):
    """The device's side of a whole session against a real Mosquitto: what we
    encode, it accepts; what it sends, we decode."""
    conn = socket.create_connection((broker.host, broker.port), timeout=5)
    d = Decoder()

    def read_packet():
        while (p := d.next_packet()) is None:
            n = conn.recv_into(d.space())
            assert n, "the broker closed the connection"
            d.wrote(n)
        return p

    try:
        conn.sendall(encode(Connect("dev-1", 7, True, "devices/dev-1/status", b'{"online":false}', 1, True,
                                    "user")))
        assert read_packet() == Connack(False, 0)
        conn.sendall(encode(Subscribe(1, [("devices/dev-1/cmd", 1), ("devices/+/x", 0)])))
        assert read_packet() == Suback(1, [1, 0])

        conn.sendall(encode(Publish("devices/dev-1/cmd", b"x" * 300, 1, False, False, 9)))
        got = [read_packet(), read_packet()]  # our PUBACK and the broker's copy to us, either order
        assert Puback(9) in got
        copy = next(p for p in got if p[0] == 3)  # the PUBLISH
        assert copy[1:6] == ("devices/dev-1/cmd", b"x" * 300, 1, False, False)
        conn.sendall(encode(Puback(copy[6])))

        conn.sendall(encode(Publish("devices/dev-1/x", "ü".encode(), 0, True)))
        assert read_packet() == Publish("devices/dev-1/x", "ü".encode(), 0, False)
        conn.sendall(encode(Pingreq()))
        assert read_packet() == Pingresp()
        conn.sendall(encode(Unsubscribe(2, ["devices/+/x"])))
        assert read_packet() == Unsuback(2)
        conn.sendall(encode(Publish("devices/dev-1/x", b"", 0, True)))  # clear the retained one
        conn.sendall(encode(Disconnect()))
        conn.settimeout(5)
        assert conn.recv(1) == b"", "the broker closes after DISCONNECT"
    finally:
        conn.close()
