# mqtt_codec.py - MQTT 3.1.1 for the device's side of the wire: encode() the
# packets a client sends (CONNECT, PUBLISH, PUBACK, SUBSCRIBE, UNSUBSCRIBE,
# PINGREQ, DISCONNECT) and a streaming Decoder for the packets a broker sends
# (CONNACK, PUBLISH, PUBACK, SUBACK, UNSUBACK, PINGRESP).
#
# Pure and sans-I/O: bytes in, packet tuples out, and packet tuples to bytes.
# Must NOT do I/O, read a clock, keep module-level mutable state, or use assert
# for protocol checks. Runs on MicroPython >= 1.22 and CPython alike.
#
# Only one direction each way, on purpose: code loaded from .py/.mpy lives in
# the board's heap, and a broker's encoder or a decoder of client packets
# would cost every board kilobytes it never runs. Tests play the broker with
# tests/micropython/mqtt_peer.py.
#
# Whose fault is it:
#   ProtocolError - the BROKER sent bytes that break MQTT 3.1.1, or a packet
#                   only a client sends (drop the link).
#   ValueError    - local misuse: we were asked to encode something invalid.
#
# QoS 2 is not modelled: this client never subscribes above QoS 1, and the
# Decoder rejects PUBREC, PUBREL and PUBCOMP with ProtocolError.

try:
    from micropython import const
except ImportError:  # CPython outside the emulator

    def const(x):
        return x


MAX_REMAINING_LENGTH = const(268435455)  # 4-byte varint limit

_PUBLISH = const(3)
_NAMES = "CONNECT CONNACK PUBLISH PUBACK PUBREC PUBREL PUBCOMP SUBSCRIBE SUBACK UNSUBSCRIBE UNSUBACK PINGREQ PINGRESP DISCONNECT"


def _name(kind):
    # The packet type's name, for error messages only (1..14).
    return _NAMES.split()[kind - 1]


class ProtocolError(Exception):
    """The broker sent bytes that break MQTT 3.1.1; the message says what."""


# ---------------------------------------------------------------- packets
# A packet is a tuple whose first item is its MQTT type number, then its
# fields (no classes: each costs every board hundreds of bytes of heap):
#   CONNECT     (1, client_id, keepalive, clean_session, will_topic,
#                will_payload, will_qos, will_retain, username, password)
#   CONNACK     (2, session_present, return_code)
#   PUBLISH     (3, topic, payload, qos, retain, dup, packet_id, size)
#               size is set only by the Decoder for an oversize PUBLISH
#               (payload None, size = payload length)
#   PUBACK      (4, packet_id)
#   SUBSCRIBE   (8, packet_id, [(filter, qos), ...])
#   SUBACK      (9, packet_id, [return code 0, 1, 2 or 0x80, ...])
#   UNSUBSCRIBE (10, packet_id, [filter, ...])
#   UNSUBACK    (11, packet_id)
#   PINGREQ (12,)   PINGRESP (13,)   DISCONNECT (14,)
# encode() takes what a client sends; the Decoder returns what a broker sends.


# ------------------------------------------------------- topic validation
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
    if not isinstance(topic, str):
        return "filter must be str"
    if not topic:
        return "empty topic filter"
    if "\x00" in topic:
        return "NUL character in topic filter"
    levels = topic.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return "'#' must be a whole, final level in %r" % topic
        if "+" in level and level != "+":
            return "'+' must be a whole level in %r" % topic
    return None


# ----------------------------------------------------------------- encoding


def _u16(out, n, what, lo=0):
    if not isinstance(n, int) or not lo <= n <= 0xFFFF:
        raise ValueError("%s must be %d..65535, got %r" % (what, lo, n))
    out.append(n >> 8)
    out.append(n & 0xFF)


def _field(out, data, what, text=False):
    # length-prefixed: a str (text=True) as UTF-8, else bytes as they are
    if text:
        if not isinstance(data, str):
            raise ValueError(what + " must be str")
        data = data.encode()
    elif not isinstance(data, (bytes, bytearray)):
        raise ValueError(what + " must be bytes")
    if len(data) > 0xFFFF:
        raise ValueError(what + " longer than 65535 bytes")
    _u16(out, len(data), what)
    out.extend(data)


