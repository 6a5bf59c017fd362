# mqtt_session.py - sans-I/O MQTT 3.1.1 client session (in the style of h11).
#
# Bytes in (receive_data), events out (next_event), bytes to send out
# (data_to_send), and the time passed in as now_ms (MicroPython ticks, which
# wrap at 2**30). Handles CONNECT/CONNACK, keepalive and dead-link detection,
# QoS 1 in both directions (PUBACK, resend with DUP after reconnect),
# SUBSCRIBE/UNSUBSCRIBE bookkeeping, and a deadline for a started packet (a
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

MAX_INFLIGHT = const(16)  # unacked outgoing QoS 1 publishes
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
_STATE_NAMES = ("DISCONNECTED", "CONNECTING", "CONNECTED")


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
#   unsubscribed       (11, packet_id)                 the UNSUBACK
#   connection refused (16, return_code, reason)
#   link dead          (17, reason)
_CONNACK = const(2)
_PUBLISH = const(3)
_PUBACK = const(4)
_SUBACK = const(9)
_UNSUBACK = const(11)
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
        self.client_id = client_id
        self.keepalive_ms = keepalive_s * 1000
        self.max_packet = max_packet
        self.connect_timeout_ms = connect_timeout_ms
        # Once a packet's first byte is in, the whole packet must follow within
        # this (default: the keepalive period, or 10 s without keepalive).
        self.packet_timeout_ms = packet_timeout_ms or self.keepalive_ms or _PACKET_TIMEOUT_MS
        self.state = DISCONNECTED
        self._decoder = Decoder(max_packet)  # replaced by start()
        self._out = bytearray()  # bytes queued for data_to_send()
        self._spare = bytearray()  # the other of the two, handed out last time
        self._events = []
        self._last_tx = 0  # ticks of the last queued packet
        self._last_rx = 0  # ticks of the last received bytes
        self._ping_sent = None  # ticks of the outstanding PINGREQ, or None
        self._connect_sent = 0
        self._rx_started = None  # ticks when the incomplete packet began, or None
        # QoS 1 outgoing, in send order: [packet_id, wire bytes, sent_on_a_link]
        self._inflight = []
        self._pending = {}  # SUBSCRIBE/UNSUBSCRIBE id -> filter count (0 = unsub)
        self._last_id = 0

    # ------------------------------------------------------- the caller's API

    def start(self, now_ms):
        """DISCONNECTED -> CONNECTING: queue CONNECT on a fresh link."""
        self._require(DISCONNECTED, "start")
        self.state = CONNECTING
        self._decoder = Decoder(self.max_packet)
        self._out[:] = b""  # nothing from an old link goes out on the new one
        self._pending = {}
        self._ping_sent = None
        self._rx_started = None
        self._connect_sent = now_ms
        self._last_rx = now_ms
        self._queue(self._connect_bytes, now_ms)

    def receive_data(self, data, now_ms):
        """Feed bytes read from the socket (bytes, bytearray or a memoryview
        slice of the reader's buffer: they are copied before this returns).
        Raises ProtocolError on a bad peer.

        Bytes arriving after the session went DISCONNECTED (e.g. read just
        before LinkDead) are ignored.
        """
        if self.state == DISCONNECTED or not len(data):
            return
        self._last_rx = now_ms
        decoder = self._decoder
        decoder.feed(data)
        started = self._rx_started
        try:
            while self.state != DISCONNECTED:
                packet = decoder.next_packet()
                if packet is None:
                    break
                started = None  # the packet in progress (if any) is a new one
                self._ping_sent = None  # any packet shows the broker is alive
                self._on_packet(packet, now_ms)
        except ProtocolError:
            self._drop_link()
            raise
        if self.state == DISCONNECTED or not decoder.partial():
            self._rx_started = None
        elif started is None:
            self._rx_started = now_ms

    def next_event(self):
        """Return the oldest undelivered event, or None."""
        if self._events:
            return self._events.pop(0)
        return None

    def data_to_send(self):
        """Return (and forget) every byte queued since the last call.

        No copy: two buffers take turns, so what is returned stays unchanged
        until the next call while new bytes queue in the other one (a copy of
        a flood's output is a large transient allocation that a fragmented
        heap refuses)."""
        out = self._out
        spare = self._spare
        spare[:] = b""
        self._out = spare
        self._spare = out
        return out

    def has_data_to_send(self):
        """True if data_to_send() would return bytes."""
        return len(self._out) > 0

    def publish(self, topic, payload, qos=0, retain=False, now_ms=0):
        """Queue a PUBLISH. Returns the packet id (QoS 1) or 0 (QoS 0).

        QoS 1 is accepted in any state and sent once connected; QoS 0 only
        while CONNECTED.
        """
        if qos == 0:
            self._require(CONNECTED, "publish QoS 0")
            self._queue(encode((_PUBLISH, topic, payload, 0, retain, False, None)), now_ms)
            return 0
        if qos != 1:
            raise ValueError("only QoS 0 and 1 are supported, got %r" % (qos,))
        if len(self._inflight) >= MAX_INFLIGHT:
            raise ValueError("too many QoS 1 messages in flight")
        pid = self._new_packet_id()
        entry = [pid, encode((_PUBLISH, topic, payload, 1, retain, False, pid)), False]
        self._inflight.append(entry)
        if self.state == CONNECTED:
            self._queue(entry[1], now_ms)
            entry[2] = True
        return pid

    def subscribe(self, topics, now_ms):
        """Queue a SUBSCRIBE for [(filter, qos), ...]; returns its packet id."""
        self._require(CONNECTED, "subscribe")
        for t in topics:
            if t[1] not in (0, 1):
                raise ValueError("only QoS 0 and 1 subscriptions are supported")
        pid = self._new_packet_id()
        self._queue(encode((8, pid, list(topics))), now_ms)
        self._pending[pid] = len(topics)
        return pid

    def unsubscribe(self, topics, now_ms):
        """Queue an UNSUBSCRIBE for [filter, ...]; returns its packet id."""
        self._require(CONNECTED, "unsubscribe")
        pid = self._new_packet_id()
        self._queue(encode((10, pid, list(topics))), now_ms)
        self._pending[pid] = 0
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
                if (_ticks_diff(now_ms, self._last_tx) >= due
                        or _ticks_diff(now_ms, self._last_rx) >= due):
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
                self.state = DISCONNECTED
                self._out[:] = b""
                self._events.append((_REFUSED_EV, rc, _REFUSED[rc]))
                return
            self.state = CONNECTED
            # Resend unacked QoS 1 in original order: DUP=1 if a link carried it.
            for entry in self._inflight:
                wire = entry[1]
                if entry[2]:
                    wire = bytes((wire[0] | 0x08,)) + wire[1:]
                self._queue(wire, now_ms)
                entry[2] = True
        elif t == _PUBLISH:
            if packet[3] == 2:
                raise ProtocolError("QoS 2 PUBLISH, but we never subscribe above QoS 1")
            pid = packet[6]
            if pid is not None:  # QoS 1
                # PUBACK written straight into the output buffer: no packet
                # object and no bytes per received message.
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
                return  # PUBACK for an id we do not know (e.g. acked twice): ignore
        elif t == _PINGRESP:
            return  # _ping_sent was already cleared by receive_data()
        elif t == _SUBACK:
            count = self._pending.get(pid)
            if not count:  # unknown ids (or an UNSUBSCRIBE's) are ignored
                return
            if count != len(packet[2]):
                raise ProtocolError("SUBACK has %d return codes for %d filters" % (len(packet[2]), count))
            del self._pending[pid]
        elif t == _UNSUBACK:
            if self._pending.get(pid) != 0:
                return
            del self._pending[pid]
        else:  # a second CONNACK (the Decoder refuses what only a client sends)
            raise ProtocolError("second CONNACK")
        self._events.append(packet)

    # ------------------------------------------------------------- helpers

    def _require(self, state, what):
        if self.state != state:
            raise ValueError("%s while %s (needs %s)"
                             % (what, _STATE_NAMES[self.state], _STATE_NAMES[state]))

    def _queue(self, wire, now_ms):
        self._out.extend(wire)
        self._last_tx = now_ms

    def _drop_link(self):
        self.state = DISCONNECTED
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
