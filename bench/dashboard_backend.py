"""The dashboard backend without a browser (issue 16): `esp32emu dashboard`
as its own process on a private Mosquitto, fed by a paho publisher at a
steady rate (telemetry carrying `ts` = the publish time), read by raw SSE
clients in processes of its own (same clock).

Phases (each prints one row), after a 3 s warm-up that is not reported:
  steady      K SSE clients reading, R msg/s for D s
  + stalled   the same, plus one SSE client that never reads, there the
              whole phase (when the backend drops it, its queue full, the
              next one connects): the readers' p99 must not move. A stalled
              client connects with the readers' last event id, so what it
              costs is its stall, not a snapshot of the fleet (what any new
              client costs)
  The two alternate ABBA ABBA... (--repeats pairs), so that the machine's
  drift falls on both alike; the summary gives the pooled p99 of each kind,
  each pair's difference, and steady against the next steady (the noise).
  connect     1,000 SSE clients connecting at once: seconds until every one
              has its snapshot, and ms from one publish until all have it

The readers are `Readers`: K asyncio Protocols spread over --procs spawned
processes (uvloop), each reading every byte; a recv chunk is timestamped once
as it arrives and its whole events scanned with bytes regexes (no JSON): the
telemetry counted, every event id checked to follow the one before, `ts` and
the backend's receive time `at` taken. dashboard_bench.py's 100 clients are
the same readers.

Columns:
  events      telemetry events the reader with the fewest got / published
              (and no gap, no duplicate id in any stream: checked)
  p50/p99/max publish-to-read latency, ms (one clock)
  at>rd99     p99 from the backend's receive (`at`) to the read, ms
  lag99       p99 of the readers' own event-loop lateness (a reader that is
              behind shows here), ms
  cpu s/1k    backend process CPU seconds (user+sys, every thread) per 1,000
              MQTT messages taken in
  rd cpu s    the readers' CPU seconds over the phase
  stalled     stalled clients connected in the phase; dropped: clients the
              backend dropped for falling behind
  load        the 1-minute load average at the phase's end

Prints a table; not a timed test.

    .venv/bin/python bench/dashboard_backend.py                 # R=1000 msg/s, K=10 readers, D=15 s, 4 pairs
    .venv/bin/python bench/dashboard_backend.py --readers 100 --repeats 1 --connect 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
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
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=workdir, start_new_session=True,
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


# -- the SSE readers: cheap, honest, in their own processes ------------------------------------

ID_LINE = re.compile(rb"(?:^|\n)id: (\d+)\n")
# A telemetry event whose payload starts with seq and a precise ts (the publisher's, the bench's probes'):
# the backend's receive time `at` and the publish time `ts`, as the backend encodes them (hub.encode).
TIMED = r'"device":"{prefix}[^"]*","at":([0-9.]+),"payload":{{"seq":\d+,"ts":([0-9.]+)'


class _Stream:
    """One SSE client as an asyncio Protocol: every byte is read (and
    counted); each recv chunk is timestamped once as it arrives; the chunk's
    whole events are scanned with bytes regexes, never parsed as JSON: the
    telemetry events counted, every id checked to follow the one before
    (one global sequence: a gap or a duplicate is counted), and the timed
    events' `ts` and `at` taken for the latency."""

    def __init__(self, k, counts, since, latest, lat, lat_at, timed, ready):
        self.k, self.counts, self.since, self.latest, self.lat, self.lat_at, self.timed, self.ready = \
            k, counts, since, latest, lat, lat_at, timed, ready
        self.head = b""
        self.parts: list[bytes] = []  # the unfinished event's chunks
        self.trace: list[tuple] = []  # (client, read at, publish -> read, backend receive -> read) per timed event
        self.nbytes = 0
        self.telemetry = 0
        self.last_id: int | None = None
        self.gaps = self.dups = 0
        self.status = None
        self.closed = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.nbytes += len(data)
        if self.status is None:  # the response's head
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            self.status = head.split(b"\r\n", 1)[0]
        if b"\n\n" not in data and not (data[:1] == b"\n" and self.parts and self.parts[-1][-1:] == b"\n"):
            self.parts.append(data)  # inside a long event (a 10,000-device snapshot): no copying until it ends
            return
        buf = b"".join([*self.parts, data]) if self.parts else data
        cut = buf.rfind(b"\n\n") + 2
        done, rest = buf[:cut], buf[cut:]
        self.parts = [rest] if rest else []
        n = done.count(b"\nevent: telemetry\n")
        if n:
            self.telemetry += n
            self.counts[self.k] = self.telemetry
        ids = ID_LINE.findall(done)
        if ids:
            seq = list(map(int, ids))
            prev = self.last_id
            if prev is None:
                self.ready.set_result(None)
            start = seq[0] if prev is None else prev + 1
            if seq != list(range(start, start + len(seq))):
                for a, b in zip([start - 1, *seq], seq):
                    self.gaps += b > a + 1
                    self.dups += b <= a
            self.last_id = max(seq[-1], prev or 0)
            if self.k == 0:
                self.latest.value = self.last_id
        if self.timed is not None and now >= self.since.value:
            for m in self.timed.finditer(done):
                self.lat.append(now - float(m.group(2)))
                self.lat_at.append(now - float(m.group(1)))
                self.trace.append((self.k, round(now, 4), round(self.lat[-1], 4), round(self.lat_at[-1], 4)))

    def eof_received(self):
        self.closed = True

    def connection_lost(self, exc):
        self.closed = True
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before its snapshot ({self.status!r})"))