def encode(p):
    """Return the wire bytes (a bytearray) of one packet tuple the device
    sends. ValueError if it is invalid (or a packet only a broker sends)."""
    t = p[0]
    body = bytearray()
    tail = b""
    if t == _PUBLISH:
        topic, tail, qos, retain, dup, pid = p[1:7]
        err = _topic_name_error(topic) if isinstance(topic, str) else "topic must be str"
        if err:
            raise ValueError(err)
        if qos not in (0, 1, 2):
            raise ValueError("bad PUBLISH QoS %r" % (qos,))
        if not isinstance(tail, (bytes, bytearray, memoryview)):
            raise ValueError("payload must be bytes")
        first = 0x30 | qos << 1 | (1 if retain else 0)
        if dup:
            if not qos:
                raise ValueError("DUP set on a QoS 0 PUBLISH")
            first |= 8
        _field(body, topic, "topic", True)
        if qos:
            _u16(body, pid, "packet id", 1)
        elif pid is not None:
            raise ValueError("packet id given for a QoS 0 PUBLISH")
    elif t == 4:
        first = 0x40
        _u16(body, p[1], "packet id", 1)
    elif t == 12:
        return b"\xc0\x00"
    elif t == 14:
        return b"\xe0\x00"
    elif t == 1:
        client_id, keepalive, clean, will_topic, will_payload, will_qos, will_retain, username, password = p[1:]
        first = 0x10
        flags = 2 if clean else 0
        body.extend(b"\x00\x04MQTT\x04\x00")  # protocol level 4; flags go in body[7]
        _u16(body, keepalive, "keepalive")
        _field(body, client_id, "client id", True)
        if will_topic is not None:
            err = _topic_name_error(will_topic)
            if err:
                raise ValueError(err)
            if will_qos not in (0, 1, 2):
                raise ValueError("bad will QoS %r" % (will_qos,))
            flags |= 4 | will_qos << 3 | (0x20 if will_retain else 0)
            _field(body, will_topic, "will topic", True)
            _field(body, will_payload, "will payload")
        elif will_qos or will_retain:
            raise ValueError("will QoS/retain given without a will topic")
        if username is not None:
            flags |= 0x80
            _field(body, username, "username", True)
        if password is not None:
            if username is None:
                raise ValueError("password without username")
            flags |= 0x40
            _field(body, password, "password")
        body[7] = flags
    elif t == 8 or t == 10:
        first = 0x82 if t == 8 else 0xA2
        if not p[2]:
            raise ValueError("%s needs at least one topic filter" % _name(t))
        _u16(body, p[1], "packet id", 1)
        for f in p[2]:
            if t == 8:
                f, qos = f
                if qos not in (0, 1, 2):
                    raise ValueError("bad SUBSCRIBE QoS %r" % (qos,))
            err = _topic_filter_error(f)
            if err:
                raise ValueError(err)
            _field(body, f, "topic filter", True)
            if t == 8:
                body.append(qos)
    else:
        raise ValueError("not a packet the device sends: %r" % (p,))
    n = len(body) + len(tail)
    if n > MAX_REMAINING_LENGTH:
        raise ValueError("remaining length %d out of range" % n)
    # One buffer of the packet's size, filled in place (appending grew it
    # two or three times, then bytes() copied it all: a telemetry message
    # is a PUBLISH of a few hundred bytes): the packet as a bytearray.
    i = 2 if n < 0x80 else 3 if n < 0x4000 else 4 if n < 0x200000 else 5
    out = bytearray(i + n)
    out[0] = first
    i = 1
    while n > 0x7F:
        out[i] = n & 0x7F | 0x80
        n >>= 7
        i += 1
    out[i] = n
    i += 1
    out[i : i + len(body)] = body
    out[i + len(body) :] = tail
    return out


# ----------------------------------------------------------------- decoding
# Parsers work on (buf, pos, end) of a complete packet body; any shortfall
# is the broker's fault.


