# mqtt_session.py - sans-I/O MQTT 3.1.1 client session (in the style of h11).
#
# Bytes in (decoder.space() + received), events out (next_event), bytes to send out
# (data_to_send), and the time passed in as now_ms (MicroPython ticks, which
# wrap at 2**30). Handles CONNECT/CONNACK, keepalive and dead-link detection,
# QoS 1 in both directions (PUBACK, resend with DUP after reconnect),
# SUBSCRIBE bookkeeping, and a deadline for a started packet (a
# broker that declares a huge packet and drips it byte by byte must not keep
# the link alive forever).
#
# Must NOT do I/O, read a clock, sleep, or keep module-level mutable state:
# everything lives in the Session object (the emulator runs many boards in one
# process). The asyncio shell (mqtt_client.py) owns the socket and the clock.
#
# Errors: mqtt_codec.ProtocolError = the broker misbehaved (drop the link);
# ValueError = the caller used the session wrongly (wrong state, bad topic).

from mqtt_codec import Decoder, ProtocolError, _name, encode

try:
    from micropython import const
except ImportError:  # CPython outside the emulator

    def const(x):
        return x


DISCONNECTED = const(0)
CONNECTING = const(1)
CONNECTED = const(2)

MAX_INFLIGHT = const(72)  # unacked outgoing QoS 1 publishes (kept until acknowledged)
_WINDOW = const(8)  # of them on the wire at once (the rest wait, in order)
_OUT_CAP = const(96)  # each of the two output buffers; a bigger packet goes out as it is
_RX_ROOM = const(4)  # output room needed to take in the next packet (its PUBACK)
_IDLE_TIMEOUT_MS = const(3600000)  # next_timeout_ms() when no timer runs
_PACKET_TIMEOUT_MS = const(10000)  # a started packet's deadline when keepalive is 0
_PUBACK_HEAD = b"\x40\x02"  # PUBACK, remaining length 2

_REFUSED = (
    None,
    "unacceptable protocol version",
    "identifier rejected",
    "server unavailable",
    "bad user name or password",
    "not authorized",
)


def backoff_window(base_ms, cap_ms, attempt):
    # The reconnect backoff (full jitter, AWS architecture blog "Exponential
    # Backoff And Jitter"): attempt n waits a uniform integer in
    # [0, window], window = min(cap_ms, base_ms * 2**n), so a fleet that lost
    # its broker at the same instant spreads its reconnects over the whole
    # window instead of stampeding in lock-step. Doubling stops at the cap: no
    # big ints on MicroPython, whatever the attempt.
    w = base_ms
    while attempt > 0 and w < cap_ms:
        w <<= 1
        attempt -= 1
    return w if w < cap_ms else cap_ms


def _ticks_diff(a, b):
    # a - b for MicroPython ticks_ms() values, which wrap at 2**30
    return ((a - b + 0x20000000) & 0x3FFFFFFF) - 0x20000000


# ------------------------------------------------------------------ events
# Events are tuples, first item the kind (no classes: heap). Most are the
# broker's packet tuple itself (mqtt_codec), passed on as it was decoded:
#   connected          (2, session_present, 0)         the CONNACK
#   message            (3, topic, payload, qos, retain, dup, packet_id, size)
#                      the PUBLISH (payload None, size set: over max_packet)
#   publish acked      (4, packet_id)                  the PUBACK
#   subscribed         (9, packet_id, return_codes)    the SUBACK
#   connection refused (16, return_code, reason)
#   link dead          (17, reason)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBACK = const(9)
_PINGRESP = const(13)
_REFUSED_EV = const(16)
_DEAD_EV = const(17)


# ----------------------------------------------------------------- session