def _reader_process(port: int, token: str, slots: list[int], counts, since, latest, prefix: str, timeout: float, q,
                    stop, last_event_id: int | None) -> None:
    # A session of its own: with Linux's autogroup scheduling (sched_autogroup_enabled) CPU is shared
    # between sessions first, so in the bench's session the readers would share one share with the
    # bench and Chromium (and wait for a core for seconds on a busy machine), while the backend and
    # the fleet each have one. Each reader process stands for browsers on a machine of their own.
    os.setsid()
    try:
        import uvloop  # what the backend runs on too; the readers' loop costs less
        uvloop.install()
    except ImportError:
        pass
    import asyncio as aio

    lat: list[float] = []
    lat_at: list[float] = []
    lag: list[float] = []
    lags: list[tuple] = []  # (time, lag)
    timed = None if prefix is None else re.compile(TIMED.format(prefix=re.escape(prefix)).encode())

    cpu = [0.0]

    async def ticker() -> None:  # the loop's own lateness: a reader that is behind shows here
        c0 = time.process_time()
        t = time.monotonic()
        while not stop.is_set():
            await aio.sleep(0.02)
            now = time.monotonic()
            if time.time() >= since.value:
                lag.append(now - t - 0.02)
                lags.append((round(time.time(), 4), round(now - t - 0.02, 4)))
            else:
                c0 = time.process_time()
            t = now
        cpu[0] = time.process_time() - c0

    async def main() -> None:
        loop = aio.get_running_loop()
        tick = aio.create_task(ticker())
        streams = []
        for k in slots:
            ready = loop.create_future()
            tr, st = await loop.create_connection(lambda k=k, ready=ready: _Stream(k, counts, since, latest, lat, lat_at, timed, ready),
                                                  "127.0.0.1", port)
            resume = "" if last_event_id is None else f"Last-Event-ID: {last_event_id}\r\n"
            tr.write(f"GET /api/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     f"Accept: text/event-stream\r\n{resume}\r\n".encode())
            streams.append((tr, st, ready))
        await aio.wait_for(aio.gather(*(r for _, _, r in streams)), timeout)  # every one has its first event
        q.put(("ready", None))
        await tick
        for tr, _, _ in streams:
            tr.close()
        q.put(("done", {"lat": lat, "lat_at": lat_at, "lag": lag, "cpu": cpu[0],
                        "bytes": [st.nbytes for _, st, _ in streams], "telemetry": [st.telemetry for _, st, _ in streams],
                        "gaps": sum(st.gaps for _, st, _ in streams), "dups": sum(st.dups for _, st, _ in streams),
                        "closed": sum(st.closed for _, st, _ in streams),
                        "trace": [x for _, st, _ in streams for x in st.trace], "lags": lags}))

    try:
        aio.run(main())
    except BaseException as e:  # noqa: BLE001 - said by the parent
        q.put(("error", repr(e)))


class Readers:
    """`clients` SSE clients on /api/events spread over `procs` processes
    (spawned: each its own interpreter and loop), each reading every byte.
    `counts` (shared memory) holds each client's telemetry events so far;
    latency is taken for telemetry of devices whose id starts with `prefix`
    (their payload carries a precise `ts` first after `seq`). With
    `last_event_id` they join as an EventSource reconnects (a replay from
    the ring, no snapshot). Each process runs in a session of its own."""

    def __init__(self, port: int, token: str, clients: int, procs: int = 2, prefix: str | None = "", timeout: float = 60,
                 last_event_id: int | None = None):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.clients = clients
        self.counts = ctx.Array("q", clients, lock=False)
        self.since = ctx.Value("d", float("inf"), lock=False)  # latency, lag and CPU are taken from mark() on
        self.latest = ctx.Value("q", 0, lock=False)  # the last event id client 0 read
        self.q, self.stop = ctx.Queue(), ctx.Event()
        procs = max(1, min(procs, clients))
        self.procs = [ctx.Process(target=_reader_process, daemon=True,
                                  args=(port, token, list(range(i, clients, procs)), self.counts, self.since, self.latest, prefix, timeout,
                                        self.q, self.stop, last_event_id)) for i in range(procs)]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            kind, what = self.q.get(timeout=timeout + 30)
            if kind != "ready":
                self.close()
                raise SystemExit(f"SSE readers: {what}")
        self.pids = [p.pid for p in self.procs]

    def mark(self) -> None:
        """The measurement starts now: latency, loop lag and CPU from here on."""
        self.since.value = time.time()

    def least(self) -> int:
        return min(self.counts[:])

    def wait_for(self, n: int, timeout: float) -> bool:
        """Until every client has `n` telemetry events (False: not within `timeout`)."""
        deadline = time.monotonic() + timeout
        while self.least() < n:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def finish(self) -> dict:
        self.stop.set()
        out = {"lat": [], "lat_at": [], "lag": [], "cpu": [], "bytes": [], "telemetry": [], "gaps": 0, "dups": 0, "closed": 0,
               "trace": [], "lags": []}
        errors = []
        for _ in self.procs:
            kind, r = self.q.get(timeout=60)
            if kind != "done":
                errors.append(r)
                continue
            for key in ("lat", "lat_at", "lag", "bytes", "telemetry", "trace", "lags"):
                out[key] += r[key]
            out["cpu"].append(r["cpu"])
            for key in ("gaps", "dups", "closed"):
                out[key] += r[key]
        self.close()
        out["errors"] = errors
        return out

    def close(self) -> None:
        self.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
                p.join()


def metric(port: int, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))] * 1000 if s else float("nan")


