# mqtt_codec.py - MQTT 3.1.1 packets: plain classes, encode() and a streaming Decoder.
#
# Pure and sans-I/O: bytes in, packet objects out, and packet objects to bytes.
# Must NOT do I/O, read a clock, keep module-level mutable state, or use assert
# for protocol checks. Runs on MicroPython >= 1.22 and CPython alike.
#
# Whose fault is it:
#   ProtocolError - the PEER sent bytes that break MQTT 3.1.1 (drop the link).
#   ValueError    - local misuse: we were asked to encode something invalid.
#
# Packet classes work in both directions (client and server packets), so the
# tests and the emulator can speak both sides. QoS 2 flow packets (PUBREC,
# PUBREL, PUBCOMP) are not modelled: this client never uses QoS 2, the
# Decoder rejects them with ProtocolError.

import struct

try:
    from micropython import const
except ImportError:  # CPython outside the emulator

    def const(x):
        return x


CONNECT = 1
CONNACK = 2
PUBLISH = 3
PUBACK = 4
PUBREC = 5
PUBREL = 6
PUBCOMP = 7
SUBSCRIBE = 8
SUBACK = 9
UNSUBSCRIBE = 10
UNSUBACK = 11
PINGREQ = 12
PINGRESP = 13
DISCONNECT = 14

MAX_REMAINING_LENGTH = const(268435455)  # 4-byte varint limit

_PROTOCOL_LEVEL = const(4)  # MQTT 3.1.1
_MAX_STRING = const(65535)
_MAX_PACKET_ID = const(65535)

# Fixed-header flag bits that MQTT 3.1.1 table 2.2 requires, per packet type
# (PUBLISH carries DUP/QoS/RETAIN there and is checked separately).
_REQUIRED_FLAGS = (None, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0)
_NAMES = (
    "reserved 0", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL",
    "PUBCOMP", "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ",
    "PINGRESP", "DISCONNECT", "reserved 15",
)
_SUBACK_CODES = (0, 1, 2, 0x80)


class ProtocolError(Exception):
    """The peer sent bytes that break MQTT 3.1.1; the message says what."""


# ---------------------------------------------------------------- packets


class Record:
    # Base of packets here and of session events in mqtt_session.py.
    # Subclasses list their attribute names in _FIELDS; equality and repr
    # are derived from it (MicroPython has no dataclasses).
    _FIELDS = ()  # type: tuple[str, ...]

    def __eq__(self, other):
        if type(other) is not type(self):
            return False
        for name in self._FIELDS:
            if getattr(self, name) != getattr(other, name):
                return False
        return True

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "%s(%s)" % (
            type(self).__name__,
            ", ".join("%s=%r" % (n, getattr(self, n)) for n in self._FIELDS),
        )


class Connect(Record):
    _FIELDS = ("client_id", "keepalive", "clean_session", "will_topic", "will_payload",
               "will_qos", "will_retain", "username", "password")

    def __init__(self, client_id, keepalive=60, clean_session=True, will_topic=None,
                 will_payload=b"", will_qos=0, will_retain=False, username=None,
                 password=None):
        self.client_id = client_id
        self.keepalive = keepalive
        self.clean_session = clean_session
        self.will_topic = will_topic
        self.will_payload = will_payload
        self.will_qos = will_qos
        self.will_retain = will_retain
        self.username = username
        self.password = password


class Connack(Record):
    _FIELDS = ("session_present", "return_code")

    def __init__(self, session_present=False, return_code=0):
        self.session_present = session_present
        self.return_code = return_code


class Publish(Record):
    # size is set only by the Decoder for an oversize PUBLISH (payload None).
    _FIELDS = ("topic", "payload", "qos", "retain", "dup", "packet_id", "size")

    def __init__(self, topic, payload, qos=0, retain=False, dup=False, packet_id=None,
                 size=None):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.size = size


