"""The firmware's MQTT transport on the real MicroPython VM (the unix port,
`.venv/bin/micropython`) against a real Mosquitto: 1,000 QoS 1 messages
published to the client's subscribed topic while its event loop is busy
(a task burning the CPU in short bursts) all arrive, and the broker gets a
PUBACK for every one (micropython/micropython#17351: a read cancelled by a
timeout can drop bytes; the client's one reader task is never cancelled);
and a dripped 256 MB PUBLISH from a scripted server ends the link after the
started-packet deadline."""

from __future__ import annotations

import asyncio
import queue
import re
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.scripted_broker import CONNACK, ScriptedServer, drip_huge_publish, serve_until_subscribe, suback

ROOT = Path(__file__).resolve().parents[1]
MICROPYTHON = Path(sys.executable).parent / "micropython"
SCRIPT = ROOT / "tests" / "micropython" / "vm_transport_client.py"
FIRMWARE = ROOT / "firmware"
COUNT = 1000
# The heap is generous on purpose: this checks the transport, not the heap
# budget (the codec alone does not import on 100 KB from .py yet).
HEAP = "512k"

pytestmark = pytest.mark.skipif(not MICROPYTHON.exists(), reason=f"{MICROPYTHON} is missing")


class Lines:
    """A child's stdout, line by line, waited on with deadlines."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def expect(self, prefix: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                line = self.q.get(timeout=max(left, 0.001))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no line starting {prefix!r} within {timeout} s; output:\n" + "\n".join(self.seen))
            self.seen.append(line)
            if line.startswith(prefix):
                return line


def test_qos1_flood_under_a_busy_loop_loses_nothing(broker_factory):
    broker = broker_factory(
        # The broker must not drop anything itself: room for the whole burst.
        extra_config=["max_queued_messages 10000", "max_inflight_messages 20"],
        log_types=("all",),
    )
    topic = "vmtest/in"
    proc = subprocess.Popen(
        [str(MICROPYTHON), "-X", f"heapsize={HEAP}", str(SCRIPT), str(FIRMWARE), broker.host, str(broker.port),
         str(COUNT), topic],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out = Lines(proc)
        ready = out.expect("READY", 30)
        assert "suback=[1]" in ready, ready
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="vm-publisher", protocol=mqtt.MQTTv311)
        pub.max_inflight_messages_set(100)
        pub.max_queued_messages_set(0)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        try:
            infos = [pub.publish(topic, str(i), qos=1) for i in range(COUNT)]
            for info in infos:
                info.wait_for_publish(30)
                assert info.is_published()
        finally:
            pub.loop_stop()
            pub.disconnect()
        done = out.expect("DONE", 150)
        assert proc.wait(30) == 0, "\n".join(out.seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    fields = dict(re.findall(r"(\w+)=(\S+)", done))
    assert fields["missing"] == "[]", done
    assert int(fields["distinct"]) == COUNT, done
    assert int(fields["bursts"]) > 0, done
    # Mosquitto's own count of the client's PUBACKs ("Received PUBACK from ...").
    pubacks = re.findall(r"Received PUBACK from vm-transport \(Mid: (\d+)", broker.log_text())
    assert len(pubacks) >= COUNT, f"broker saw {len(pubacks)} PUBACKs for {COUNT} messages"


def test_dripped_huge_publish_ends_the_link_on_the_vm():
    """The started-packet deadline on the real interpreter: a scripted
    server declares a 256 MB PUBLISH and drips it a byte every 200 ms; the
    client's pump ends with LinkError one keepalive (2 s) after the first
    byte, and closes the socket."""

    def script(conn, server):
        pid = serve_until_subscribe(conn)
        conn.sendall(suback(pid, 1))
        drip_huge_publish(conn, server, b"vmtest/in")

    server = ScriptedServer(script)
    proc = subprocess.Popen(
        [str(MICROPYTHON), "-X", f"heapsize={HEAP}", str(SCRIPT), str(FIRMWARE), "127.0.0.1", str(server.port),
         "1", "vmtest/in", "pump"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out = Lines(proc)
        out.expect("READY", 30)
        server.wait(lambda: "first_byte" in server.marks, 10, "first byte of the dripped packet")
        line = out.expect("LINK", 15)
        server.wait(lambda: len(server.closed) >= 1, 5, "close of the dripping link")
        assert proc.wait(10) == 0, "\n".join(out.seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
    assert line.endswith("reason=packet not completed within 2000 ms"), line
    lived = server.closed[0] - server.marks["first_byte"]
    assert 1.9 <= lived <= 3.5, f"link closed {lived:.2f} s after the packet started"


class SlicedTlsServer:
    """A scripted MQTT server over TLS (asyncio, in its own thread) that
    grants the SUBSCRIBE and then sends `count` QoS 1 PUBLISHes, payload =
    their index. Its bytes reach the client through a loopback proxy that
    cuts them into 50-byte pieces 2 ms apart, so TLS records arrive in parts
    (MicroPython's Stream.readinto then returns None: nothing decrypted yet)."""

    def __init__(self, cert: Path, key: Path, count: int, topic: str) -> None:
        self.count, self.topic = count, topic.encode()
        self.pubacks: set[int] = set()
        self.cond = threading.Condition()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def setup():
            tls_srv = await asyncio.start_server(self._mqtt, "127.0.0.1", 0, ssl=self.ctx)
            self.tls_port = tls_srv.sockets[0].getsockname()[1]
            proxy = await asyncio.start_server(self._proxy, "127.0.0.1", 0)
            self.port = proxy.sockets[0].getsockname()[1]
            started.set()

        self.loop.run_until_complete(setup())
        self.loop.run_forever()

    @staticmethod
    async def _packet(r: asyncio.StreamReader) -> tuple[int, bytes]:
        first = (await r.readexactly(1))[0]
        rem, shift = 0, 0
        while True:
            b = (await r.readexactly(1))[0]
            rem |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        return first, await r.readexactly(rem)

    async def _mqtt(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await self._packet(r)  # CONNECT
            w.write(CONNACK)
            while True:
                first, body = await self._packet(r)
                if first >> 4 == 8:
                    break
            w.write(suback(int.from_bytes(body[:2], "big"), 1))
            for i in range(self.count):
                payload = str(i).encode()
                body = len(self.topic).to_bytes(2, "big") + self.topic + (i % 65535 + 1).to_bytes(2, "big") + payload
                w.write(bytes([0x32, len(body)]) + body)  # bodies stay under 128 bytes
                await w.drain()
            while True:
                first, body = await self._packet(r)
                if first >> 4 == 4:
                    with self.cond:
                        self.pubacks.add(int.from_bytes(body[:2], "big"))
                        self.cond.notify_all()
                elif first >> 4 == 12:
                    w.write(b"\xd0\x00")
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    async def _proxy(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", self.tls_port)

        async def up():
            while data := await cr.read(4096):
                sw.write(data)
            sw.close()

        async def down():
            while data := await sr.read(4096):
                for i in range(0, len(data), 50):
                    cw.write(data[i:i + 50])
                    await cw.drain()
                    await asyncio.sleep(0.002)
            cw.close()

        await asyncio.gather(up(), down(), return_exceptions=True)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_tls_records_cut_in_pieces_lose_nothing(esp32emu_pki):
    """Over TLS a readable socket does not mean a whole record: readinto
    returns None until one is complete. The reader must wait on, not take
    it for the broker's EOF; 300 QoS 1 messages all arrive and are PUBACKed."""
    count = 300
    server = SlicedTlsServer(esp32emu_pki / "broker.crt", esp32emu_pki / "broker.key", count, "vmtest/tls")
    proc = subprocess.Popen(
        [str(MICROPYTHON), "-X", f"heapsize={HEAP}", str(SCRIPT), str(FIRMWARE), "127.0.0.1", str(server.port),
         str(count), "vmtest/tls", "tls"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        out = Lines(proc)
        out.expect("READY", 30)
        done = out.expect("DONE", 60)
        assert proc.wait(10) == 0, "\n".join(out.seen)
        with server.cond:
            server.cond.wait_for(lambda: len(server.pubacks) >= count, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
    fields = dict(re.findall(r"(\w+)=(\S+)", done))
    assert fields["missing"] == "[]" and int(fields["distinct"]) == count, done
    assert len(server.pubacks) == count