def phase(port: int, pid: int, pub: Publisher, readers: int, procs: int, rate: float, seconds: float,
          stall: bool) -> dict:
    """One phase: `readers` SSE clients read while `rate` msg/s are published
    for `seconds`. With `stall`, one client that never reads is connected
    the whole time: when the backend drops it (its queue full), the next
    one connects. /metrics is polled every 0.5 s in both kinds of phase."""
    pool = Readers(port, TOKEN, readers, procs, prefix="d")

    def stop_reading() -> socket.socket:  # from the last id: a short replay, not a whole-fleet snapshot to build
        return stalled_sse(port, f"&last_event_id={pool.latest.value}", token=TOKEN)

    stalled = [stop_reading()] if stall else []
    dropped0 = dropped = metric(port, "esp32emu_clients_dropped_total")
    c0 = cpu_s(pid)
    pool.mark()
    sender = threading.Thread(target=pub.run, args=(rate, seconds))
    n = int(rate * seconds)
    sender.start()
    while sender.is_alive():
        sender.join(0.5)
        now = metric(port, "esp32emu_clients_dropped_total")
        if stall and now > dropped:  # dropped: another client stops reading
            stalled.append(stop_reading())
        dropped = now
    complete = pool.wait_for(n, 30)  # the tail arrives
    cpu = cpu_s(pid) - c0
    r = pool.finish()
    dropped = metric(port, "esp32emu_clients_dropped_total") - dropped0
    for s in stalled:
        s.close()
    return {"events": f"{min(r['telemetry'])}/{n}", "lat": r["lat"], "p50": pct(r["lat"], 50), "p99": pct(r["lat"], 99), "lat_at": r["lat_at"],
            "max": pct(r["lat"], 100), "at99": pct(r["lat_at"], 99), "lag99": pct(r["lag"], 99),
            "cpu": cpu / n * 1000, "readers_cpu": sum(r["cpu"]), "dropped": int(dropped), "stalled": len(stalled),
            "complete": complete and not r["gaps"] and not r["dups"] and not r["errors"],
            "gaps": r["gaps"], "dups": r["dups"], "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="telemetry messages per second (default 1000)")
    ap.add_argument("--readers", type=int, default=10, help="SSE clients reading (default 10)")
    ap.add_argument("--procs", type=int, default=2, help="processes the readers are spread over (default 2)")
    ap.add_argument("--seconds", type=float, default=15.0, help="seconds per phase (default 15)")
    ap.add_argument("--repeats", type=int, default=4, help="steady/stalled pairs, in the order ABBA ABBA... (default 4)")
    ap.add_argument("--connect", type=int, default=1000, help="SSE clients connecting at once (default 1000; 0: skip)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "broker")
        broker.start()
        proc = None
        try:
            proc, port = start_backend(broker, Path(tmp))
            pub = Publisher(broker)
            phase(port, proc.pid, pub, args.readers, args.procs, args.rate, 3.0, False)  # warm-up, not reported
            rows = []
            for i in range(args.repeats):
                for stall in ((False, True) if i % 2 == 0 else (True, False)):
                    r = phase(port, proc.pid, pub, args.readers, args.procs, args.rate, args.seconds, stall)
                    rows.append(("+ stalled" if stall else "steady", r))
                    print(f"  {rows[-1][0]:<10} p99 {r['p99']:.1f} ms (load {r['load']:.2f})", file=sys.stderr, flush=True)
            connected = fanout = None
            if args.connect:
                connected, fanout, _ = asyncio.run(many_sse(port, args.connect, lambda: pub.one(
                    "devices/d00000/telemetry", json.dumps({"seq": 10**6, "ts": time.time()})), token=TOKEN))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            broker.stop()
    print(f"\ndashboard backend: {args.rate:.0f} msg/s over 1,000 devices, {args.readers} SSE readers "
          f"({args.procs} processes), {args.seconds:g} s a phase, phases in the order ABBA; {os.cpu_count()} CPUs")
    print(f"{'phase':<10} {'events':>12} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'at>rd99':>7} {'lag99':>6} "
          f"{'cpu s/1k':>8} {'rd cpu s':>8} {'stalled':>7} {'dropped':>7} {'load':>5}")
    for name, r in rows:
        print(f"{name:<10} {r['events']:>12} {r['p50']:>7.1f} {r['p99']:>7.1f} {r['max']:>7.1f} {r['at99']:>7.1f} "
              f"{r['lag99']:>6.1f} {r['cpu']:>8.3f} {r['readers_cpu']:>8.1f} {r['stalled']:>7} {r['dropped']:>7} {r['load']:>5.2f}")
    steady = [r for name, r in rows if name == "steady"]
    stalled = [r for name, r in rows if name != "steady"]
    pooled_a = pct([x for r in steady for x in r["lat"]], 99)
    pooled_b = pct([x for r in stalled for x in r["lat"]], 99)
    at_a = pct([x for r in steady for x in r["lat_at"]], 99)
    at_b = pct([x for r in stalled for x in r["lat_at"]], 99)
    ratios = [b["p99"] / a["p99"] - 1 for a, b in zip(steady, stalled)]
    noise = [steady[i + 1]["p99"] / steady[i]["p99"] - 1 for i in range(len(steady) - 1)]
    print(f"\nreaders' p99, steady vs + stalled: pooled over all phases {pooled_a:.1f} vs {pooled_b:.1f} ms "
          f"({(pooled_b / pooled_a - 1) * 100:+.0f} %); per pair {', '.join(f'{x * 100:+.0f} %' for x in ratios)}; "
          f"steady vs the next steady (the noise) {', '.join(f'{x * 100:+.0f} %' for x in noise) or 'n/a'}; "
          f"backend receive to read, pooled: {at_a:.1f} vs {at_b:.1f} ms ({(at_b / at_a - 1) * 100:+.0f} %)")
    if connected is not None:
        print(f"connect    {args.connect} SSE clients at once: all with a snapshot in {connected:.2f} s; "
              f"one event reached all in {fanout * 1000:.0f} ms")
    if not all(r["complete"] for _, r in rows):
        print("WARNING: a reader missed events, or saw a gap or a duplicate id (see the events column)")


if __name__ == "__main__":
    main()