class Puback(Record):
    _FIELDS = ("packet_id",)

    def __init__(self, packet_id):
        self.packet_id = packet_id


class Subscribe(Record):
    _FIELDS = ("packet_id", "topics")  # topics: list of (filter, qos)

    def __init__(self, packet_id, topics):
        self.packet_id = packet_id
        self.topics = topics


class Suback(Record):
    _FIELDS = ("packet_id", "return_codes")  # list of 0, 1, 2 or 0x80

    def __init__(self, packet_id, return_codes):
        self.packet_id = packet_id
        self.return_codes = return_codes


class Unsubscribe(Record):
    _FIELDS = ("packet_id", "topics")  # topics: list of filter strings

    def __init__(self, packet_id, topics):
        self.packet_id = packet_id
        self.topics = topics


class Unsuback(Record):
    _FIELDS = ("packet_id",)

    def __init__(self, packet_id):
        self.packet_id = packet_id


class Pingreq(Record):
    pass


class Pingresp(Record):
    pass


class Disconnect(Record):
    pass


# ------------------------------------------------------- shared validation
# Each returns an error message or None, so the encoder can raise ValueError
# and the decoder ProtocolError for the same rule.


def _topic_name_error(topic):
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return "wildcard in topic name %r" % topic
    if "\x00" in topic:
        return "NUL character in topic"
    return None


def _topic_filter_error(topic):
    if not topic:
        return "empty topic filter"
    if "\x00" in topic:
        return "NUL character in topic filter"
    if "+" in topic or "#" in topic:
        levels = topic.split("/")
        last = len(levels) - 1
        for i, level in enumerate(levels):
            if "#" in level and (level != "#" or i != last):
                return "'#' must be a whole, final level in %r" % topic
            if "+" in level and level != "+":
                return "'+' must be a whole level in %r" % topic
    return None


# ----------------------------------------------------------------- encoding


def _varint(n):
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise ValueError("remaining length %d out of range" % n)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return out


def _u16(n, what):
    if not 0 <= n <= 0xFFFF:
        raise ValueError("%s %r out of range 0..65535" % (what, n))
    return struct.pack("!H", n)


def _packet_id(pid):
    if not isinstance(pid, int) or not 1 <= pid <= _MAX_PACKET_ID:
        raise ValueError("packet id must be 1..65535, got %r" % (pid,))
    return struct.pack("!H", pid)


def _blob(data, what):
    # length-prefixed binary data (will payload, password)
    if not isinstance(data, (bytes, bytearray)):
        raise ValueError("%s must be bytes" % what)
    if len(data) > _MAX_STRING:
        raise ValueError("%s longer than 65535 bytes" % what)
    return struct.pack("!H", len(data)) + data


def _string(s, what):
    if not isinstance(s, str):
        raise ValueError("%s must be str" % what)
    return _blob(s.encode(), what)


def _check_qos(qos, top, what):
    if qos not in (0, 1, 2) or qos > top:
        raise ValueError("bad %s QoS %r" % (what, qos))


def _encode_connect(p):
    flags = 0x02 if p.clean_session else 0
    parts = [b"\x00\x04MQTT", None, _u16(p.keepalive, "keepalive"),
             _string(p.client_id, "client id")]
    if p.will_topic is not None:
        err = _topic_name_error(p.will_topic)
        if err:
            raise ValueError(err)
        _check_qos(p.will_qos, 2, "will")
        flags |= 0x04 | (p.will_qos << 3) | (0x20 if p.will_retain else 0)
        parts.append(_string(p.will_topic, "will topic"))
        parts.append(_blob(p.will_payload, "will payload"))
    elif p.will_qos or p.will_retain:
        raise ValueError("will QoS/retain given without a will topic")
    if p.username is not None:
        flags |= 0x80
        parts.append(_string(p.username, "username"))
    if p.password is not None:
        if p.username is None:
            raise ValueError("password without username")
        flags |= 0x40
        parts.append(_blob(p.password, "password"))
    parts[1] = bytes((_PROTOCOL_LEVEL, flags))
    return 0x10, parts


