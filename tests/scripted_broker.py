"""A scripted MQTT server for tests: a TCP server on a free loopback port
that plays a broker by hand, one script per accepted connection, so a test
can make it misbehave (refuse a subscription, never answer, drip a packet).
Only the few MQTT 3.1.1 bytes it needs are written here, independent of the
firmware's codec."""

from __future__ import annotations

import socket
import threading
import time

CONNACK = b"\x20\x02\x00\x00"
PINGRESP = b"\xd0\x00"


class ScriptedServer:
    """A TCP server on a free loopback port; each accepted connection runs
    `script(conn, server)` in its own thread. Records when connections open
    and close; `wait(predicate, timeout)` sleeps on a condition."""

    def __init__(self, script) -> None:
        self.script = script
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.cond = threading.Condition()
        self.opened: list[float] = []
        self.closed: list[float] = []
        self.marks: dict[str, float] = {}
        self._stop = False
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.cond:
                self._conns.append(conn)
                self.opened.append(time.monotonic())
                self.cond.notify_all()
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.script(conn, self)
        except (OSError, EOFError):
            pass
        finally:
            with self.cond:
                self.closed.append(time.monotonic())
                self.cond.notify_all()
            conn.close()

    def mark(self, name: str) -> None:
        with self.cond:
            self.marks.setdefault(name, time.monotonic())
            self.cond.notify_all()

    def wait(self, predicate, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"scripted server: no {what} within {timeout} s "
                                     f"(opened {len(self.opened)}, closed {len(self.closed)})")

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        with self.cond:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def read_packet(conn: socket.socket) -> tuple[int, bytes]:
    """One MQTT packet: (first byte, body). EOFError when the peer closes."""

    def exactly(n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = conn.recv(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    first = exactly(1)[0]
    rem, shift = 0, 0
    while True:
        b = exactly(1)[0]
        rem |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return first, exactly(rem)


def serve_until_subscribe(conn: socket.socket) -> int:
    """CONNECT -> CONNACK, then answer PINGREQs until SUBSCRIBE; its packet id."""
    first, _ = read_packet(conn)
    assert first >> 4 == 1, "expected CONNECT"
    conn.sendall(CONNACK)
    while True:
        first, body = read_packet(conn)
        if first >> 4 == 12:
            conn.sendall(PINGRESP)
        elif first >> 4 == 8:
            return int.from_bytes(body[:2], "big")


def suback(pid: int, code: int) -> bytes:
    return b"\x90\x03" + pid.to_bytes(2, "big") + bytes([code])


def drip_huge_publish(conn: socket.socket, server: ScriptedServer, topic: bytes, every: float = 0.2) -> None:
    """Declare a 268,435,455-byte QoS 1 PUBLISH on `topic` and send it one
    byte every `every` seconds (marking "first_byte"), reading and ignoring
    what the peer sends (its PINGREQs), until the peer closes."""
    head = b"\x32\xff\xff\xff\x7f" + len(topic).to_bytes(2, "big") + topic + b"\x00\x07"
    conn.sendall(head[:1])
    server.mark("first_byte")
    conn.settimeout(every)
    sent = 1
    while True:
        try:
            if not conn.recv(64):
                return  # the peer closed the link
        except socket.timeout:
            pass
        conn.sendall(head[sent:sent + 1] if sent < len(head) else b"x")
        sent += 1
