"""The firmware's MQTT transport on the real MicroPython VM (the unix port,
`.venv/bin/micropython`) against a real Mosquitto: 1,000 QoS 1 messages
published to the client's subscribed topic while its event loop is busy
(a task burning the CPU in short bursts) all arrive, and the broker gets a
PUBACK for every one (micropython/micropython#17351: a read cancelled by a
timeout can drop bytes; the client's one reader task is never cancelled);
and a dripped 256 MB PUBLISH from a scripted server ends the link after the
started-packet deadline."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.scripted_broker import ScriptedServer, drip_huge_publish, serve_until_subscribe, suback

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