def _encode_publish(p):
    err = _topic_name_error(p.topic) if isinstance(p.topic, str) else "topic must be str"
    if err:
        raise ValueError(err)
    _check_qos(p.qos, 2, "PUBLISH")
    if p.payload is None or not isinstance(p.payload, (bytes, bytearray, memoryview)):
        raise ValueError("payload must be bytes")
    flags = (p.qos << 1) | (1 if p.retain else 0)
    if p.dup:
        if p.qos == 0:
            raise ValueError("DUP set on a QoS 0 PUBLISH")
        flags |= 0x08
    parts = [_string(p.topic, "topic")]
    if p.qos:
        parts.append(_packet_id(p.packet_id))
    elif p.packet_id is not None:
        raise ValueError("packet id given for a QoS 0 PUBLISH")
    parts.append(p.payload)
    return 0x30 | flags, parts


def _encode_subscribe(p):
    if not p.topics:
        raise ValueError("SUBSCRIBE needs at least one topic filter")
    parts = [_packet_id(p.packet_id)]
    for topic, qos in p.topics:
        err = _topic_filter_error(topic) if isinstance(topic, str) else "filter must be str"
        if err:
            raise ValueError(err)
        _check_qos(qos, 2, "SUBSCRIBE")
        parts.append(_string(topic, "topic filter"))
        parts.append(bytes((qos,)))
    return 0x82, parts


def _encode_unsubscribe(p):
    if not p.topics:
        raise ValueError("UNSUBSCRIBE needs at least one topic filter")
    parts = [_packet_id(p.packet_id)]
    for topic in p.topics:
        err = _topic_filter_error(topic) if isinstance(topic, str) else "filter must be str"
        if err:
            raise ValueError(err)
        parts.append(_string(topic, "topic filter"))
    return 0xA2, parts


def _encode_suback(p):
    if not p.return_codes:
        raise ValueError("SUBACK needs at least one return code")
    for rc in p.return_codes:
        if rc not in _SUBACK_CODES:
            raise ValueError("bad SUBACK return code %r" % (rc,))
    return 0x90, [_packet_id(p.packet_id), bytes(p.return_codes)]


def _encode_connack(p):
    if not 0 <= p.return_code <= 5:
        raise ValueError("bad CONNACK return code %r" % (p.return_code,))
    if p.session_present and p.return_code:
        raise ValueError("session present with a refused CONNACK")
    return 0x20, [bytes((1 if p.session_present else 0, p.return_code))]


def encode(packet):
    """Return the wire bytes of one packet object. ValueError if it is invalid."""
    t = type(packet)
    if t is Publish:
        first, parts = _encode_publish(packet)
    elif t is Puback:
        first, parts = 0x40, [_packet_id(packet.packet_id)]
    elif t is Pingreq:
        return b"\xc0\x00"
    elif t is Pingresp:
        return b"\xd0\x00"
    elif t is Connect:
        first, parts = _encode_connect(packet)
    elif t is Connack:
        first, parts = _encode_connack(packet)
    elif t is Subscribe:
        first, parts = _encode_subscribe(packet)
    elif t is Suback:
        first, parts = _encode_suback(packet)
    elif t is Unsubscribe:
        first, parts = _encode_unsubscribe(packet)
    elif t is Unsuback:
        first, parts = 0xB0, [_packet_id(packet.packet_id)]
    elif t is Disconnect:
        return b"\xe0\x00"
    else:
        raise ValueError("not an MQTT packet: %r" % (packet,))
    n = 0
    for part in parts:
        n += len(part)
    head = _varint(n)
    out = bytearray(1 + len(head) + n)
    out[0] = first
    pos = 1 + len(head)
    out[1:pos] = head
    for part in parts:
        end = pos + len(part)
        out[pos:end] = part
        pos = end
    return bytes(out)


