"""Helpers for the dashboard's backend tests (tests/test_dashboard_*.py):
the backend on a real Mosquitto, served by real uvicorn on a free loopback
port in this process, and a plain SSE reader over http.client (so a test
decides when it reads, and when it stops reading)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time

import httpx

from emulator.dashboard.server import Dashboard
from emulator.observe.counting import FleetObserver

TOKEN = "test-token-123"


class Backend:
    """The backend (`esp32emu dashboard` without its command line) on `broker`."""

    def __init__(self, broker, token: str = TOKEN, certs=None, **options):
        self.observer = FleetObserver(broker.host, broker.port)
        if certs is not None:  # mqtts://: the backend identity, as `esp32emu dashboard` does
            self.observer.use_tls(certs, "backend-dashboard")
        self.dashboard = Dashboard(self.observer, port=0, token=token, **options)
        self.observer.start()
        self.dashboard.start()
        self.hub = self.dashboard.hub
        self.port = self.dashboard.port
        self.http = httpx.Client(base_url=self.dashboard.base, timeout=30.0,
                                 headers={"Authorization": f"Bearer {token}"})

    def get(self, path: str, **kw) -> httpx.Response:
        return self.http.get(path, **kw)

    def command(self, device: str, body, **kw) -> httpx.Response:
        content = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return self.http.post(f"/api/devices/{device}/commands", content=content, **kw)

    def wait(self, predicate, timeout: float = 20.0, what: str = "the condition") -> None:
        """Wait (on the observer's condition, re-checked after each message) until
        predicate(devices) holds for the backend's model."""
        if not self.observer.wait_until(predicate, timeout):
            raise AssertionError(f"{what} did not hold within {timeout:g} s")

    def sse(self, query: str = "", last_event_id: int | None = None, timeout: float = 20.0) -> "SSE":
        return SSE(self.port, f"/api/events?token={TOKEN}{query}", last_event_id, timeout)

    def close(self) -> None:
        self.http.close()
        self.dashboard.stop()
        self.observer.stop()


class SSE:
    """One EventSource-like reader: `next()` returns the next event as a dict
    (`id`, `event`, `data` parsed from JSON), `comments` counts heartbeats."""

    def __init__(self, port: int, path: str, last_event_id: int | None = None, timeout: float = 20.0):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.conn.request("GET", path, headers=headers)
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.retry: int | None = None
        self.comments = 0

    def next(self) -> dict:
        """The next event (socket timeout: the constructor's `timeout`); EOFError when the stream ended."""
        event: dict = {}
        while True:
            raw = self.response.readline()
            if not raw:
                raise EOFError("the stream ended")
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in event:
                    event["data"] = json.loads(event["data"])
                    if "id" in event:
                        event["id"] = int(event["id"])
                    return event
                continue
            if line.startswith(":"):
                self.comments += 1
                continue
            field, _, value = line.partition(": ")
            if field == "retry":
                self.retry = int(value)
            else:
                event[field] = value

    def until(self, predicate, limit: int = 100_000) -> list[dict]:
        """Events up to and including the first that matches."""
        out = []
        for _ in range(limit):
            out.append(self.next())
            if predicate(out[-1]):
                return out
        raise AssertionError(f"no matching event in {limit}")

    def close(self) -> None:
        self.conn.close()


def stalled_sse(port: int, query: str = "", token: str = TOKEN) -> socket.socket:
    """An SSE client that sends its request and then never reads (a tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /api/events?token={token}{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
    return s


def stalled_ws(port: int, subscribe: dict, token: str = TOKEN) -> socket.socket:
    """A WebSocket client that subscribes and then never reads (a tiny receive buffer)."""
    import os

    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET /api/ws?token={token} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(1)  # byte by byte: nothing after the handshake is read
    assert head.startswith(b"HTTP/1.1 101"), head
    data = json.dumps(subscribe).encode()
    assert len(data) < 126
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
    return s


def publish_telemetry(client, device: str, seqs, **readings) -> None:
    """A device that is not an emulated board: telemetry with the given seqs, `ts` = now."""
    for seq in seqs:
        client.publish(f"devices/{device}/telemetry", json.dumps({"seq": seq, "ts": time.time(), **readings}).encode(), qos=0)


async def many_sse(port: int, n: int, publish, token: str = TOKEN) -> tuple[float, float, int]:
    """n raw SSE clients connect at once; (seconds until every one has its
    snapshot, seconds from `publish()` until every one has the next
    telemetry event, how many distinct ids those events had)."""

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
        writer.write(f"GET /api/events?token={token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        await reader.readuntil(b"event: snapshot\n")
        return reader, writer

    t0 = time.monotonic()
    conns = await asyncio.gather(*(one() for _ in range(n)))
    connected = time.monotonic() - t0
    t1 = time.monotonic()
    await asyncio.to_thread(publish)
    ids = set()

    async def telemetry(reader):
        head = await reader.readuntil(b"event: telemetry\n")
        ids.add(head.rsplit(b"id: ", 1)[1].split(b"\n")[0])

    await asyncio.gather(*(telemetry(r) for r, _ in conns))
    fanout = time.monotonic() - t1
    for _, w in conns:
        w.close()
    return connected, fanout, len(ids)