class Session:
    def __init__(self, client_id, keepalive_s, clean_session=True, will=None,
                 username=None, password=None, max_packet=4096,
                 connect_timeout_ms=10000, packet_timeout_ms=0):
        if not 0 <= keepalive_s <= 65535:
            raise ValueError("keepalive must be 0..65535 s")
        if will is None:
            will = (None, b"", 0, False)
        # validates every field now
        self._connect_bytes = encode((1, client_id, keepalive_s, clean_session) + tuple(will) + (username, password))
        self.keepalive_ms = keepalive_s * 1000
        self.connect_timeout_ms = connect_timeout_ms
        # Once a packet's first byte is in, the whole packet must follow within
        # this (default: the keepalive period, or 10 s without keepalive).
        self.packet_timeout_ms = packet_timeout_ms or self.keepalive_ms or _PACKET_TIMEOUT_MS
        self.state = DISCONNECTED
        # Fixed capacity, allocated once here (at boot, before the heap
        # fragments) and never grown: the decoder's buffer (reads land in
        # it; see Decoder) and the two output buffers, _OUT_CAP each.
        self.decoder = Decoder(max_packet)  # the receive buffer: see received()
        self._out = bytearray(_OUT_CAP)  # bytes queued for data_to_send()
        self._out[:] = b""  # (shrinking a bytearray keeps its allocation)
        self._spare = bytearray(_OUT_CAP)  # the other of the two, handed out last time
        self._big = None  # a packet that did not fit in _out: it goes out next, as it is
        # While True, a PUBLISH is left unparsed in the decoder's buffer (the
        # owner's consumer is full; the reader stops reading: backpressure).
        self.hold = False
        # Why the last next_event() returning None left bytes unparsed: 0 it
        # needs more bytes (read), 1 a held PUBLISH is next (hold(False)
        # goes on), 2 the output has no room (data_to_send() goes on). The
        # reader waits for that instead of reading: nothing else may come.
        self.stopped = 0
        self._events = []
        self._last_tx = 0  # ticks of the last queued packet
        self._last_rx = 0  # ticks of the last received bytes
        self._ping_sent = None  # ticks of the outstanding PINGREQ, or None
        self._connect_sent = 0
        self._rx_started = None  # ticks when the incomplete packet began, or None
        # QoS 1 outgoing, in send order: [packet_id, wire bytes, flags];
        # flags: 1 = a link carried it (resend with DUP), 2 = queued on this link
        self._inflight = []
        self._pending = {}  # SUBSCRIBE id -> filter count
        self._last_id = 0

    # ------------------------------------------------------- the caller's API

    def start(self, now_ms):
        """DISCONNECTED -> CONNECTING: queue CONNECT on a fresh link."""
        if self.state != DISCONNECTED:
            raise ValueError("start while connected or connecting")
        self.state = CONNECTING
        self.decoder.reset()
        self._out[:] = b""  # nothing from an old link goes out on the new one
        self._big = None
        self._pending = {}
        self._ping_sent = None
        self._rx_started = None
        self._connect_sent = now_ms
        self._last_rx = now_ms
        self._queue(self._connect_bytes, now_ms)

    def received(self, n, now_ms):
        """n bytes were read into decoder.space() (the free part of the
        receive buffer, a memoryview to readinto; or copied into it). Ignored
        after the session went DISCONNECTED. next_event() parses them."""
        if n and self.state != DISCONNECTED:
            self._last_rx = now_ms
            self.decoder.wrote(n)

    def next_event(self):
        """Return the oldest undelivered event, or None. Parses the next
        received packet when no event waits (ProtocolError on a bad peer),
        unless the output has no room for its PUBACK (send data_to_send()
        first) or it is a PUBLISH and hold is set: `stopped` says which."""
        if self._events:
            return self._events.pop(0)
        decoder = self.decoder  # (its state read directly: a method costs every board heap)
        now = self._last_rx
        self.stopped = 0
        while self.state != DISCONNECTED:
            if self._big is not None or len(self._out) > _OUT_CAP - _RX_ROOM:
                self.stopped = 2
                return None
            if self.hold and decoder._pos < decoder._end and decoder._buf[decoder._pos] >> 4 == _PUBLISH:
                self.stopped = 1
                return None
            try:
                packet = decoder.next_packet()
                if packet is None:
                    # an incomplete packet starts its deadline
                    if not (decoder._skip or decoder._pos < decoder._end):
                        self._rx_started = None
                    elif self._rx_started is None:
                        self._rx_started = now
                    return None
                self._rx_started = self._ping_sent = None  # any packet shows the broker is alive
                packet = self._on_packet(packet, now)
            except ProtocolError:
                self._drop_link()
                raise
            if packet is not None:
                return packet
        return None

    def data_to_send(self):
        """Return (and forget) the bytes queued since the last call, in
        order: the output buffer, or else a packet too big for it.

        No copy: two buffers of fixed capacity take turns, so what is
        returned stays unchanged until the next call while new bytes queue
        in the other one (a copy of a flood's output is a large transient
        allocation that a fragmented heap refuses)."""
        out = self._out
        if not len(out):
            big = self._big
            self._big = None
            self._fill()
            return big or b""
        spare = self._spare
        spare[:] = b""  # keeps its allocation
        self._out = spare
        self._spare = out
        self._fill()
        return out

    def has_data_to_send(self):
        """True if data_to_send() would return bytes."""
        return len(self._out) > 0 or self._big is not None

    def writable(self):
        """True if a packet can be queued now (publish QoS 0, subscribe,
        disconnect raise ValueError otherwise): send
        data_to_send() first."""
        return self._big is None

    def publish(self, topic, payload, qos=0, retain=False, now_ms=0):
        """Queue a PUBLISH. Returns the packet id (QoS 1) or 0 (QoS 0).

        QoS 1 is accepted in any state and sent once connected; QoS 0 only
        while CONNECTED.
        """
        if qos == 0:
            if self.state != CONNECTED:
                raise ValueError("publish QoS 0 while not connected")
            self._queue(encode((_PUBLISH, topic, payload, 0, retain, False, None)), now_ms)
            return 0
        if qos != 1:
            raise ValueError("only QoS 0 and 1 are supported, got %r" % (qos,))
        if len(self._inflight) >= MAX_INFLIGHT:
            raise ValueError("too many QoS 1 messages in flight")
        pid = self._new_packet_id()
        self._inflight.append([pid, encode((_PUBLISH, topic, payload, 1, retain, False, pid)), 0])
        self._last_tx = now_ms
        self._fill()
        return pid

    def subscribe(self, topics, now_ms):
        """Queue a SUBSCRIBE for [(filter, qos), ...]; returns its packet id."""
        if self.state != CONNECTED:
            raise ValueError("subscribe while not connected")
        for t in topics:
            if t[1] not in (0, 1):
                raise ValueError("only QoS 0 and 1 subscriptions are supported")
        pid = self._new_packet_id()
        self._queue(encode((8, pid, list(topics))), now_ms)
        self._pending[pid] = len(topics)
        return pid

    def disconnect(self, now_ms):
        """Queue DISCONNECT (the broker then discards the Will); -> DISCONNECTED."""
        if self.state == DISCONNECTED:
            raise ValueError("disconnect while DISCONNECTED")
        self._queue(b"\xe0\x00", now_ms)
        self.state = DISCONNECTED

    def connection_lost(self, now_ms):
        """The transport lost the socket. Unacked QoS 1 publishes are kept."""
        if self.state != DISCONNECTED:
            self._drop_link()

    def tick(self, now_ms):
        """Run the timers: CONNACK timeout, started packet, keepalive
        PINGREQ, dead link."""
        if self.state == CONNECTING:
            if _ticks_diff(now_ms, self._connect_sent) >= self.connect_timeout_ms:
                self._link_dead("no CONNACK within %d ms" % self.connect_timeout_ms)
            return
        if self.state != CONNECTED:
            return
        ka = self.keepalive_ms
        if ka:
            if self._ping_sent is not None:
                if (_ticks_diff(now_ms, self._ping_sent) >= ka
                        and _ticks_diff(now_ms, self._last_rx) >= ka):
                    self._link_dead("no PINGRESP within %d ms" % ka)
                    return
            else:
                due = ka * 3 // 4
                if ((_ticks_diff(now_ms, self._last_tx) >= due
                        or _ticks_diff(now_ms, self._last_rx) >= due)
                        and self._big is None and len(self._out) + 2 <= _OUT_CAP):  # else once sent
                    self._queue(b"\xc0\x00", now_ms)
                    self._ping_sent = now_ms
        if (self._rx_started is not None
                and _ticks_diff(now_ms, self._rx_started) >= self.packet_timeout_ms):
            self._link_dead("packet not completed within %d ms" % self.packet_timeout_ms)

    def next_timeout_ms(self, now_ms):
        """Milliseconds until tick() must run next (>= 0)."""
        if self.state == CONNECTING:
            left = self.connect_timeout_ms - _ticks_diff(now_ms, self._connect_sent)
        elif self.state != CONNECTED:
            return _IDLE_TIMEOUT_MS
        else:
            left = _IDLE_TIMEOUT_MS
            ka = self.keepalive_ms
            if ka:
                rx_idle = _ticks_diff(now_ms, self._last_rx)
                if self._ping_sent is not None:
                    left = ka - min(_ticks_diff(now_ms, self._ping_sent), rx_idle)
                else:
                    due = ka * 3 // 4
                    left = due - max(_ticks_diff(now_ms, self._last_tx), rx_idle)
            if self._rx_started is not None:
                left = min(left, self.packet_timeout_ms - _ticks_diff(now_ms, self._rx_started))
        return left if left > 0 else 0

    def inflight_count(self):
        """Number of outgoing QoS 1 publishes not yet acknowledged."""
        return len(self._inflight)

    def withdraw(self, packet_id):
        """Forget an unacknowledged QoS 1 publish that a newer message
        supersedes (an old retained status), so it is not resent after the
        next CONNACK. True if it was still pending."""
        for i in range(len(self._inflight)):
            if self._inflight[i][0] == packet_id:
                del self._inflight[i]
                return True
        return False

    # ------------------------------------------- incoming packets, per state

    def _on_packet(self, packet, now_ms):
        t = packet[0]
        pid = packet[1] if len(packet) > 1 else 0
        if self.state == CONNECTING:
            if t != _CONNACK:
                raise ProtocolError("expected CONNACK, got %s" % _name(t))
            rc = packet[2]
            if rc:
                self._drop_link()
                return (_REFUSED_EV, rc, _REFUSED[rc])
            self.state = CONNECTED
            # Resend unacked QoS 1 in original order (as room allows):
            # DUP=1 if a link carried it.
            for entry in self._inflight:
                entry[2] &= 1
            self._fill()
        elif t == _PUBLISH:
            if packet[3] == 2:
                raise ProtocolError("QoS 2 PUBLISH, but we never subscribe above QoS 1")
            pid = packet[6]
            if pid is not None:  # QoS 1
                # PUBACK written straight into the output buffer
                # (next_event() made sure of the room): no packet object and no bytes per
                # received message.
                out = self._out
                out.extend(_PUBACK_HEAD)
                out.append(pid >> 8)
                out.append(pid & 0xFF)
                self._last_tx = now_ms
        elif t == _PUBACK:
            inflight = self._inflight
            for i in range(len(inflight)):
                if inflight[i][0] == pid:
                    del inflight[i]
                    break
            else:
                return None  # PUBACK for an id we do not know (e.g. acked twice): ignore
            self._fill()  # a window slot is free
        elif t == _PINGRESP:
            return None  # _ping_sent was already cleared by next_event()
        elif t == _SUBACK:
            count = self._pending.get(pid)
            if not count:  # unknown ids are ignored
                return None
            if count != len(packet[2]):
                raise ProtocolError("SUBACK has %d return codes for %d filters" % (len(packet[2]), count))
            del self._pending[pid]
        elif t == 11:  # UNSUBACK: no UNSUBSCRIBE is sent (a board never needs one; code costs heap)
            return None
        else:  # a second CONNACK (the Decoder refuses what only a client sends)
            raise ProtocolError("second CONNACK")
        return packet

    # ------------------------------------------------------------- helpers

    def _queue(self, wire, now_ms):
        # Into the output buffer if it fits (never past _OUT_CAP), else as
        # the packet that goes out after it; more: ValueError (not writable()).
        out = self._out
        if self._big is not None:
            raise ValueError("output full: send data_to_send() first")
        if len(out) + len(wire) <= _OUT_CAP:
            out.extend(wire)
        else:
            self._big = wire
        self._last_tx = now_ms

    def _fill(self):
        # Queue the QoS 1 publishes not yet queued on this link, in order, as
        # the window and the room allow (the rest once a PUBACK came or
        # data_to_send() made room).
        if self.state != CONNECTED:
            return
        n = 0  # on the wire
        for entry in self._inflight:
            n += 1
            if entry[2] & 2:
                continue
            if self._big is not None or n > _WINDOW:
                return
            wire = entry[1]
            if entry[2]:  # a link carried it: DUP
                wire = bytes((wire[0] | 0x08,)) + wire[1:]
            self._queue(wire, self._last_tx)
            entry[2] = 3

    def _drop_link(self):
        self.state = DISCONNECTED
        self._big = None
        self._out[:] = b""
        self._pending = {}
        self._ping_sent = None
        self._rx_started = None

    def _link_dead(self, reason):
        self._drop_link()
        self._events.append((_DEAD_EV, reason))

    def _new_packet_id(self):
        # 1..65535 wrapping, skipping ids still in use
        used = [e[0] for e in self._inflight]
        pid = self._last_id
        for _ in range(65535):
            pid = pid % 65535 + 1
            if pid not in used and pid not in self._pending:
                self._last_id = pid
                return pid
        raise ValueError("no free packet id")