# ----------------------------------------------------------------- decoding
# Parsers work on (buf, pos, end) of a complete packet body and return the
# value and the new position; any shortfall is the peer's fault.


def _get_u16(buf, pos, end, what):
    if pos + 2 > end:
        raise ProtocolError("truncated %s" % what)
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def _get_blob(buf, pos, end, what):
    n, pos = _get_u16(buf, pos, end, what + " length")
    if pos + n > end:
        raise ProtocolError("truncated %s" % what)
    return bytes(buf[pos:pos + n]), pos + n


def _get_string(buf, pos, end, what):
    raw, pos = _get_blob(buf, pos, end, what)
    try:
        s = raw.decode()
    except ValueError:  # UnicodeError on MicroPython, UnicodeDecodeError on CPython
        raise ProtocolError("bad UTF-8 in %s" % what)
    if "\x00" in s:
        raise ProtocolError("NUL character in %s" % what)
    # MicroPython does not reject UTF-16 surrogates (ED A0..BF xx); CPython does.
    i = raw.find(b"\xed")
    while i >= 0:
        if i + 1 < len(raw) and raw[i + 1] >= 0xA0:
            raise ProtocolError("UTF-16 surrogate in %s" % what)
        i = raw.find(b"\xed", i + 1)
    return s, pos


def _get_packet_id(buf, pos, end, what):
    pid, pos = _get_u16(buf, pos, end, what + " packet id")
    if pid == 0:
        raise ProtocolError("%s with packet id 0" % what)
    return pid, pos


def _get_publish_head(first, buf, pos, end):
    # topic and packet id of a PUBLISH; returns (topic, qos, packet_id, pos)
    qos = (first >> 1) & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    if qos == 0 and first & 0x08:
        raise ProtocolError("PUBLISH with DUP set at QoS 0")
    topic, pos = _get_string(buf, pos, end, "PUBLISH topic")
    err = _topic_name_error(topic)
    if err:
        raise ProtocolError("PUBLISH " + err)
    pid = None
    if qos:
        pid, pos = _get_packet_id(buf, pos, end, "PUBLISH")
    return topic, qos, pid, pos


def _parse_connect(buf, pos, end):
    name, pos = _get_blob(buf, pos, end, "protocol name")
    if name != b"MQTT":
        raise ProtocolError("protocol name %r is not MQTT" % name)
    if pos + 2 > end:
        raise ProtocolError("truncated CONNECT")
    level, flags = buf[pos], buf[pos + 1]
    pos += 2
    if level != _PROTOCOL_LEVEL:
        raise ProtocolError("unsupported protocol level %d" % level)
    if flags & 0x01:
        raise ProtocolError("CONNECT reserved flag set")
    keepalive, pos = _get_u16(buf, pos, end, "keepalive")
    client_id, pos = _get_string(buf, pos, end, "client id")
    p = Connect(client_id, keepalive, bool(flags & 0x02))
    will_qos = (flags >> 3) & 3
    if flags & 0x04:
        if will_qos == 3:
            raise ProtocolError("will QoS 3")
        p.will_topic, pos = _get_string(buf, pos, end, "will topic")
        err = _topic_name_error(p.will_topic)
        if err:
            raise ProtocolError("will " + err)
        p.will_payload, pos = _get_blob(buf, pos, end, "will payload")
        p.will_qos = will_qos
        p.will_retain = bool(flags & 0x20)
    elif flags & 0x38:
        raise ProtocolError("will QoS/retain set without will flag")
    if flags & 0x80:
        p.username, pos = _get_string(buf, pos, end, "username")
    elif flags & 0x40:
        raise ProtocolError("password flag without username flag")
    if flags & 0x40:
        p.password, pos = _get_blob(buf, pos, end, "password")
    if pos != end:
        raise ProtocolError("trailing bytes in CONNECT")
    return p


