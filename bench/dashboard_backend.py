"""The dashboard backend without a browser (issue 16): `esp32emu dashboard`
as its own process on a private Mosquitto, fed by a paho publisher at a
steady rate (telemetry carrying `ts` = the publish time), read by raw SSE
clients in this process (same clock).

Phases (each prints one row):
  steady      K SSE clients reading, R msg/s for D s
  + stalled   the same, plus one SSE client that never reads (dropped once
              its bounded queue is full): the readers' p99 must not move
  connect     1,000 SSE clients connecting at once: seconds until every one
              has its snapshot, and ms from one publish until all have it

Columns:
  events      telemetry events each reader got (all readers got all: checked)
  p50/p99/max publish-to-read latency, ms (one clock)
  cpu/1k      backend process CPU seconds (user+sys, every thread) per 1,000
              MQTT messages taken in
  dropped     SSE clients the backend dropped for falling behind

Prints a table; not a timed test.

    .venv/bin/python bench/dashboard_backend.py                 # R=1000 msg/s, K=10 readers, D=10 s
    .venv/bin/python bench/dashboard_backend.py --rate 200 --readers 100 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.broker.mosquitto import Broker  # noqa: E402
from tests.dashboard import many_sse, stalled_sse  # noqa: E402  (the tests' SSE clients)

TOKEN = "bench-token-1234"
CLK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def start_backend(broker: Broker, workdir: Path) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--state", str(workdir), "dashboard", "--broker", broker.url,
         "--port", "0", "--token", TOKEN, "--history", "20000"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    for line in proc.stderr:
        m = re.search(r"dashboard at http://127\.0\.0\.1:(\d+)/", line)
        if m:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
    raise SystemExit(f"the backend did not start (exit {proc.wait()})")


class Publisher:
    """A paho publisher in its own process (the readers here must not share its GIL)."""

    def __init__(self, broker: Broker):
        self.host, self.port = broker.host, broker.port
        self.sent = 0

    def run(self, rate: float, seconds: float, devices: int = 1000) -> int:
        """`rate` telemetry messages a second for `seconds`, on a fixed schedule."""
        import multiprocessing

        n = int(rate * seconds)
        p = multiprocessing.get_context("fork").Process(target=_publish, args=(self.host, self.port, rate, n, devices,
                                                                               self.sent))
        p.start()
        p.join()
        self.sent += n
        return n

    def one(self, topic: str, payload: str) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-one")
        client.connect(self.host, self.port)
        client.loop_start()
        client.publish(topic, payload, qos=1).wait_for_publish(10)
        client.disconnect()
        client.loop_stop()


def _publish(host: str, port: int, rate: float, n: int, devices: int, base: int) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    t0 = time.monotonic()
    for i in range(n):
        delay = t0 + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        k = base + i
        client.publish(f"devices/d{k % devices:05d}/telemetry",
                       json.dumps({"seq": k // devices, "ts": time.time(), "t": 21.5, "h": 40.2}))
    time.sleep(0.5)  # let paho's thread write the last ones
    client.disconnect()
    client.loop_stop()


async def reader(port: int, lat: list[float], counts: list[int], slot: int) -> None:
    """Reads the stream until cancelled; `counts[slot]` telemetry events so far."""
    r, w = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    w.write(f"GET /api/events?token={TOKEN} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await w.drain()
    try:
        while True:
            line = await r.readline()
            if not line:
                return
            if line.startswith(b'data: {"type":"telemetry"'):
                now = time.time()
                i = line.index(b'"ts":') + 5
                lat.append(now - float(line[i:line.index(b",", i)]))
                counts[slot] += 1
    finally:
        w.close()


def metric(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


async def phase(port: int, pid: int, pub: Publisher, readers: int, rate: float, seconds: float, stall: bool) -> dict:
    lat: list[float] = []
    counts = [0] * readers
    tasks = [asyncio.create_task(reader(port, lat, counts, k)) for k in range(readers)]
    await asyncio.sleep(1.0)  # connected, snapshots read
    blocker = stalled_sse(port, token=TOKEN) if stall else None
    dropped0 = metric(port, "esp32emu_clients_dropped_total")
    c0 = cpu_s(pid)
    n = await asyncio.to_thread(pub.run, rate, seconds)
    deadline = time.monotonic() + 30
    while min(counts) < n and time.monotonic() < deadline:  # the tail arrives
        await asyncio.sleep(0.1)
    cpu = cpu_s(pid) - c0
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    dropped = metric(port, "esp32emu_clients_dropped_total") - dropped0
    if blocker is not None:
        blocker.close()
    lat.sort()
    k = len(lat)
    return {"events": f"{min(counts)}/{n}", "p50": lat[k // 2] * 1000, "p99": lat[int(k * 0.99)] * 1000,
            "max": lat[-1] * 1000, "cpu": cpu / n * 1000, "dropped": int(dropped), "complete": min(counts) == n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="telemetry messages per second (default 1000)")
    ap.add_argument("--readers", type=int, default=10, help="SSE clients reading (default 10)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per phase (default 10)")
    ap.add_argument("--connect", type=int, default=1000, help="SSE clients connecting at once (default 1000)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker")
        broker.start()
        proc = None
        try:
            proc, port = start_backend(broker, Path(tmp))
            pub = Publisher(broker)
            rows = []
            for name, stall in (("steady", False), ("+ stalled", True)):
                rows.append((name, asyncio.run(phase(port, proc.pid, pub, args.readers, args.rate, args.seconds, stall))))
            connected, fanout, _ = asyncio.run(many_sse(port, args.connect, lambda: pub.one(
                "devices/d00000/telemetry", json.dumps({"seq": 10**6, "ts": time.time()})), token=TOKEN))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            broker.stop()
    print(f"\ndashboard backend: {args.rate:.0f} msg/s over 1,000 devices, {args.readers} SSE readers, {args.seconds:g} s a phase")
    print(f"{'phase':<10} {'events':>12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'cpu s/1k':>9} {'dropped':>8}")
    for name, r in rows:
        print(f"{name:<10} {r['events']:>12} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['max']:>8.1f} {r['cpu']:>9.3f} {r['dropped']:>8}")
    print(f"connect    {args.connect} SSE clients at once: all with a snapshot in {connected:.2f} s; "
          f"one event reached all in {fanout * 1000:.0f} ms")
    if not all(r["complete"] for _, r in rows):
        print("WARNING: a reader missed events (see the events column)")


if __name__ == "__main__":
    main()
