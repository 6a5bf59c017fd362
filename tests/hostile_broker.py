"""A scripted hostile MQTT "broker" for tests: a TCP server on a free
loopback port that plays a script against each connection a board makes.

A script is a plain function `script(conn)` run in its own thread for every
accepted connection (`conn.index` says which: 0 for the first). It uses the
connection's verbs: `conn.expect("CONNECT")` (wait for the board's next
packet of that kind), `conn.send(raw_bytes)`, `conn.pause(s)`,
`conn.drip(raw_bytes, every_s)` (one byte at a time), `conn.flood(chunks)`,
`conn.close()`. The bytes are raw: the helpers below (`connack`, `publish`,
`packet(..., remaining=...)`, ...) build them byte by byte so that any field
can be wrong on purpose. Meanwhile a reader records every packet the board
sends (with its time) and, unless switched off, answers the board's QoS 1
PUBLISH with PUBACK and its PINGREQ with PINGRESP, as a broker would; those
answers never cut into a packet being sent or dripped.

The board's bytes are decoded by the small, strict parser in this file, not
by firmware/mqtt_codec.py: the tests must not trust the code under test. A
malformed packet from the board is recorded in `conn.board_errors` and ends
the connection.

The object has `.host`, `.port` and `.tls` (None), so the esp32emu plugin's
`boards(n, broker=hostile)` points boards at it. Loopback only.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from dataclasses import dataclass, field

# -- raw packet builders (the broker's side: anything goes) ------------------------

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
         7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
         12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT"}
KINDS = {name: kind for kind, name in NAMES.items()}


def varint(n: int, width: int | None = None) -> bytes:
    """Remaining-length bytes for n; `width` pads it to a longer, non-minimal
    encoding (e.g. 2 as 0x82 0x00)."""
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n or (width is not None and len(out) + 1 < width):
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def packet(first: int, body: bytes = b"", remaining: bytes | None = None) -> bytes:
    """One packet: first byte, remaining length (`remaining` overrides its
    encoding, right or wrong), body."""
    return bytes((first,)) + (varint(len(body)) if remaining is None else remaining) + body


def u16(n: int) -> bytes:
    return bytes(((n >> 8) & 0xFF, n & 0xFF))


def mqtt_string(raw: bytes | str) -> bytes:
    raw = raw.encode() if isinstance(raw, str) else raw
    return u16(len(raw)) + raw


def connack(return_code: int = 0, ack_flags: int = 0, first: int = 0x20) -> bytes:
    return packet(first, bytes((ack_flags, return_code)))


def publish(topic: bytes | str, payload: bytes = b"", qos: int = 0, packet_id: int | None = None,
            retain: bool = False, dup: bool = False, remaining: bytes | None = None) -> bytes:
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = mqtt_string(topic)
    if packet_id is not None:
        body += u16(packet_id)
    return packet(first, body + payload, remaining)


def suback(packet_id: int, codes: Iterable[int]) -> bytes:
    return packet(0x90, u16(packet_id) + bytes(codes))


def puback(packet_id: int) -> bytes:
    return packet(0x40, u16(packet_id))


def unsuback(packet_id: int) -> bytes:
    return packet(0xB0, u16(packet_id))


PINGRESP_BYTES = b"\xd0\x00"
PINGREQ_BYTES = b"\xc0\x00"


# -- the board's packets: a small strict parser, independent of the firmware -----


class BoardProtocolError(Exception):
    """The board sent bytes that break MQTT 3.1.1 (a client's side of it)."""


@dataclass
class Packet:
    kind: str  # "CONNECT", "PUBLISH", ...
    t: float  # time.monotonic() when it was complete
    raw: bytes
    fields: dict = field(default_factory=dict)

    def __getattr__(self, name: str):
        try:
            return self.__dict__["fields"][name]
        except KeyError:
            raise AttributeError(name) from None


class _Body:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BoardProtocolError(f"truncated {self.what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        hi, lo = self.take(2)
        return (hi << 8) | lo

    def blob(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        raw = self.blob()
        try:
            s = raw.decode("utf-8")  # strict: rejects overlong forms and surrogates
        except UnicodeDecodeError:
            raise BoardProtocolError(f"bad UTF-8 in {self.what}") from None
        if "\x00" in s:
            raise BoardProtocolError(f"NUL in {self.what}")
        return s

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    def done(self) -> None:
        if self.pos != len(self.data):
            raise BoardProtocolError(f"trailing bytes in {self.what}")


def _packet_id(b: _Body) -> int:
    pid = b.u16()
    if pid == 0:
        raise BoardProtocolError(f"{b.what} with packet id 0")
    return pid


def parse_board_packet(first: int, body: bytes, t: float) -> Packet:
    """Decode one complete packet a client sent (MQTT 3.1.1)."""
    kind, flags = first >> 4, first & 0x0F
    name = NAMES.get(kind)
    if name is None:
        raise BoardProtocolError(f"reserved packet type {kind}")
    b = _Body(body, name)
    f: dict = {}
    if kind == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise BoardProtocolError("PUBLISH with QoS 3")
        if qos == 0 and flags & 0x08:
            raise BoardProtocolError("DUP on a QoS 0 PUBLISH")
        f["topic"] = b.string()
        if not f["topic"] or "+" in f["topic"] or "#" in f["topic"]:
            raise BoardProtocolError(f"bad PUBLISH topic name {f['topic']!r}")
        f.update(qos=qos, retain=bool(flags & 1), dup=bool(flags & 8))
        f["packet_id"] = _packet_id(b) if qos else None
        f["payload"] = b.rest()
    else:
        want = 2 if kind in (SUBSCRIBE, UNSUBSCRIBE) else 0
        if flags != want:
            raise BoardProtocolError(f"{name} with fixed-header flags 0x{flags:x}")
        if kind == CONNECT:
            if b.blob() != b"MQTT":
                raise BoardProtocolError("CONNECT protocol name is not MQTT")
            level, cflags = b.take(2)
            if level != 4:
                raise BoardProtocolError(f"CONNECT protocol level {level}")
            if cflags & 0x01:
                raise BoardProtocolError("CONNECT reserved flag set")
            f.update(level=level, flags=cflags, clean_session=bool(cflags & 0x02), keepalive=b.u16(),
                     client_id=b.string(), will_topic=None, will_payload=None,
                     will_qos=(cflags >> 3) & 3, will_retain=bool(cflags & 0x20),
                     username=None, password=None)
            if cflags & 0x04:
                if f["will_qos"] == 3:
                    raise BoardProtocolError("Will QoS 3")
                f["will_topic"] = b.string()
                f["will_payload"] = b.blob()
            elif cflags & 0x38:
                raise BoardProtocolError("Will QoS/retain without the Will flag")
            if cflags & 0x80:
                f["username"] = b.string()
            elif cflags & 0x40:
                raise BoardProtocolError("password without user name")
            if cflags & 0x40:
                f["password"] = b.blob()
            b.done()
        elif kind == PUBACK:
            f["packet_id"] = _packet_id(b)
            b.done()
        elif kind in (SUBSCRIBE, UNSUBSCRIBE):
            f["packet_id"] = _packet_id(b)
            filters: list[tuple[str, int | None]] = []
            while b.pos < len(b.data):
                topic = b.string()
                if kind == SUBSCRIBE:
                    (qos,) = b.take(1)
                    if qos > 2:
                        raise BoardProtocolError(f"SUBSCRIBE QoS byte {qos}")
                    filters.append((topic, qos))
                else:
                    filters.append((topic, None))
            if not filters:
                raise BoardProtocolError(f"{name} without topic filters")
            f["filters"] = filters
        elif kind in (PINGREQ, DISCONNECT):
            b.done()
        else:
            raise BoardProtocolError(f"a client never sends {name}")
    return Packet(name, t, bytes((first,)) + body, f)


class BoardStream:
    """Bytes in, board packets out (strict: > 4 remaining-length bytes, or a
    packet over `max_packet`, is the board's error)."""

    def __init__(self, max_packet: int = 1 << 20):
        self.buf = bytearray()
        self.max_packet = max_packet

    def feed(self, data: bytes, t: float) -> list[Packet]:
        self.buf += data
        out: list[Packet] = []
        while self.buf:
            rem, shift, i = 0, 0, 1
            while True:
                if i >= len(self.buf):
                    return out
                byte = self.buf[i]
                rem |= (byte & 0x7F) << shift
                i += 1
                if not byte & 0x80:
                    break
                shift += 7
                if i > 4:
                    raise BoardProtocolError("remaining length longer than 4 bytes")
            if rem > self.max_packet:
                raise BoardProtocolError(f"packet of {rem} bytes")
            if len(self.buf) < i + rem:
                return out
            first, body = self.buf[0], bytes(self.buf[i:i + rem])
            del self.buf[:i + rem]
            out.append(parse_board_packet(first, body, t))
        return out


# -- one connection ---------------------------------------------------------------


class ScriptAbort(Exception):
    """A script's wait ended: the board closed, or it never sent what was expected."""


class Conn:
    """One accepted connection, seen by its script and by the test."""

    def __init__(self, broker: "HostileBroker", sock: socket.socket, index: int):
        self.broker = broker
        self.sock = sock
        self.index = index
        self.accepted_at = time.monotonic()
        self.packets: list[Packet] = []
        self.board_errors: list[str] = []
        self.closed_at: float | None = None  # when the board's side ended (EOF/RST) or we closed
        self.closed_by: str | None = None  # "board" (FIN), "reset", "broker", "board-error"
        self.script_error: str | None = None
        self.auto_puback = True  # answer the board's QoS 1 PUBLISH
        self.auto_pingresp = True  # answer the board's PINGREQ
        self.sent_bytes = 0
        self.first_sent_at: float | None = None
        self.marks: dict[str, float] = {}  # a script's own moments: conn.mark("flood")
        self._cond = broker._cond
        self._cursor = 0  # expect() consumes packets in order
        self._control: queue.SimpleQueue = queue.SimpleQueue()  # auto answers (whole packets)
        self._script: queue.SimpleQueue = queue.SimpleQueue()  # script sends, drips, floods
        self._wake = threading.Event()
        self._closing = False

    # -- the script's verbs

    def expect(self, kind: str, timeout: float = 5.0, where: Callable[[Packet], bool] | None = None) -> Packet:
        """The board's next packet (from the last match on) of this kind; the
        ones skipped stay recorded. ScriptAbort when it closes or time runs out."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(self._cursor, len(self.packets)):
                    p = self.packets[i]
                    if p.kind == kind and (where is None or where(p)):
                        self._cursor = i + 1
                        return p
                if self.closed_at is not None:
                    raise ScriptAbort(f"connection {self.index} closed ({self.closed_by}) before {kind}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ScriptAbort(f"no {kind} from the board within {timeout:g} s")
                self._cond.wait(left)

    def send(self, data: bytes) -> None:
        """Queue raw bytes; they go out in order, as one write, never cut by an auto answer."""
        self._push(("send", data))

    def drip(self, data: bytes, every_s: float = 1.0) -> None:
        """Send `data` one byte every `every_s` seconds; nothing else goes out
        meanwhile (a packet on the wire cannot be interrupted)."""
        self._push(("drip", data, every_s))

    def flood(self, chunks: Iterable[bytes]) -> None:
        """Send each chunk (whole packets) as fast as the socket takes them;
        auto answers may go out between chunks, as a broker interleaves."""
        for chunk in chunks:
            self._push(("send", chunk))

    def mark(self, name: str) -> None:
        """Note the time of a moment in the script, for the test to measure from."""
        with self._cond:
            self.marks[name] = time.monotonic()
            self._cond.notify_all()

    def pause(self, seconds: float) -> None:
        if self.wait_closed(seconds):
            raise ScriptAbort(f"connection {self.index} closed during a pause")

    def close(self) -> None:
        """Close our side (FIN) after what was queued."""
        self._push(("close",))

    def wait_closed(self, timeout: float) -> bool:
        """True once the connection has ended (either side), within timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.closed_at is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- what happened

    def of_kind(self, kind: str) -> list[Packet]:
        with self._cond:
            return [p for p in self.packets if p.kind == kind]

    @property
    def connect(self) -> Packet | None:
        with self._cond:
            return self.packets[0] if self.packets and self.packets[0].kind == "CONNECT" else None

    def publishes(self, topic: str | None = None) -> list[Packet]:
        return [p for p in self.of_kind("PUBLISH") if topic is None or p.topic == topic]

    def describe(self) -> str:
        kinds = " ".join(p.kind + (f"({p.topic})" if p.kind == "PUBLISH" else "") for p in self.packets[:12])
        more = f" ... {len(self.packets) - 12} more" if len(self.packets) > 12 else ""
        span = f"{self.closed_at - self.accepted_at:.3f} s" if self.closed_at else "open"
        return (f"conn {self.index}: {span}, closed by {self.closed_by}, board sent [{kinds}{more}]"
                + (f", board errors {self.board_errors}" if self.board_errors else "")
                + (f", script: {self.script_error}" if self.script_error else ""))

    # -- machinery

    def _push(self, item: tuple) -> None:
        self._script.put(item)
        self._wake.set()

    def _mark_closed(self, by: str) -> None:
        with self._cond:
            if self.closed_at is None:
                self.closed_at = time.monotonic()
                self.closed_by = by
            self._cond.notify_all()
        self._wake.set()

    def _write(self, data: bytes) -> None:
        if self.first_sent_at is None:
            self.first_sent_at = time.monotonic()
        self.sock.sendall(data)
        self.sent_bytes += len(data)

    def _reader(self) -> None:
        stream = BoardStream()
        try:
            while True:
                data = self.sock.recv(65536)
                now = time.monotonic()
                if not data:
                    self._mark_closed("board")
                    self._shutdown()  # and our side, as a broker does
                    return
                try:
                    got = stream.feed(data, now)
                except BoardProtocolError as e:
                    with self._cond:
                        self.board_errors.append(str(e))
                    self._mark_closed("board-error")
                    self._shutdown()
                    return
                with self._cond:
                    self.packets.extend(got)
                    self._cond.notify_all()
                for p in got:
                    if p.kind == "PUBLISH" and p.qos == 1 and self.auto_puback:
                        self._control.put(puback(p.packet_id))
                        self._wake.set()
                    elif p.kind == "PINGREQ" and self.auto_pingresp:
                        self._control.put(PINGRESP_BYTES)
                        self._wake.set()
        except OSError:
            self._mark_closed("reset")

    def _writer(self) -> None:
        try:
            while True:
                self._wake.wait()  # set by every push, answer and close
                self._wake.clear()
                if self._closing:
                    return
                while True:
                    try:
                        self._write(self._control.get_nowait())
                        continue
                    except queue.Empty:
                        pass
                    try:
                        item = self._script.get_nowait()
                    except queue.Empty:
                        break
                    if item[0] == "send":
                        self._write(item[1])
                    elif item[0] == "drip":
                        for i in range(len(item[1])):
                            if self.closed_at is not None:
                                break
                            self._write(item[1][i:i + 1])
                            if self.wait_closed(item[2]):
                                break
                    elif item[0] == "close":
                        self._mark_closed("broker")
                        self._shutdown()
                        return
                if self.closed_at is not None and self._script.empty():
                    return
        except OSError:
            self._mark_closed("reset")

    def _run_script(self, script: Callable[["Conn"], None]) -> None:
        try:
            script(self)
        except ScriptAbort as e:
            self.script_error = str(e)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.script_error = f"{type(e).__name__}: {e}"
            self.broker.script_crashes.append(f"conn {self.index}: {type(e).__name__}: {e}")

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- the server -----------------------------------------------------------------------


class HostileBroker:
    """`HostileBroker(script)`: listens on 127.0.0.1 (free port) and runs
    `script(conn)` for every connection. Use as a context manager."""

    tls = None

    def __init__(self, script: Callable[[Conn], None]):
        self.script = script
        # Set by a test: returns a reason to stop waiting early (e.g. the
        # board printed a traceback), or None; checked every 0.25 s.
        self.abort_check: Callable[[], str | None] | None = None
        self.caplog: Any = None  # a test's pytest caplog, for its own checks
        self.host = "127.0.0.1"
        self._cond = threading.Condition()
        self.connections: list[Conn] = []
        self.script_crashes: list[str] = []
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.host, 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop, "hostile-accept")

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _spawn(self, target: Callable, name: str, *args) -> None:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if self._closed:
                sock.close()
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._cond:
                conn = Conn(self, sock, len(self.connections))
                self.connections.append(conn)
                self._cond.notify_all()
            self._spawn(conn._reader, f"hostile-{conn.index}-reader")
            self._spawn(conn._writer, f"hostile-{conn.index}-writer")
            self._spawn(conn._run_script, f"hostile-{conn.index}-script", self.script)

    def wait_connections(self, n: int, timeout: float) -> list[Conn]:
        """The first n connections, once the n-th has sent its first packet
        (its CONNECT, normally); AssertionError after timeout."""
        __tracebackhide__ = True
        self.wait(lambda: len(self.connections) >= n and bool(self.connections[n - 1].packets), timeout,
                  f"{n} connection(s) with a first packet")
        with self._cond:
            return self.connections[:n]

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until predicate() (checked whenever the board sends or a
        connection changes); AssertionError naming `what` after timeout."""
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what}: not within {timeout:g} s\n{self.describe()}")
                reason = self.abort_check() if self.abort_check is not None else None
                if reason:
                    raise AssertionError(f"{what}: stopped waiting: {reason}\n{self.describe()}")
                self._cond.wait(min(left, 0.25))

    def describe(self) -> str:
        with self._cond:
            conns = list(self.connections)
        return "\n".join("  " + c.describe() for c in conns) or "  (no connection)"

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (close() alone does not)
        except OSError:
            pass
        self._listener.close()
        with self._cond:
            conns = list(self.connections)
        for c in conns:
            c._closing = True
            c._mark_closed("broker")
            c._wake.set()
            c._shutdown()
            try:
                c.sock.close()
            except OSError:
                pass
        for t in self._threads:
            t.join(2)

    def __enter__(self) -> "HostileBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- script building blocks ---------------------------------------------------------------


def go_online(conn: Conn, suback_codes: Iterable[int] = (1,), timeout: float = 10.0) -> Packet:
    """Play a well-behaved broker up to the board's birth: CONNECT -> CONNACK 0,
    SUBSCRIBE -> SUBACK (codes), then wait for the retained status PUBLISH.
    Returns the SUBSCRIBE."""
    conn.expect("CONNECT", timeout)
    conn.send(connack(0))
    sub = conn.expect("SUBSCRIBE", timeout)
    conn.send(suback(sub.packet_id, suback_codes))
    conn.expect("PUBLISH", timeout, where=lambda p: p.topic.endswith("/status"))
    return sub


def well_behaved(conn: Conn) -> None:
    """CONNACK 0, SUBACK QoS 1, PUBACK and PINGRESP for everything."""
    go_online(conn)