def _parse_connack(buf, pos, end):
    if end - pos != 2:
        raise ProtocolError("CONNACK remaining length must be 2")
    ack, rc = buf[pos], buf[pos + 1]
    if ack & 0xFE:
        raise ProtocolError("CONNACK reserved flag set")
    if rc > 5:
        raise ProtocolError("CONNACK return code %d is reserved" % rc)
    if ack and rc:
        raise ProtocolError("CONNACK session present with return code %d" % rc)
    return Connack(bool(ack), rc)


def _parse_subscribe(buf, pos, end, first):
    pid, pos = _get_packet_id(buf, pos, end, _NAMES[first >> 4])
    topics = []
    while pos < end:
        topic, pos = _get_string(buf, pos, end, "topic filter")
        err = _topic_filter_error(topic)
        if err:
            raise ProtocolError(err)
        if first >> 4 == SUBSCRIBE:
            if pos >= end:
                raise ProtocolError("truncated SUBSCRIBE QoS")
            qos = buf[pos]
            pos += 1
            if qos > 2:
                raise ProtocolError("SUBSCRIBE requested QoS byte 0x%02x" % qos)
            topics.append((topic, qos))
        else:
            topics.append(topic)
    if not topics:
        raise ProtocolError("%s without topic filters" % _NAMES[first >> 4])
    if first >> 4 == SUBSCRIBE:
        return Subscribe(pid, topics)
    return Unsubscribe(pid, topics)


def _parse_suback(buf, pos, end):
    pid, pos = _get_packet_id(buf, pos, end, "SUBACK")
    codes = list(buf[pos:end])
    if not codes:
        raise ProtocolError("SUBACK without return codes")
    for rc in codes:
        if rc not in _SUBACK_CODES:
            raise ProtocolError("SUBACK return code 0x%02x is reserved" % rc)
    return Suback(pid, codes)


def _parse_id_only(buf, pos, end, cls, what):
    if end - pos != 2:
        raise ProtocolError("%s remaining length must be 2" % what)
    pid, pos = _get_packet_id(buf, pos, end, what)
    return cls(pid)


def _parse(first, buf, pos, end):
    """Parse one complete packet whose body is buf[pos:end]."""
    kind = first >> 4
    if kind == PUBLISH:
        topic, qos, pid, pos = _get_publish_head(first, buf, pos, end)
        return Publish(topic, bytes(buf[pos:end]), qos, bool(first & 1),
                       bool(first & 8), pid)
    if kind == PUBACK:
        return _parse_id_only(buf, pos, end, Puback, "PUBACK")
    if kind in (PINGREQ, PINGRESP, DISCONNECT):
        if end != pos:
            raise ProtocolError("%s remaining length must be 0" % _NAMES[kind])
        return (Pingreq, Pingresp, Disconnect)[kind - PINGREQ]()
    if kind == CONNACK:
        return _parse_connack(buf, pos, end)
    if kind == SUBACK:
        return _parse_suback(buf, pos, end)
    if kind == UNSUBACK:
        return _parse_id_only(buf, pos, end, Unsuback, "UNSUBACK")
    if kind == SUBSCRIBE or kind == UNSUBSCRIBE:
        return _parse_subscribe(buf, pos, end, first)
    if kind == CONNECT:
        return _parse_connect(buf, pos, end)
    raise ProtocolError("unexpected %s" % _NAMES[kind])


def _check_first_byte(first):
    kind = first >> 4
    if kind == 0 or kind == 15:
        raise ProtocolError("unknown packet type %d" % kind)
    if kind in (PUBREC, PUBREL, PUBCOMP):
        raise ProtocolError("%s: QoS 2 is not supported" % _NAMES[kind])
    want = _REQUIRED_FLAGS[kind]
    if want is not None and first & 0x0F != want:
        raise ProtocolError("%s with reserved flags 0x%x" % (_NAMES[kind], first & 0x0F))


