"""Ray's cost on a fleet (issue 17): the same fleet with `--workers K` (local
processes) and with `--ray --groups K` (Ray actors, a local instance the
fleet starts), then the largest fleet a two-node Ray cluster on this one
machine (`ray.cluster_utils.Cluster`, one core per node) runs within the
fleet targets (all online within 60 s, nothing lost, loop lag p99 under
100 ms: bench/fleet_bench.py's).

Per row, from the fleet's own report (emulator/fleet/run.py):
  all online   seconds from the boot schedule's start to every birth seen
  RSS/board    (RSS of the driver + the group processes at the end - before
               the boards) / N, KiB
  CPU/1k       CPU seconds per 1000 telemetry messages in the steady state
               (driver with its observer + the group processes)
  lag p99      the boards' event loops, steady state
and, measured here from /proc over the whole process tree of the fleet
command (so with Ray's own daemons: GCS, raylet, agents):
  tree RSS/board   tree RSS in the steady state, less Ray's fixed daemons, / N,
                   KiB (with the groups' actors: Ray's runtime in each, ~80 MB)
  Ray fixed MB     RSS of Ray's daemons on the node, whatever the fleet's size
                   (GCS, raylet, monitor, log monitor, API server, agents,
                   idle workers: `ray_daemons_kb`)
  tree CPU/1k      tree CPU seconds per 1000 telemetry messages over the
                   same steady window (from the live view's lines)
  broker RSS/board Mosquitto's RSS in the steady state / N, KiB, and
  broker CPU/1k    its CPU seconds per 1000 telemetry messages in the window
                   (each message in once, out once to the observer): for
                   sizing a broker
The overhead row: (ray - workers) / workers for each figure.

    .venv/bin/python bench/ray_fleet_bench.py                          # 10,000 at 10 s both ways, then the cluster
    .venv/bin/python bench/ray_fleet_bench.py --devices 2000 --cluster-sizes 5000
    .venv/bin/python bench/ray_fleet_bench.py --skip-compare --cluster-sizes 10000 15000 20000
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.cluster.local import LocalCluster  # noqa: E402
from emulator.fleet.workers import raise_fd_limit  # noqa: E402

KEEPALIVE = 30
TARGET_ONLINE_S = 60
TARGET_LAG_MS = 100
SETTLE_S = 10.0  # after every board is first online (the collector takes over 5 s after the last boot)
_CLK_TCK = os.sysconf("SC_CLK_TCK")
LINE = re.compile(r"esp32emu: (\d+) s booted \d+/\d+ online (\d+) msg/s \d+ telemetry (\d+)")

def tree(pid: int) -> list[int]:
    """pid and every descendant (from /proc/*/stat's parent pid)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def ray_daemons_kb(pids: list[int]) -> int:
    """RSS (KiB) of the Ray processes among pids that a node runs whatever the
    fleet's size (GCS, raylet, the monitor, log monitor, API server, agents,
    idle workers): everything Ray but the groups' actors and the driver."""
    kb = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if p == pids[0] or "GroupActor" in cmd:
            continue
        if "/ray/" in cmd or cmd.startswith("ray::"):
            kb += tree_usage([p])[1]
    return kb


def tree_usage(pids: list[int]) -> tuple[float, int]:
    """(CPU seconds, RSS KiB) summed over live processes."""
    cpu, rss = 0.0, 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _CLK_TCK
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return cpu, rss


def run_fleet(n: int, interval: float, engine: list[str], work: Path, window: float, env: dict | None = None,
              tree_figures: bool = True) -> dict:
    """One fleet against a private broker of ours; the report plus the tree figures (not
    for a cluster started elsewhere: its daemons are not in the fleet's process tree)."""
    broker = Broker(work / "broker").start()
    rate = max(200.0, n / 40)
    duration = n / rate + SETTLE_S + window + 20
    report = work / "report.json"
    cmd = [sys.executable, "-m", "emulator", "--state", str(work / "state"), "fleet", "--devices", str(n),
           "--broker", broker.url, "--interval", str(interval), "--keepalive", str(KEEPALIVE),
           "--duration", f"{duration:.0f}", "--boot-rate", f"{rate:g}", "--report", str(report), *engine]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    marks: list[tuple[float, float, int, int, int]] = []  # (t, tree cpu, tree rss, telemetry, Ray daemons' rss)
    broker_use: list[tuple[float, int]] = []  # (cpu, rss) at each mark
    tail: list[str] = []

    def read() -> None:
        all_online_at = None
        for line in proc.stderr:
            tail.append(line)
            del tail[:-20]
            m = LINE.match(line)
            if not m or int(m.group(2)) < n or len(marks) == 2:
                continue
            t = time.monotonic()
            all_online_at = all_online_at or t
            if (not marks and t - all_online_at >= SETTLE_S) or (marks and t - marks[0][0] >= window):
                pids = tree(proc.pid)
                cpu, rss = tree_usage(pids)
                marks.append((t, cpu, rss, int(m.group(3)), ray_daemons_kb(pids)))
                broker_use.append(tree_usage([broker.pid]))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=duration + 300)
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.stop()
    reader.join(5)
    if proc.returncode != 0:
        return {"error": (tail or [f"exit {proc.returncode}"])[-1].strip()}
    data = json.loads(report.read_text())
    steady = data.get("steady") or {}
    out = {
        "all_online_s": data["all_online_s"],
        "rss_kb": data["rss_per_board_kb"],
        "cpu_per_1k": steady.get("cpu_s_per_1000_msgs"),
        "lag_p99": steady.get("loop_lag_p99_ms"),
        "lost": data["telemetry_lost"],
        "sent": data["telemetry_sent"],
        "nodes": data.get("nodes"),
        "groups": len(data.get("groups") or []) or 1,
        "load": round(os.getloadavg()[0], 1),
        "tree_rss_kb": None,
        "fixed_mb": None,
        "tree_cpu_per_1k": None,
        "broker_kb": round(broker_use[-1][1] / n, 1) if broker_use else None,
        "broker_cpu_per_1k": None,
    }
    if len(marks) == 2 and marks[1][3] > marks[0][3]:
        out["broker_cpu_per_1k"] = round((broker_use[1][0] - broker_use[0][0]) / (marks[1][3] - marks[0][3]) * 1000, 3)
    if len(marks) == 2 and tree_figures:
        (t0, c0, _, m0, _), (t1, c1, rss1, m1, fixed1) = marks
        out["fixed_mb"] = round(fixed1 / 1024)
        out["tree_rss_kb"] = round((rss1 - fixed1) / n, 1)
        out["tree_cpu_per_1k"] = round((c1 - c0) / (m1 - m0) * 1000, 3) if m1 > m0 else None
    return out


def meets_targets(r: dict) -> bool:
    return ("error" not in r and r["all_online_s"] is not None and r["all_online_s"] <= TARGET_ONLINE_S
            and r["lost"] == 0 and r["lag_p99"] is not None and r["lag_p99"] < TARGET_LAG_MS)


FIGURES = ("all_online_s", "rss_kb", "cpu_per_1k", "lag_p99", "tree_rss_kb", "fixed_mb", "tree_cpu_per_1k")


def fmt(v, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def row(name: str, n: int, r: dict) -> str:
    if "error" in r:
        return f"| {name} | {n} | {r['error']} | | | | | | | | | | |"
    return (f"| {name} | {n} | {fmt(r['all_online_s'], '.1f')} s | {fmt(r['rss_kb'], '.1f')} | {fmt(r['cpu_per_1k'], '.2f')} | "
            f"{fmt(r['lag_p99'], '.0f')} ms | {fmt(r['tree_rss_kb'], '.1f')} | {fmt(r['fixed_mb'])} | {fmt(r['tree_cpu_per_1k'], '.2f')} | "
            f"{fmt(r['broker_kb'], '.1f')} | {fmt(r['broker_cpu_per_1k'], '.2f')} | {r['lost']}/{r['sent']} | {r['load']} |")


def overhead(a: dict, b: dict) -> str:
    cells = []
    for k in FIGURES:
        x, y = a.get(k), b.get(k)
        if k == "fixed_mb":
            cells.append("-" if y is None else f"+{y - (x or 0)} MB")
        else:
            cells.append("-" if not x or y is None else f"{(y - x) / x * 100:+.0f} %")
    return "| ray vs workers | | " + " | ".join(cells) + " | | | | |"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--groups", type=int, default=2)
    ap.add_argument("--window", type=float, default=30.0, help="steady-state window for the tree figures (s)")
    ap.add_argument("--cluster-sizes", type=int, nargs="*", default=[10_000, 15_000, 20_000])
    ap.add_argument("--cluster-groups", type=int, default=4)
    ap.add_argument("--skip-compare", action="store_true")
    args = ap.parse_args()
    raise_fd_limit(max(args.cluster_sizes + [args.devices]) * 2 + 1000)
    print(f"# {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at the start; interval {args.interval:g} s, keepalive {KEEPALIVE} s",
          flush=True)
    head = ("| fleet | boards | all online | RSS/board KiB | CPU/1k msgs s | lag p99 | tree RSS/board KiB | Ray fixed MB "
            "| tree CPU/1k s | broker RSS/board KiB | broker CPU/1k s | lost | load |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = [head]
    if not args.skip_compare:
        with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
            a = run_fleet(args.devices, args.interval, ["--workers", str(args.groups)], Path(tmp) / "w", args.window)
            rows.append(row(f"--workers {args.groups}", args.devices, a))
            print(rows[-1], flush=True)
            b = run_fleet(args.devices, args.interval, ["--ray", "--groups", str(args.groups)], Path(tmp) / "r", args.window)
            rows.append(row(f"--ray --groups {args.groups} (local instance)", args.devices, b))
            print(rows[-1], flush=True)
            if "error" not in a and "error" not in b:
                rows.append(overhead(a, b))
    best = None
    if args.cluster_sizes:
        with LocalCluster(nodes=2, cpus=1, env=dict(os.environ)) as cluster:
            address = cluster.address()
            for n in sorted(args.cluster_sizes):
                with tempfile.TemporaryDirectory(prefix="ray-bench-") as tmp:
                    r = run_fleet(n, args.interval, ["--ray", address, "--groups", str(args.cluster_groups)], Path(tmp), args.window,
                                  env=cluster.env, tree_figures=False)
                rows.append(row(f"--ray two-node cluster, {args.cluster_groups} groups on {r.get('nodes')} nodes", n, r))
                print(rows[-1], flush=True)
                if not meets_targets(r):
                    break
                best = n
    print()
    print("\n".join(rows))
    if args.cluster_sizes:
        print(f"\nlargest fleet within the targets on the two-node cluster: {best or 'none of the sizes tried'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
