"""Fleet scale benchmark (`make bench`): esp32emu's fleet against the usual
Python device simulator (one paho-mqtt client with its own network thread per
device; 300 clients per process, because paho's select() stops one process
at ~340), both against a private Mosquitto, measured the same way: an
independent paho observer counts births and telemetry `seq` gaps.

For each N and telemetry interval (keepalive 30 s):
  all online   seconds from the start until the observer saw every birth
  RSS/board    (process RSS at the end - RSS before any device) / N, KiB
  CPU/1k msgs  CPU seconds per 1000 telemetry messages in the steady state
               (from all online to the end; esp32emu: parent with its
               observer + workers; baseline: its processes)
  ..., boards only  the same without esp32emu's parent (observer, view): the
               workers alone, what the baseline's figure counts
  load         the 1-minute load average at the end of the row
  lost         telemetry lost (seq gaps seen by the observer) / sent
  lag p99      how late a 50 ms timer fires in the steady state (esp32emu:
               the board event loops; baseline: a thread among the clients)

After the grid, more esp32emu rows (--extras, issue 15): 30,000 boards at
10 s, 10,000 at 10 s while a second process burns one core, and 5,000 at 1 s
on the standard library's event loop instead of uvloop. Fleets above 20,000
boards power on at N/40 per second (all online within 60 s needs it). The
open-file limit is raised for the broker and the fleet (children inherit
it): soft to hard, and above the hard limit where we may (root).

Prints a table, then for each system the largest N that met the targets (all
online within 60 s, nothing lost, lag p99 under 100 ms); not a timed test.
The baseline is given up after --cap seconds at a size ("did not finish")
and larger sizes are then skipped.

    .venv/bin/python bench/fleet_bench.py            # N in 100 1000 5000 10000 + the extras, ~25 min
    .venv/bin/python bench/fleet_bench.py --quick    # N in 100 1000, ~6 min
    .venv/bin/python bench/fleet_bench.py --sizes 10000 --intervals 10 --systems esp32emu
    .venv/bin/python bench/fleet_bench.py --sizes 5000 --systems esp32emu --extras 30000@10 10000@10+busy
    .venv/bin/python bench/fleet_bench.py --sizes 1000 --systems paho --per-process 100000  # one process
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.broker.mosquitto import OBSERVER_BACKLOG, Broker  # noqa: E402
from emulator.fleet.workers import raise_fd_limit, rss_kb  # noqa: E402
from emulator.observe.counting import FleetObserver, percentile  # noqa: E402

KEEPALIVE = 30
TARGET_ONLINE_S = 60
TARGET_LAG_MS = 100


def window_s(interval: float, quick: bool) -> float:
    """The steady-state measuring window: at least 3 telemetry rounds."""
    return max(3 * interval + 2, 15 if quick else 30)


# -- esp32emu ------------------------------------------------------------------------


def boot_rate(n: int, args) -> float:
    """--boot-rate, or faster for a fleet that would take over 40 s to power on
    (the target is all online within 60 s)."""
    return max(args.boot_rate, n / 40)


class BusyNeighbour:
    """A second process that burns one core (`while True: pass`) for as long
    as the `with` lasts: the margin the fleet has on a busy machine."""

    def __init__(self, on: bool):
        self.on = on
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> BusyNeighbour:
        if self.on:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def run_esp32emu(n: int, interval: float, args, work: Path, loop: str | None = None, busy: bool = False,
                 tree: Path = REPO) -> dict:
    with BusyNeighbour(busy):
        return _run_esp32emu(n, interval, args, work, loop, tree)


def _run_esp32emu(n: int, interval: float, args, work: Path, loop: str | None, tree: Path) -> dict:
    broker = Broker(work / "broker", extra_config=OBSERVER_BACKLOG).start()
    rate = boot_rate(n, args)
    env = dict(os.environ)
    if loop:
        env["ESP32EMU_LOOP"] = loop
    if tree != REPO:  # another checkout's emulator and firmware (--compare-tree)
        env["PYTHONPATH"] = str(tree)
    try:
        boot_s = n / rate
        duration = boot_s + 15 + window_s(interval, args.quick)
        report = work / "report.json"
        cmd = [sys.executable, "-m", "emulator", "--state", str(work / "state"), "fleet", "--devices", str(n)]
        cmd += ["--broker", broker.url, "--interval", str(interval), "--keepalive", str(KEEPALIVE)]
        cmd += ["--duration", f"{duration:.0f}", "--boot-rate", f"{rate:g}", "--quiet", "--report", str(report)]
        if args.workers:  # else the fleet's default: one worker per 2,500 boards, at most one a core
            cmd += ["--workers", str(min(args.workers, n))]
        r = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, timeout=duration + 180, env=env)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1]}
        data = json.loads(report.read_text())
    finally:
        broker.stop()
    steady = data.get("steady") or {}
    return {
        "all_online_s": data["all_online_s"],
        "online": data["online_at_end"],
        "rss_kb": data["rss_per_board_kb"],
        "cpu_per_1k": steady.get("cpu_s_per_1000_msgs"),
        "boards_cpu_per_1k": steady.get("boards_cpu_s_per_1000_msgs"),
        "lost": data["telemetry_lost"],
        "sent": data["telemetry_sent"],
        "lag_p99": steady.get("loop_lag_p99_ms"),
        "msgs_per_s": steady.get("msgs_per_s"),
        "loop": data.get("loop", "asyncio"),
        "workers": data["workers"],
        "boot_rate": rate,
        "load": round(os.getloadavg()[0], 1),
    }


# -- the baseline: one paho client, one network thread, per device -------------------


def baseline_child(n: int, first: int, interval: float, host: str, port: int, cap: float, window: float) -> None:
    """Runs in its own process: N paho clients (ids from `first`) with
    loop_start() each; one scheduler thread publishes telemetry for all of
    them (kinder to the baseline than a thread per device); prints one JSON
    line at the end."""
    import paho.mqtt.client as mqtt

    raise_fd_limit()
    rss0 = rss_kb()
    connected = threading.Semaphore(0)
    clients = []
    for i in range(first, first + n):
        did = f"sim-{i + 1:05d}"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=did, protocol=mqtt.MQTTv311)
        c.will_set(f"devices/{did}/status", json.dumps({"online": False}), qos=1, retain=True)

        def on_connect(client, userdata, flags, rc, props, did=did):
            if not rc.is_failure:
                client.publish(f"devices/{did}/status", json.dumps({"online": True, "fw": "sim", "boot": 1}), qos=1, retain=True)
                connected.release()

        c.on_connect = on_connect
        c.connect_async(host, port, keepalive=KEEPALIVE)
        c.loop_start()
        clients.append((did, c))
    t0 = time.monotonic()
    got = 0
    while got < n and time.monotonic() - t0 < cap:
        if connected.acquire(timeout=0.5):
            got += 1
    out = {"connected": got, "connect_s": round(time.monotonic() - t0, 1), "threads": threading.active_count()}
    if got == n:
        lags: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            while not stop.is_set():
                t = time.monotonic()
                time.sleep(0.05)
                lags.append((time.monotonic() - t - 0.05) * 1000)

        threading.Thread(target=probe, daemon=True).start()
        cpu0, published, seqs = time.process_time(), 0, [0] * n
        end = time.monotonic() + window
        next_round = time.monotonic()
        while time.monotonic() < end:
            for k, (did, c) in enumerate(clients):
                body = {"seq": seqs[k], "ts": int(time.time()), "t": 21.5, "h": 40.2, "p": 1013.2, "bat": 3.9, "mcu": 45.0}
                c.publish(f"devices/{did}/telemetry", json.dumps(body), qos=0)
                seqs[k] += 1
                published += 1
            next_round += interval
            time.sleep(max(next_round - time.monotonic(), 0))
        stop.set()
        out.update(cpu_s=time.process_time() - cpu0, published=published, lags=[round(x, 2) for x in lags])
    out["rss_kb"] = rss_kb() - rss0
    print(json.dumps(out), flush=True)
    os._exit(0)  # 10,000 threads do not join quickly; the broker sees the sockets close


def run_baseline(n: int, interval: float, args, work: Path) -> dict:
    """The baseline in as many processes as it needs: paho's loop uses
    select(), which cannot watch a descriptor above 1023, and each client
    holds three (its socket and a socketpair to wake its thread), so one
    process stops at ~340 clients. Given --per-process clients each (300),
    it is measured on what threads per client cost, not on that limit."""
    broker = Broker(work / "broker", extra_config=OBSERVER_BACKLOG).start()
    obs = FleetObserver(broker.host, broker.port)
    obs.expect(n)
    obs.start()
    try:
        t0 = time.monotonic()
        window = window_s(interval, args.quick)
        procs = []
        for first in range(0, n, args.per_process):
            k = min(args.per_process, n - first)
            cmd = [sys.executable, __file__, "--baseline-child", str(k), str(first), str(interval)]
            cmd += [broker.host, str(broker.port), str(args.cap), str(window)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        children, failed = [], None
        deadline = time.monotonic() + args.cap + window + 120
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                proc.kill()
                failed = failed or "did not finish (hung)"
                continue
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if not lines:
                failed = failed or f"crashed: {(err.strip().splitlines() or ['?'])[-1][:80]}"
                continue
            children.append(json.loads(lines[-1]))
        obs.flush()
        s = obs.summary()
    finally:
        obs.stop()
        broker.stop()
    if failed:
        return {"error": failed, "procs": len(procs)}
    connected = sum(c["connected"] for c in children)
    rss = round(sum(c["rss_kb"] for c in children) / n, 1)
    if connected < n:
        return {"error": f"did not finish: {connected}/{n} connected in {args.cap:.0f} s", "rss_kb": rss, "procs": len(procs)}
    published = sum(c.get("published", 0) for c in children)
    cpu = sum(c.get("cpu_s", 0.0) for c in children)
    return {
        "all_online_s": None if obs.all_online_at is None else round(obs.all_online_at - t0, 1),
        "rss_kb": rss,
        "cpu_per_1k": round(cpu / published * 1000, 3) if published else None,
        "boards_cpu_per_1k": round(cpu / published * 1000, 3) if published else None,
        "load": round(os.getloadavg()[0], 1),
        "lost": s["telemetry_lost"],
        "sent": s["telemetry_sent"],
        "lag_p99": percentile(sorted(x for c in children for x in c.get("lags", [])), 99),
        "procs": len(procs),
    }


# -- the table -------------------------------------------------------------------------


def meets_targets(r: dict) -> bool:
    return (
        "error" not in r
        and r["all_online_s"] is not None
        and r["all_online_s"] <= TARGET_ONLINE_S
        and r["lost"] == 0
        and r["lag_p99"] is not None
        and r["lag_p99"] < TARGET_LAG_MS
    )


def fmt(v, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def row(system: str, n: int, interval: float, r: dict) -> str:
    if "error" in r:
        return f"| {system} | {n} | {interval:g} s | {r['error']} | {fmt(r.get('rss_kb'), '.0f')} | | | | | |"
    lost = f"{r['lost']}/{r['sent']}"
    return (
        f"| {system} | {n} | {interval:g} s | {fmt(r['all_online_s'], '.1f')} s | {fmt(r['rss_kb'], '.0f')} | "
        f"{fmt(r['cpu_per_1k'], '.2f')} | {fmt(r.get('boards_cpu_per_1k'), '.2f')} | {lost} | {fmt(r['lag_p99'], '.0f')} ms | "
        f"{fmt(r.get('load'))} |"
    )


def esp32emu_name(args, n: int, r: dict, busy: bool = False) -> str:
    loop = r.get("loop")
    extra = "" if loop in (None, "uvloop") else f", {loop} loop"
    if busy:
        extra += ", + 1 busy core"
    return f"esp32emu (real firmware, {r.get('workers', '?')} proc{extra})"


def parse_extra(text: str) -> tuple[int, float, str | None, bool]:
    """'30000@10', '10000@10+busy', '5000@1+asyncio' -> (n, interval, loop, busy)."""
    head, *flags = text.split("+")
    n, _, interval = head.partition("@")
    loop = next((f for f in flags if f in ("asyncio", "uvloop")), None)
    unknown = [f for f in flags if f not in ("asyncio", "uvloop", "busy")]
    if unknown or not interval:
        raise SystemExit(f"--extras {text!r}: N@interval[+busy][+asyncio|+uvloop]")
    return int(n), float(interval), loop, "busy" in flags


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N in 100 1000 and shorter windows (~6 min)")
    p.add_argument("--sizes", type=int, nargs="+", help="board counts (default 100 1000 5000 10000)")
    p.add_argument("--intervals", type=float, nargs="+", default=[10, 1], help="telemetry intervals (default 10 1)")
    p.add_argument("--workers", type=int, help="esp32emu fleet --workers (default: the fleet's, one per 2,500 boards, at most one a core)")
    p.add_argument("--boot-rate", type=float, default=500, help="esp32emu boards powered on per second (default 500)")
    p.add_argument("--cap", type=float, default=120, help="give the baseline this long to connect (default 120 s)")
    p.add_argument("--systems", nargs="+", choices=["esp32emu", "paho"], default=["esp32emu", "paho"], help="what to measure (default both)")
    p.add_argument("--per-process", type=int, default=300, help="baseline clients per process (default 300; select() stops one process at ~340)")
    p.add_argument("--loop", choices=["uvloop", "asyncio"], help="esp32emu's event loop (default: uvloop when installed)")
    p.add_argument("--extras", nargs="*", help="more esp32emu rows after the grid, N@interval[+busy][+asyncio|+uvloop] "
                   "(busy: a second process burns one core meanwhile; default 30000@10 10000@10+busy 5000@1+asyncio, none with --quick)")
    p.add_argument("--compare-tree", type=Path, help="also run each esp32emu grid row on this checkout (e.g. `git archive main emulator firmware` "
                   "unpacked), just before ours: before/after side by side under the same load")
    p.add_argument("--baseline-child", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.baseline_child:
        n, first, interval, host, port, cap, window = args.baseline_child
        baseline_child(int(n), int(first), float(interval), host, int(port), float(cap), float(window))
        return 0
    sizes = args.sizes or ([100, 1000] if args.quick else [100, 1000, 5000, 10000])
    if args.extras is None:
        args.extras = [] if (args.quick or args.sizes) else ["30000@10", "10000@10+busy", "5000@1+asyncio"]
    extras = [parse_extra(x) for x in args.extras]
    biggest = max(sizes + [e[0] for e in extras])
    # One socket a board in the broker, the fleet and the observer's view; the baseline
    # three a client: raised where we may (root), inherited by the broker and the workers.
    soft, hard = raise_fd_limit(want=max(3 * biggest + 4096, 65536))
    if args.quick:
        args.cap = min(args.cap, 60)
    print(f"open-file limit {soft}; {os.cpu_count()} cores; esp32emu --workers {args.workers or 'auto'}, boot rate {args.boot_rate}/s "
          f"(N/40 above {40 * args.boot_rate:.0f} boards); keepalive {KEEPALIVE} s", flush=True)
    header = ("| system | N | interval | all online | RSS/board KiB | CPU s/1k msgs | CPU s/1k, boards only | lost/sent | lag p99 | load |\n"
              "|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    best: dict[tuple[str, float], int] = {}  # (system, interval) -> largest N that met the targets
    started = time.monotonic()
    for interval in args.intervals:
        baseline_broke = None
        for n in sizes:
            work = Path(tempfile.mkdtemp(prefix="esp32emu-bench-"))
            try:
                if "esp32emu" in args.systems:
                    if args.compare_tree is not None:
                        c = run_esp32emu(n, interval, args, work, args.loop, tree=args.compare_tree.resolve())
                        rows.append(row(f"esp32emu @ {args.compare_tree}", n, interval, c))
                        print(rows[-1], flush=True)
                        shutil.rmtree(work, ignore_errors=True)
                        work.mkdir()
                    r = run_esp32emu(n, interval, args, work, args.loop)
                    rows.append(row(esp32emu_name(args, n, r), n, interval, r))
                    print(rows[-1], flush=True)
                    if meets_targets(r):
                        best[("esp32emu", interval)] = n
                if "paho" not in args.systems:
                    continue
                if baseline_broke is not None:
                    rows.append(row("paho thread/client", n, interval, {"error": f"not run: failed at N={baseline_broke}"}))
                else:
                    shutil.rmtree(work, ignore_errors=True)
                    work.mkdir()
                    b = run_baseline(n, interval, args, work)
                    if "error" in b or b["lost"] or b["all_online_s"] is None:
                        baseline_broke = n
                    rows.append(row(f"paho thread/client ({b.get('procs', '?')} proc)", n, interval, b))
                    if meets_targets(b):
                        best[("paho", interval)] = n
                print(rows[-1], flush=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    for n, interval, loop, busy in extras if "esp32emu" in args.systems else []:
        work = Path(tempfile.mkdtemp(prefix="esp32emu-bench-"))
        try:
            r = run_esp32emu(n, interval, args, work, loop or args.loop, busy)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        rows.append(row(esp32emu_name(args, n, r, busy), n, interval, r))
        print(rows[-1], flush=True)
        if meets_targets(r) and not busy and (loop or args.loop) in (None, "uvloop"):
            best[("esp32emu", interval)] = max(best.get(("esp32emu", interval), 0), n)
    print(f"\n{header}\n" + "\n".join(rows))
    print(f"\nLargest N that met the targets (all online <= {TARGET_ONLINE_S:.0f} s, nothing lost, lag p99 < {TARGET_LAG_MS:.0f} ms):")
    for interval in args.intervals:
        ours, theirs = best.get(("esp32emu", interval)), best.get(("paho", interval))
        parts = []
        if "esp32emu" in args.systems:
            parts.append(f"esp32emu {ours or 'none'}")
        if "paho" in args.systems:
            parts.append(f"paho thread/client {theirs or 'none'}")
        ratio = f" ({ours / theirs:.1f}x)" if ours and theirs else ""
        print(f"  interval {interval:g} s: " + ", ".join(parts) + ratio)
    print(f"\n(bench took {time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