class Decoder:
    """Streaming decoder: feed() bytes as they arrive, next_packet() until None.

    A PUBLISH larger than max_packet does not kill the connection: its topic
    and packet id are parsed, the payload is discarded as it arrives, and a
    Publish with payload None and size = payload length is returned. Any
    other packet over max_packet is a ProtocolError. After a ProtocolError
    the decoder is unusable (the link must be dropped).
    """

    def __init__(self, max_packet=4096):
        self.max_packet = max_packet
        self._buf = bytearray()  # unparsed bytes start at self._pos
        self._pos = 0
        self._skip = 0  # oversize payload bytes still to discard
        self._oversize = None  # Publish returned once the skipping is done

    def feed(self, data):
        # data: bytes, bytearray or memoryview (copied into the buffer)
        if self._skip:  # invariant: the buffer is empty while skipping
            n = min(self._skip, len(data))
            self._skip -= n
            if n == len(data):
                return
            data = data[n:]
        self._buf.extend(data)

    def partial(self):
        """True while a packet has begun arriving and is not complete."""
        return self._skip > 0 or self._pos < len(self._buf)

    def _consume(self, n):
        # drop n parsed bytes; compact only once the dead prefix is large
        self._pos += n
        if self._pos == len(self._buf):
            self._buf[:] = b""
            self._pos = 0
        elif self._pos >= 1024 and self._pos * 2 >= len(self._buf):
            self._buf[:self._pos] = b""
            self._pos = 0

    def next_packet(self):
        """Return the next complete packet, or None if more bytes are needed."""
        if self._oversize is not None:
            if self._skip:
                return None
            p = self._oversize
            self._oversize = None
            return p
        buf = self._buf
        start = self._pos
        size = len(buf)
        if start >= size:
            return None
        first = buf[start]
        _check_first_byte(first)
        # remaining length: 1..4 bytes, 7 bits each, least significant first
        rem = 0
        shift = 0
        i = start + 1
        while True:
            if i >= size:
                return None
            b = buf[i]
            i += 1
            rem |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift == 28:
                raise ProtocolError("remaining length exceeds 4 bytes")
        if rem > self.max_packet:
            if first >> 4 != PUBLISH:
                raise ProtocolError("%s of %d bytes exceeds max_packet %d"
                                    % (_NAMES[first >> 4], rem, self.max_packet))
            return self._start_oversize(first, i, rem)
        end = i + rem
        if end > size:
            return None
        packet = _parse(first, buf, i, end)
        self._consume(end - start)
        return packet

    def _start_oversize(self, first, body, rem):
        # Parse topic + packet id from the buffer (they must fit in max_packet),
        # then discard the payload without buffering it.
        buf = self._buf
        have = len(buf) - body
        if have < 2:
            return None
        head = 2 + ((buf[body] << 8) | buf[body + 1]) + (2 if (first >> 1) & 3 else 0)
        if head > rem:
            raise ProtocolError("truncated PUBLISH topic")
        if head > self.max_packet:
            raise ProtocolError("PUBLISH topic longer than max_packet %d" % self.max_packet)
        if have < head:
            return None
        topic, qos, pid, pos = _get_publish_head(first, buf, body, body + head)
        payload = rem - head
        drop = min(payload, len(buf) - pos)
        self._consume(pos + drop - self._pos)
        self._skip = payload - drop
        p = Publish(topic, None, qos, bool(first & 1), bool(first & 8), pid, payload)
        if self._skip:
            self._oversize = p
            return None
        return p


def decode(data):
    """Decode exactly one whole packet (ProtocolError if incomplete or trailing bytes).

    The packet size is not limited (max_packet = the MQTT maximum).
    """
    d = Decoder(MAX_REMAINING_LENGTH)
    d.feed(data)
    p = d.next_packet()
    if p is None:
        raise ProtocolError("incomplete packet")
    if d._pos != len(d._buf):
        raise ProtocolError("trailing bytes after packet")
    return p
