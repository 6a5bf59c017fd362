# mqtt_codec inside the MicroPython VM (run by tests/micropython/run.mjs):
# the core (packet, bytes) vectors of tests/test_codec.py -- encode what the
# device sends, decode what a broker sends, the peer (mqtt_peer.py) reading
# the former -- streaming one byte at a time, malformed broker input and the
# oversize PUBLISH skip. Plain functions
# and asserts only; also runs under CPython (pytest collects it too).

import sys

try:
    import mqtt_codec  # noqa: F401 - probes whether firmware/ is on sys.path
except ImportError:  # CPython: firmware/ is not on sys.path yet
    sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/firmware")
    import mqtt_codec  # noqa: F401 - probes whether firmware/ is on sys.path

import mqtt_peer as peer  # the broker's side of the wire
from mqtt_codec import Decoder, ProtocolError, encode
from packets import (  # the firmware's packet tuples, by name
    Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Publish, Suback, Subscribe,
    Unsuback, Unsubscribe, as_tuple,
)


def H(s):
    return bytes.fromhex(s.replace(" ", ""))


def feed(d, data):
    # copy into the decoder's free space, as the client's reader does with
    # readinto (it must fit: the buffer never grows)
    space = d.space()
    assert len(data) <= len(space), "%d bytes do not fit in %d" % (len(data), len(space))
    space[:len(data)] = data
    d.wrote(len(data))


def decode(data):
    d = Decoder(len(data), len(data))  # a buffer that holds the packet whole
    feed(d, data)
    p = d.next_packet()
    assert p is not None, "incomplete"
    assert d.next_packet() is None
    return p


def fields(p):
    return as_tuple(p)


BOTH = [
    (Publish("a/b", b"hi"), H("3007 0003 612f62 6869")),
    (Publish("a/b", b"hi", qos=1, packet_id=10), H("3209 0003 612f62 000a 6869")),
    (Publish("a/b", b"hi", qos=1, retain=True, dup=True, packet_id=10),
     H("3b09 0003 612f62 000a 6869")),
    (Publish("a/b", b"", retain=True), H("3105 0003 612f62")),
    (Publish("A\U0002A6D4", b""), H("3007 0005 41f0aa9b94")),
    (Puback(1), H("4002 0001")),
]

# what the device sends
ENCODE = [
    (Connect("c"), H("100d 00044d515454 04 02 003c 0001 63")),
    (Connect("", keepalive=0, clean_session=False), H("100c 00044d515454 04 00 0000 0000")),
    (Connect("cid", keepalive=10, will_topic="w", will_payload=b"bye", will_qos=1,
             username="u", password=b"pw"),
     H("101e 00044d515454 04 ce 000a 0003 636964 0001 77 0003 627965 0001 75 0002 7077")),
    (Connect("c", will_topic="a/b", will_payload=b"x", will_qos=1, will_retain=True,
             username="u", password=b"p"),
     H("101b 00044d515454 04 ee 003c 0001 63 0003 612f62 0001 78 0001 75 0001 70")),
    (Subscribe(10, [("a/b", 1), ("c/d", 2)]), H("820e 000a 0003 612f62 01 0003 632f64 02")),
    (Subscribe(2, [("a/+", 0), ("#", 1)]), H("820c 0002 0003 612f2b 00 0001 23 01")),
    (Unsubscribe(10, ["a/b", "c/d"]), H("a20c 000a 0003 612f62 0003 632f64")),
    (Pingreq(), H("c000")),
    (Disconnect(), H("e000")),
] + BOTH

# what a broker sends
DECODE = [
    (Connack(), H("2002 0000")),
    (Connack(session_present=True), H("2002 0100")),
    (Connack(return_code=5), H("2002 0005")),
    (Suback(10, [0, 2, 0x80]), H("9005 000a 00 02 80")),
    (Unsuback(3), H("b002 0003")),
    (Pingresp(), H("d000")),
] + BOTH