def _utf8_error(buf, start, end):
    # MicroPython's str decoding checks only the shape of UTF-8 sequences: it
    # lets through overlong forms (C0 80 and E0 80 80 are NUL), UTF-16
    # surrogates (ED A0..BF) and code points past U+10FFFF, all of which
    # CPython and MQTT-1.5.3 refuse. Returns what is wrong, or None.
    for i in range(start, end - 1):
        b = buf[i]
        if b >= 0xC0:
            n = buf[i + 1]
            if b == 0xED and n >= 0xA0:
                return "UTF-16 surrogate"
            if (b < 0xC2 or b > 0xF4 or (b == 0xE0 and n < 0xA0) or (b == 0xF0 and n < 0x90)
                    or (b == 0xF4 and n >= 0x90)):
                return "bad UTF-8"
    return None


def _get_packet_id(buf, pos, end, what):
    # a packet id at buf[pos]: (id, pos after it)
    if pos + 2 > end:
        raise ProtocolError("truncated %s packet id" % what)
    pid = buf[pos] << 8 | buf[pos + 1]
    if not pid:
        raise ProtocolError("%s with packet id 0" % what)
    return pid, pos + 2


def _get_publish_head(first, buf, pos, end):
    # topic and packet id of a PUBLISH: (topic, qos, packet_id, pos)
    qos = first >> 1 & 3
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    if not qos and first & 8:
        raise ProtocolError("PUBLISH with DUP set at QoS 0")
    if pos + 2 > end:
        raise ProtocolError("truncated PUBLISH topic length")
    n = pos + 2 + (buf[pos] << 8 | buf[pos + 1])
    if n > end:
        raise ProtocolError("truncated PUBLISH topic")
    try:
        topic = str(memoryview(buf)[pos + 2:n], "utf-8")
    except ValueError:  # UnicodeError on MicroPython, UnicodeDecodeError on CPython
        raise ProtocolError("bad UTF-8 in PUBLISH topic")
    if len(topic) != n - pos - 2:  # not ASCII: check what MicroPython's decoding lets through
        err = _utf8_error(buf, pos + 2, n)
        if err:
            raise ProtocolError(err + " in PUBLISH topic")
    err = _topic_name_error(topic)
    if err:
        raise ProtocolError("PUBLISH " + err)
    pid = None
    if qos:
        pid, n = _get_packet_id(buf, n, end, "PUBLISH")
    return topic, qos, pid, n


def _parse(first, buf, pos, end):
    """Parse one complete broker packet whose body is buf[pos:end]."""
    kind = first >> 4
    if kind == _PUBLISH:
        topic, qos, pid, pos = _get_publish_head(first, buf, pos, end)
        return (_PUBLISH, topic, bytes(memoryview(buf)[pos:end]), qos, first & 1 == 1, first & 8 == 8, pid, None)
    n = end - pos
    if kind == 13:
        if n:
            raise ProtocolError("PINGRESP remaining length must be 0")
        return (13,)
    if kind == 9:
        pid, pos = _get_packet_id(buf, pos, end, "SUBACK")
        codes = list(memoryview(buf)[pos:end])
        if not codes:
            raise ProtocolError("SUBACK without return codes")
        for rc in codes:
            if rc not in (0, 1, 2, 0x80):
                raise ProtocolError("SUBACK return code 0x%02x is reserved" % rc)
        return (9, pid, codes)
    # CONNACK, PUBACK, UNSUBACK: exactly two bytes
    if n != 2:
        raise ProtocolError("%s remaining length must be 2" % _name(kind))
    if kind == 2:
        ack, rc = buf[pos], buf[pos + 1]
        if ack & 0xFE:
            raise ProtocolError("CONNACK reserved flag set")
        if rc > 5:
            raise ProtocolError("CONNACK return code %d is reserved" % rc)
        if ack and rc:
            raise ProtocolError("CONNACK session present with return code %d" % rc)
        return (2, ack == 1, rc)
    return (kind, _get_packet_id(buf, pos, end, _name(kind))[0])  # PUBACK or UNSUBACK


