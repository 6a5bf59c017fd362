#!/usr/bin/env python3
"""The seed's browser layer, measured: N emulated boards -> Mosquitto ->
`esp32emu dashboard` -> headless Chromium (issue 16). Prints a table.

    make bench-dashboard                       # 10,000 boards at interval 10 s (~1,000 msg/s)
    make bench-dashboard BENCH_ARGS=--quick    # 1,000 boards at interval 2 s, shorter windows
    .venv/bin/python bench/dashboard_bench.py --devices 2000 --interval 4 --window 20

What it measures, and how:
- publish-to-browser latency: probe devices (a paho client in this process)
  publish telemetry whose `ts` is `time.time()` with sub-millisecond
  resolution (a board's own `ts` is whole seconds, too coarse for this);
  the page's SSE handler (`window.esp32dash.listeners`, called as each event
  arrives) and a WebSocket client in the same page subtract `ts` from
  `Date.now()`: one machine, one clock. The boards supply the load.
- bytes on the wire per telemetry event: MQTT from the PUBLISH packets a
  subscriber receives (fixed header + topic + payload, QoS 0); SSE and
  WebSocket from raw sockets in this process that count every byte the
  backend sends (headers excluded; chunked framing, other events and
  heartbeats included), WebSocket both plain and with permessage-deflate
  (what Chromium negotiates).
- backend CPU per 1,000 events: utime+stime of the backend process
  (/proc/PID/stat) over the window, per 1,000 telemetry messages it took in.
- 100 concurrent SSE clients: bench/dashboard_backend.py's `Readers`
  (asyncio Protocols over 2 spawned processes, uvloop): each reads every
  byte, timestamps each recv chunk as it arrives, and scans the chunk's whole
  events with bytes regexes (no JSON): telemetry counted, every event id
  checked to follow the one before, the probes' `ts` and the backend's
  receive time `at` taken. Their latency (publish -> read, and backend
  receive -> read), their own event-loop lag and CPU, the bytes the kernel
  holds unread for them (`ss`), and the backend's CPU. They join with the
  page's last event id (a replay, as an EventSource reconnects), not with a
  3 MB whole-fleet snapshot each (`--snapshots` for that).
- time until the page shows all devices: navigation start -> the page's
  device count equals N (performance.now() in the page).
- frames/s while updating: requestAnimationFrame callbacks per second over
  the window, and Chromium's long tasks (PerformanceObserver "longtask").
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402

from emulator.broker.mosquitto import OBSERVER_BACKLOG, Broker  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from dashboard_backend import TIMED, Readers  # noqa: E402  (the SSE readers)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ESP32EMU = str(Path(sys.executable).with_name("esp32emu"))
PROBES = 10
TICK = os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


# -- the backend ----------------------------------------------------------------------------


class Backend:
    def __init__(self, broker_url: str, workdir: Path):
        self.token = secrets.token_urlsafe(16)
        self.log = open(workdir / "dashboard.log", "w+")
        self.proc = subprocess.Popen([ESP32EMU, "dashboard", "--broker", broker_url, "--port", "0", "--token", self.token,
                                      "--state", str(workdir / "state")],
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            self.log.seek(0)
            m = re.search(r"dashboard at (http://[\d.]+:(\d+)/\?token=\S+)", self.log.read())
            if m:
                self.url, self.port = m.group(1), int(m.group(2))
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.seek(0)
                raise SystemExit(f"the dashboard did not start:\n{self.log.read()[-2000:]}")
            time.sleep(0.1)

    def get(self, path: str) -> dict:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        c.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return json.loads(body)

    def online(self) -> int:
        return sum(1 for d in self.get("/api/devices")["devices"] if d["state"] == "online")

    def cpu(self) -> float:
        return cpu_s(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# -- MQTT: the probes and the wire-size counter -----------------------------------------------


class Probes(threading.Thread):
    """Telemetry of PROBES devices with a precise `ts`, `rate` messages/s in all."""

    def __init__(self, host: str, port: int, prefix: str, rate: float):
        super().__init__(daemon=True)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-probes-{os.getpid()}")
        self.client.connect(host, port)
        self.client.loop_start()
        self.prefix, self.rate = prefix, rate
        self.stop_flag = threading.Event()
        self.sent = 0

    def run(self) -> None:
        seq = [0] * PROBES
        period = 1.0 / self.rate
        due = time.monotonic()
        k = 0
        while not self.stop_flag.is_set():
            i = k % PROBES
            payload = json.dumps({"seq": seq[i], "ts": time.time(), "t": 21.5, "h": 40.0})
            self.client.publish(f"{self.prefix}/probe-{i:02d}/telemetry", payload, qos=0)
            seq[i] += 1
            k += 1
            self.sent += 1
            due += period
            self.stop_flag.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(5)
        self.client.loop_stop()
        self.client.disconnect()


class MqttWire:
    """PUBLISH sizes of the boards' telemetry as a subscriber receives it."""

    def __init__(self, host: str, port: int, prefix: str):
        self.sizes: list[int] = []
        self.counting = False
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-wire-{os.getpid()}")
        self.client.on_message = self._on
        self.client.connect(host, port)
        self.client.subscribe(f"{prefix}/+/telemetry", qos=0)
        self.client.loop_start()

    def _on(self, client, userdata, msg) -> None:
        if self.counting and "/probe-" not in msg.topic:
            rl = 2 + len(msg.topic.encode()) + len(msg.payload)
            self.sizes.append(1 + varint_len(rl) + rl)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# -- raw SSE and WebSocket byte counters ---------------------------------------------------------