MALFORMED = [
    "0000", "f000", "c000", "c100", "e000", "8208 0001 0003 612f23 01",
    "100d 00044d515454 04 02 003c 0001 63", "d800", "4102 0001", "3605 0003 612f62",
    "30ffffffff01", "3002 0000", "3005 0003 612f23", "3004 0002 fffe",
    "3005 0003 eda080", "3004 0002 c080", "3005 0003 e08080", "3006 0004 f4908080", "3004 0002 6100", "3207 0003 612f62 0000", "3003 0005 61",
    "3803 0001 61", "d001 00", "4003 000100", "2002 0200", "2002 0006", "2002 0105",
    "5002 0001", "9002 0001", "9003 0001 03", "b002 0000",
]


def test_encode_table():
    for packet, wire in ENCODE:
        assert encode(packet) == wire, repr(packet)


def test_the_peer_reads_what_the_device_sends():
    for packet, wire in ENCODE:
        assert fields(peer.decode(wire)) == fields(packet), repr(packet)


def test_decode_table():
    for packet, wire in DECODE:
        assert decode(wire) == packet, repr(packet)


def test_decoder_one_byte_at_a_time():
    d = Decoder()
    got = []
    for _, wire in DECODE:
        for i in range(len(wire)):
            feed(d, wire[i:i + 1])
            p = d.next_packet()
            if p is not None:
                got.append(p)
    assert got == [p for p, _ in DECODE]


def test_remaining_length_boundaries():
    for n, head in ((127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001")):
        p = Publish("t", b"x" * (n - 3))
        wire = encode(p)
        assert wire[:1 + len(head) // 2] == H("30" + head), n
        assert decode(wire) == p


def test_malformed_raise_protocol_error():
    for wire in MALFORMED:
        d = Decoder()
        feed(d, H(wire))
        try:
            d.next_packet()
        except ProtocolError:
            continue
        raise AssertionError("accepted " + wire)


def test_bad_utf8_is_protocol_error_not_unicode_error():
    try:
        decode(H("3004 0002 c328"))
    except ProtocolError as e:
        assert "UTF-8" in str(e)
    else:
        raise AssertionError("accepted bad UTF-8")


def test_local_misuse_raises_value_error():
    for p in (Publish("a/#", b""), Publish("a", b"", qos=1), Puback(0), Subscribe(1, []),
              Connect("c", password=b"p"), Subscribe(1, [("a/#/b", 0)]), Connack(), Suback(1, [0])):
        try:
            encode(p)
        except ValueError:
            continue
        raise AssertionError("encoded " + repr(p))


def test_oversize_publish_skipped():
    wire = encode(Publish("d/cmd", b"z" * 5000, qos=1, packet_id=7)) + H("d000")  # + PINGRESP
    d = Decoder(max_packet=64)
    got = []
    for i in range(0, len(wire), 300):
        chunk = memoryview(wire)[i:i + 300]
        while len(chunk):  # a 300-byte chunk into a 192-byte buffer: parse as room runs out
            space = d.space()
            n = min(len(space), len(chunk))
            space[:n] = chunk[:n]
            d.wrote(n)
            chunk = chunk[n:]
            p = d.next_packet()
            while p is not None:
                got.append(p)
                p = d.next_packet()
        assert len(d._buf) == 192  # never grows
    assert got == [Publish("d/cmd", None, 1, False, False, 7, 5000), Pingresp()]


def test_pseudo_random_garbage_only_protocol_error():
    # a small LCG instead of hypothesis: no random module needed
    seed = 12345
    for _ in range(300):
        n = seed % 40
        buf = bytearray(n)
        for i in range(n):
            seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
            buf[i] = seed >> 16 & 0xFF
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        d = Decoder(40)
        try:
            feed(d, bytes(buf))
            while d.next_packet() is not None:
                pass
        except ProtocolError:
            pass