class Decoder:
    """Streaming decoder of broker packets: read bytes into space(), then
    wrote(n), and next_packet() until None.

    The buffer has a fixed size, allocated once (reads land in it; it never
    grows). A PUBLISH that does not fit in it (up to max_packet) has its
    topic and packet id parsed there, and its payload read straight into a
    bytearray of its own (space() is then the rest of that payload): the
    payload is the one allocation per packet, as for a small PUBLISH. A
    PUBLISH larger than max_packet does not kill the connection: its
    payload is discarded as it arrives, and a PUBLISH with payload None and
    size = payload length is returned. Any other packet larger than
    max_packet, or than the buffer, is a ProtocolError. After a
    ProtocolError the decoder is unusable until reset().
    """

    def __init__(self, max_packet=4096, size=192):
        self.max_packet = max_packet
        self._buf = bytearray(size)
        self.reset()

    def reset(self):
        # Empty, for a new link (the buffer is kept).
        self._pos = 0  # unparsed bytes are _buf[_pos:_end]
        self._end = 0
        self._skip = 0  # payload bytes still to come of the PUBLISH in _oversize
        self._oversize = None  # that PUBLISH (its payload None: discarded), returned once complete

    def space(self):
        """Where the next bytes go (a memoryview to read into; then call
        wrote(n)): the rest of a big PUBLISH's payload, or the free tail of
        the buffer. Unparsed bytes are first moved to the front, in pieces
        that never overlap (a slice copy within one buffer is a memcpy)."""
        p = self._oversize
        if p is not None and p[2] is not None:
            return memoryview(p[2])[len(p[2]) - self._skip:]
        mv = memoryview(self._buf)
        pos = self._pos
        if pos:
            n = self._end - pos
            i = 0
            while i < n:
                k = min(pos, n - i)
                mv[i:i + k] = mv[pos + i:pos + i + k]
                i += k
            self._pos = 0
            self._end = n
        return mv[self._end:]

    def wrote(self, n):
        """n bytes were written at the start of space()."""
        p = self._oversize
        if p is not None and p[2] is not None:
            self._skip -= n
            return
        d = min(self._skip, n)  # an oversize payload: dropped (the buffer is empty meanwhile)
        self._skip -= d
        self._pos += d
        self._end += n

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
        size = self._end
        if start >= size:
            return None
        first = buf[start]
        kind = first >> 4
        if kind == 0 or kind == 15:
            raise ProtocolError("unknown packet type %d" % kind)
        if 5 <= kind <= 7:
            raise ProtocolError("%s: QoS 2 is not supported" % _name(kind))
        if kind in (1, 8, 10, 12, 14):
            raise ProtocolError("broker sent %s, which only a client sends" % _name(kind))
        if kind != _PUBLISH and first & 0x0F:
            raise ProtocolError("%s with reserved flags 0x%x" % (_name(kind), first & 0x0F))
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
        end = i + rem
        if rem > self.max_packet or end - start > len(buf):
            if kind != _PUBLISH:
                raise ProtocolError("%s of %d bytes exceeds max_packet %d"
                                    % (_name(kind), rem, min(self.max_packet, len(buf) - 5)))
            return self._start_payload(first, i, rem, rem <= self.max_packet)
        if end > size:
            return None
        packet = _parse(first, buf, i, end)
        self._pos = end
        return packet

    def _start_payload(self, first, body, rem, keep):
        # A PUBLISH bigger than the buffer: parse topic + packet id from the
        # buffer, then read the payload into a bytearray of its own (keep),
        # or discard it as it arrives.
        buf = self._buf
        have = self._end - body
        if have < 2:
            return None
        head = 2 + ((buf[body] << 8) | buf[body + 1]) + (2 if (first >> 1) & 3 else 0)
        if head > rem:
            raise ProtocolError("truncated PUBLISH topic")
        if head > self.max_packet or body - self._pos + head > len(buf):
            raise ProtocolError("PUBLISH topic longer than max_packet %d" % min(self.max_packet, len(buf) - 5))
        if have < head:
            return None
        topic, qos, pid, pos = _get_publish_head(first, buf, body, body + head)
        n = rem - head
        drop = min(n, self._end - pos)
        p = None
        if keep:
            p = bytearray(n)
            p[:drop] = memoryview(buf)[pos:pos + drop]
        self._pos = pos + drop
        self._skip = n - drop
        packet = (_PUBLISH, topic, p, qos, first & 1 == 1, first & 8 == 8, pid, None if keep else n)
        if self._skip:
            self._oversize = packet
            return None
        return packet