def _connect(port: int, request: bytes) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(request)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed during the response headers: {buf[:200]!r}")
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status and b" 101 " not in status:
        raise ConnectionError(status.decode(errors="replace"))
    return s, rest


class SseCounter(threading.Thread):
    def __init__(self, port: int, token: str):
        super().__init__(daemon=True)
        self.sock, first = _connect(port, (f"GET /api/events?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           "Accept: text/event-stream\r\n\r\n").encode())
        self.data = bytearray()
        self.counting = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        self.sock.settimeout(0.5)
        while not self.done.is_set():
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                continue
            if not chunk:
                break
            if self.counting.is_set():
                self.data += chunk
        self.sock.close()

    def result(self) -> tuple[int, int, float | None]:
        """(bytes, telemetry events, median bytes of one telemetry event's text)."""
        raw = bytes(self.data)
        n = raw.count(b"event: telemetry\n")
        frames = [len(f) + 2 for f in raw.split(b"\n\n") if b"event: telemetry\n" in f and f.startswith(b"id:")]
        return len(raw), n, pct(frames, 50)


class WsCounter(threading.Thread):
    def __init__(self, port: int, token: str, deflate: bool):
        super().__init__(daemon=True)
        key = base64.b64encode(os.urandom(16)).decode()
        ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
        self.sock, self.buf = _connect(port, (f"GET /api/ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                              "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                                              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n").encode())
        self.deflate = deflate
        self.send_text(json.dumps({"type": "subscribe", "devices": "*"}))
        self.bytes = 0
        self.telemetry = 0
        self.negotiated = False
        self.counting = threading.Event()
        self.done = threading.Event()
        self.inflater = zlib.decompressobj(-15)

    def send_text(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        head = bytes([0x81, 0x80 | len(data)]) if len(data) < 126 else bytes([0x81, 0x80 | 126]) + len(data).to_bytes(2, "big")
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def run(self) -> None:
        self.sock.settimeout(0.5)
        buf = bytearray(self.buf)
        while not self.done.is_set():
            try:
                chunk = self.sock.recv(262144)
            except socket.timeout:
                continue
            if not chunk:
                break
            counting = self.counting.is_set()
            buf += chunk
            while len(buf) >= 2:
                b0, b1 = buf[0], buf[1]
                n, off = b1 & 0x7F, 2
                if n == 126:
                    if len(buf) < 4:
                        break
                    n, off = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    if len(buf) < 10:
                        break
                    n, off = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < off + n:
                    break
                payload = bytes(buf[off:off + n])
                if b0 & 0x40:  # RSV1: compressed (context kept across messages)
                    self.negotiated = True
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                if counting:
                    self.bytes += off + n
                    if b'"type":"telemetry"' in payload or b'"type": "telemetry"' in payload:
                        self.telemetry += 1
                del buf[:off + n]
        self.sock.close()


# -- 100 SSE clients: bench/dashboard_backend.py's readers ----------------------------------------


def reader_queues(port: int) -> tuple[int, int]:
    """(bytes the kernel holds for the SSE readers to read, bytes in the backend's send queues),
    summed over the connections to the backend's port (`ss`)."""
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True).stdout
    rows = [line.split() for line in out.splitlines() if len(line.split()) >= 4]
    return (sum(int(r[0]) for r in rows if r[3].endswith(f":{port}")),
            sum(int(r[1]) for r in rows if r[2].endswith(f":{port}")))


# -- the page ------------------------------------------------------------------------------------

PAGE_HOOKS = """() => {
  window.__bench = { sse: [], ws: [], frames: 0, longtasks: [], t0: 0 };
  window.esp32dash.listeners.push((type, d, arrival) => {
    if (type === 'telemetry' && d.device.startsWith('probe-')) window.__bench.sse.push(arrival - d.payload.ts * 1000);
  });
  const token = new URLSearchParams(location.search).get('token');
  const ws = new WebSocket(`ws://${location.host}/api/ws?token=${token}`);
  ws.onopen = () => ws.send(JSON.stringify({ type: 'subscribe', devices: '*' }));
  ws.onmessage = (m) => {
    const arrival = Date.now();
    const d = JSON.parse(m.data);
    if (d.type === 'telemetry' && d.device.startsWith('probe-')) window.__bench.ws.push(arrival - d.payload.ts * 1000);
  };
  window.__bench.wsocket = ws;
  new PerformanceObserver((list) => { for (const e of list.getEntries()) window.__bench.longtasks.push(e.duration); })
    .observe({ entryTypes: ['longtask'] });
}"""

START_WINDOW = """() => {
  const b = window.__bench; b.sse.length = 0; b.ws.length = 0; b.longtasks.length = 0; b.frames = 0;
  b.t0 = performance.now(); b.counting = true;
  const tick = () => { if (b.counting) { b.frames++; requestAnimationFrame(tick); } };
  requestAnimationFrame(tick);
}"""

END_WINDOW = """() => {
  const b = window.__bench; b.counting = false;
  return { sse: b.sse, ws: b.ws, frames: b.frames, seconds: (performance.now() - b.t0) / 1000,
           longtasks: b.longtasks, wsState: b.wsocket.readyState, stats: window.esp32dash.stats };
}"""


# -- the run ---------------------------------------------------------------------------------------


def fmt(v, unit="", digits=1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1,000 boards at interval 2 s, 15 s windows")
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--interval", type=float, default=None)
    ap.add_argument("--window", type=float, default=None, help="seconds per measurement window")
    ap.add_argument("--clients", type=int, default=100, help="concurrent SSE clients in the last phase")
    ap.add_argument("--trace", type=Path, default=None,
                    help="write the SSE clients' (client, read time, backend receive -> read) per probe event here (JSON)")
    ap.add_argument("--snapshots", action="store_true",
                    help="the SSE clients connect afresh (a whole-fleet snapshot each), not from the page's last id")
    ap.add_argument("--reader-procs", type=int, default=2, help="processes the SSE clients are spread over")
    ap.add_argument("--screenshot", type=Path, default=None, help="save the page (a device panel open) as PNG here")
    ap.add_argument("--probe-rate", type=float, default=20.0, help="probe telemetry messages/s (latency samples)")
    args = ap.parse_args()
    devices = args.devices or (1000 if args.quick else 10_000)
    interval = args.interval or (2.0 if args.quick else 10.0)
    window = args.window or (15.0 if args.quick else 30.0)
    if not Path(CHROMIUM).exists():
        raise SystemExit("chromium is not installed: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="esp32emu-dashbench-"))
    broker = Broker(work / "broker", extra_config=OBSERVER_BACKLOG)
    broker.start()
    rows: list[tuple[str, str, str]] = []
    loads: list[float] = []  # the 1-minute load average at the end of each window
    fleet = backend = wire = probes = None
    try:
        backend = Backend(broker.url, work)
        print(f"bench: broker {broker.url}, backend {backend.url.split('?')[0]} (pid {backend.proc.pid})", file=sys.stderr)
        fleet_log = open(work / "fleet.log", "w")
        fleet = subprocess.Popen([ESP32EMU, "fleet", "--devices", str(devices), "--interval", str(interval),
                                  "--broker", broker.url, "--quiet", "--state", str(work / "fleet"),
                                  "--keepalive", "60"],
                                 stdout=fleet_log, stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.monotonic()
        last_n, last_change = 0, t0
        while True:  # all online; or, on a busy machine, no progress for 60 s with 95 % online
            n = backend.online()
            now = time.monotonic()
            if n > last_n:
                last_n, last_change = n, now
            if n >= devices or (n >= 0.95 * devices and now - last_change > 60):
                break
            if fleet.poll() is not None:
                raise SystemExit(f"the fleet stopped: see {work / 'fleet.log'}")
            if now - t0 > 120 + devices / 20:
                raise SystemExit(f"only {n}/{devices} boards online after {now - t0:.0f} s")
            time.sleep(1)
        boot_s = time.monotonic() - t0
        print(f"bench: {n}/{devices} boards online after {boot_s:.0f} s", file=sys.stderr)
        time.sleep(interval)  # every board's schedule running: the load is steady
        rows.append(("boards online (backend's count)", f"{n:,}/{devices:,}", f"after {boot_s:.0f} s of booting"))

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            known = len(backend.get("/api/devices")["devices"])
            page.goto(backend.url)
            page.wait_for_function(f"Number(document.getElementById('count-total').textContent) >= {known}",
                                   timeout=120_000, polling="raf")
            shown_ms = page.evaluate("performance.now()")
            rows.append(("page shows all devices (navigation -> count)", fmt(shown_ms / 1000, " s", 2),
                         f"{known:,} devices in the page's count, rows drawn"))
            page.evaluate(PAGE_HOOKS)
            page.wait_for_function("window.__bench.wsocket.readyState === 1", timeout=10_000)

            # -- window 1: one page (SSE + WS), raw byte counters
            wire = MqttWire(broker.host, broker.port, "devices")
            sse = SseCounter(backend.port, backend.token)
            ws_plain = WsCounter(backend.port, backend.token, deflate=False)
            ws_deflate = WsCounter(backend.port, backend.token, deflate=True)
            for t in (sse, ws_plain, ws_deflate):
                t.start()
            probes = Probes(broker.host, broker.port, "devices", args.probe_rate)
            probes.start()
            time.sleep(1.0)
            page.evaluate(START_WINDOW)
            wire.counting = True
            for t in (sse, ws_plain, ws_deflate):
                t.counting.set()
            c0 = backend.cpu()
            time.sleep(window)
            c1 = backend.cpu()
            wire.counting = False
            for t in (sse, ws_plain, ws_deflate):
                t.counting.clear()
            res = page.evaluate(END_WINDOW)
            loads.append(os.getloadavg()[0])
            for t in (sse, ws_plain, ws_deflate):
                t.done.set()
            sse_bytes, sse_n, sse_frame = sse.result()
            events_in = sse_n  # telemetry the backend took in and sent, over the window
            rate = events_in / window
            rows.append(("telemetry through the backend", fmt(rate, " msg/s", 0),
                         f"{devices:,} boards at {interval:g} s + {args.probe_rate:g}/s probes, {window:g} s window"))
            # the probes' publish -> the backend's receive (`at`), from the raw SSE stream: the MQTT side's share
            mqtt_side = [(float(at) - float(ts)) * 1000 for at, ts in
                         re.findall(TIMED.format(prefix="probe-").encode(), bytes(sse.data))]
            rows.append(("publish -> backend receive p50 / p99", f"{fmt(pct(mqtt_side, 50), ' ms')} / "
                         f"{fmt(pct(mqtt_side, 99), ' ms')}", f"{len(mqtt_side)} probe events: their `at` - `ts` "
                         "(the probe publisher, Mosquitto, the backend's paho thread)"))
            for name, lat in (("SSE", res["sse"]), ("WebSocket", res["ws"])):
                rows.append((f"publish -> browser latency, {name} p50 / p99",
                             f"{fmt(pct(lat, 50), ' ms')} / {fmt(pct(lat, 99), ' ms')}",
                             f"{len(lat)} probe events, page handler, Date.now() - ts"))
            mq = wire.sizes
            rows.append(("bytes per telemetry event, MQTT", fmt(sum(mq) / len(mq) if mq else None, " B"),
                         f"PUBLISH QoS 0: header + topic + payload, {len(mq)} msgs"))
            rows.append(("bytes per telemetry event, SSE", fmt(sse_bytes / sse_n if sse_n else None, " B"),
                         f"all bytes on the stream / events (one event's text: {fmt(sse_frame, ' B', 0)})"))
            rows.append(("bytes per telemetry event, WebSocket", fmt(ws_plain.bytes / ws_plain.telemetry if ws_plain.telemetry else None, " B"),
                         "frames, no compression"))
            rows.append(("bytes per telemetry event, WebSocket deflate",
                         fmt(ws_deflate.bytes / ws_deflate.telemetry if ws_deflate.telemetry else None, " B"),
                         "permessage-deflate (Chromium asks for it)" + ("" if ws_deflate.negotiated else ": NOT negotiated")))
            rows.append(("backend CPU per 1,000 events", fmt((c1 - c0) / max(events_in, 1) * 1000 * 1000, " ms"),
                         f"{(c1 - c0) / window * 100:.0f} % of a core; clients: page SSE+WS, 1 SSE, 2 WS"))
            fps = res["frames"] / res["seconds"]
            lt = res["longtasks"]
            rows.append(("page frames/s while updating", fmt(fps, "", 1),
                         f"requestAnimationFrame; {len(lt)} long tasks, longest {fmt(max(lt) if lt else 0, ' ms', 0)}"))
            st = res["stats"]
            rows.append(("page stream integrity", f"{st['dups']} dup / {st['gaps']} gap",
                         f"{st['events']:,} events, {st['resyncs']} resync"))

            # -- window 2: 100 SSE clients besides the page
            # They join as the page would reconnect, with its last event id (a replay from the ring): 100
            # snapshots of the whole fleet at once (3 MB each at 10,000 devices) are the connect storm that
            # dashboard_backend.py measures, not the streaming this window is about (--snapshots: with them).
            resume = None if args.snapshots else page.evaluate("window.esp32dash.stats.lastId")
            readers = Readers(backend.port, backend.token, args.clients, args.reader_procs, prefix="probe-", timeout=180,
                              last_event_id=resume)
            time.sleep(5.0 if args.snapshots else 2.0)  # what queued behind the snapshots or the replay, read
            readers.mark()
            n0 = readers.counts[:]
            page.evaluate(START_WINDOW)
            c0 = backend.cpu()
            r0 = [cpu_s(pid) for pid in readers.pids]
            t_start = time.monotonic()
            queued = []
            while time.monotonic() - t_start < window:
                time.sleep(1.0)
                queued.append(reader_queues(backend.port))
            c1 = backend.cpu()
            r1 = [cpu_s(pid) for pid in readers.pids]
            n1 = readers.counts[:]
            elapsed = time.monotonic() - t_start
            res2 = page.evaluate(END_WINDOW)
            loads.append(os.getloadavg()[0])
            out = readers.finish()
            if args.trace:
                args.trace.write_text(json.dumps({"queued": queued, "trace": out["trace"], "lags": out["lags"]}))
            t_end = max((x[1] for x in out["trace"]), default=0.0)
            thirds: list[list[float]] = [[], [], []]
            for x in out["trace"]:
                thirds[max(0, 2 - int((t_end - x[1]) / (window / 3)))].append(x[2] * 1000)
            lat = [x * 1000 for x in out["lat"]]
            lat_at = [x * 1000 for x in out["lat_at"]]
            lag = [x * 1000 for x in out["lag"]]
            tel = out["telemetry"]
            per_client = sorted((b - a) / elapsed for a, b in zip(n0, n1))
            rows.append((f"{args.clients} SSE clients: telemetry read a client", fmt(per_client[len(per_client) // 2], " msg/s", 0),
                         f"median over the clients (min {per_client[0]:,.0f}, max {per_client[-1]:,.0f}); "
                         "the fleet's rate in this window"))
            rows.append((f"{args.clients} SSE clients: latency p50 / p99",
                         f"{fmt(pct(lat, 50), ' ms')} / {fmt(pct(lat, 99), ' ms')}",
                         f"{len(lat)} probe events over all clients, read at each recv chunk; joined "
                         + ("afresh (a snapshot each)" if resume is None else "from the page's last id (a replay)")))
            rows.append((f"{args.clients} SSE clients: p99 by thirds of the window", " / ".join(fmt(pct(t, 99), " ms") for t in thirds),
                         "a backlog growing or draining shows here"))
            rows.append((f"{args.clients} SSE clients: backend receive -> read p99", fmt(pct(lat_at, 99), " ms"),
                         "from the event's `at` (paho's thread in the backend) to the client's recv"))
            rows.append((f"{args.clients} SSE clients: readers' own loop lag p99", fmt(pct(lag, 99), " ms"),
                         f"{len(readers.pids)} processes, {sum(r1) - sum(r0):.1f} CPU s in {elapsed:.0f} s "
                         f"({(sum(r1) - sum(r0)) / elapsed * 100:.0f} % of a core); load {os.getloadavg()[0]:.1f}"))
            rows.append((f"{args.clients} SSE clients: kernel queues", f"{max(q[0] for q in queued):,} B",
                         f"max unread for the readers (sampled 1/s; backend send queues max {max(q[1] for q in queued):,} B)"))
            rows.append((f"{args.clients} SSE clients: integrity", f"{out['gaps']} gap / {out['dups']} dup",
                         f"every event id in every stream; telemetry a client {min(tel):,}..{max(tel):,}, "
                         f"{sum(tel):,} in all; {out['closed']} ended by the backend (dropped: fell > 5,000 events "
                         f"behind); {len(out['errors'])} failed {out['errors'][:2]}"))
            rows.append((f"{args.clients} SSE clients: backend CPU", f"{(c1 - c0) / elapsed * 100:.0f} % of a core",
                         f"{sum(out['bytes']) / 1e6:,.0f} MB read by the clients in all"))
            rows.append((f"{args.clients} SSE clients: page SSE p99 / frames/s",
                         f"{fmt(pct(res2['sse'], 99), ' ms')} / {res2['frames'] / res2['seconds']:.1f}", ""))
            if args.screenshot:
                page.evaluate("""() => [...document.querySelectorAll('#rows .row')][3].click()""")
                page.wait_for_function("document.querySelector('#p-results') && !document.getElementById('panel').hidden")
                page.click("#panel button[data-op=ping]")
                page.wait_for_function("document.querySelector('#p-results li') && !document.querySelector('#p-results li.pending')",
                                       timeout=30_000)
                page.screenshot(path=str(args.screenshot))
            browser.close()
    finally:
        if probes:
            probes.stop()
        if wire:
            wire.stop()
        if fleet is not None and fleet.poll() is None:
            os.killpg(fleet.pid, signal.SIGINT)
            try:
                fleet.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(fleet.pid, signal.SIGKILL)
                fleet.wait()
        if backend:
            backend.stop()
        broker.stop()

    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    print(f"\nesp32emu dashboard bench: {devices:,} boards, interval {interval:g} s, window {window:g} s, "
          f"{os.cpu_count()} CPUs; load average (1 min) at the windows' ends: {', '.join(f'{x:.1f}' for x in loads)}\n")
    print(f"{'measure':<{w0}}  {'value':>{w1}}  how")
    print(f"{'-' * w0}  {'-' * w1}  {'-' * 40}")
    for a, b, c in rows:
        print(f"{a:<{w0}}  {b:>{w1}}  {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
