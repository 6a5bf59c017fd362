"""What an idle board costs in CPU (issue 15, third round): N CPython boards
in one process on the fleet's event loop (uvloop when installed) against a
private Mosquitto, no observer; once every board is connected and the
collector has taken over, the process's CPU seconds over a window, per
board-second (µs) and per 1,000 telemetry messages at the boards' interval
(boards only: the fleet report's all-in figure adds the observer).

Several trees (`--trees DIR...`, each a checkout's emulator and firmware, e.g.
from `git archive main emulator firmware bench | tar -x -C DIR`) run at the
same time (`--together`, the default: the same load on a shared machine) or
one after the other, for --rounds rounds; the table gives each run and each
tree's median.

    .venv/bin/python bench/idle_cpu.py --devices 1000 --trees /tmp/before . --rounds 3

Not a test; prints a table (markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import asyncio, json, os, sys, tempfile, time
from pathlib import Path
from emulator.broker.mosquitto import Broker
from emulator.fleet.workers import BoardGroup, GroupSpec, raise_fd_limit, run_loop

n, interval, window = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
raise_fd_limit()
work = Path(tempfile.mkdtemp(prefix="esp32emu-idle-"))
broker = Broker(work / "broker").start()

def sockets():
    k = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            k += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return k

try:
    spec = GroupSpec(indices=tuple(range(n)), devices=n, host=broker.host, port=broker.port, tls=False,
                     keepalive=30, interval=interval, seed=0, state_dir=work / "state", certs_dir=work / "certs",
                     boot_rate=500)
    group = BoardGroup(spec)
    group.build()

    async def go():
        t0 = time.monotonic()
        group.start(t0)
        while group.collector._task is None or sockets() < n:  # booted, connected, collector in charge
            await asyncio.sleep(0.5)
            if time.monotonic() - t0 > 60 + n / 50:
                raise SystemExit(f"only {sockets()} of {n} boards connected")
        ready = time.monotonic() - t0
        await asyncio.sleep(5)
        lag0 = len(group.lag_ms)
        c0, w0 = time.process_time(), time.monotonic()
        await asyncio.sleep(window)
        cpu, wall = time.process_time() - c0, time.monotonic() - w0
        lag = sorted(group.lag_ms[lag0:])
        out = {"ready_s": round(ready, 1), "cpu_s": cpu, "s": wall, "lag_p99_ms": lag[int(0.99 * (len(lag) - 1))] if lag else None,
               "collections": group.collector.collections}
        await group.stop()
        return out

    print(json.dumps(run_loop(go())))
finally:
    broker.stop()
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--window", type=float, default=40, help="seconds measured once every board is connected")
    p.add_argument("--trees", type=Path, nargs="+", default=[REPO])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--apart", action="store_true", help="run the trees one after the other, not together")
    args = p.parse_args()
    trees = [t.resolve() for t in args.trees]
    runs: dict[Path, list[dict]] = {t: [] for t in trees}
    print(f"{args.devices} boards a process, interval {args.interval:g} s, window {args.window:g} s")
    print("| round | tree | µs/board-s | CPU-s/1k msgs (boards) | lag p99 ms | ready s | load |\n|---|---|---|---|---|---|---|")
    for r in range(1, args.rounds + 1):
        batches = [[t] for t in trees] if args.apart else [trees]
        for batch in batches:
            procs = {}
            for t in batch:
                env = dict(os.environ, PYTHONPATH=str(t))
                cmd = [sys.executable, "-c", CHILD, str(args.devices), str(args.interval), str(args.window)]
                procs[t] = subprocess.Popen(cmd, cwd=tempfile.gettempdir(), env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True)
            for t, proc in procs.items():
                out, err = proc.communicate(timeout=args.window + args.devices / 20 + 300)
                if proc.returncode != 0:
                    print(err[-2000:], file=sys.stderr)
                    return 1
                d = json.loads(out.strip().splitlines()[-1])
                d["us"] = d["cpu_s"] / d["s"] / args.devices * 1e6
                runs[t].append(d)
                print(f"| {r} | {t} | {d['us']:.1f} | {d['us'] * args.interval / 1000:.3f} | {d['lag_p99_ms']:.1f} | "
                      f"{d['ready_s']} | {os.getloadavg()[0]:.1f} |", flush=True)
    print("\n| tree | median µs/board-s | CPU-s/1k msgs (boards) | runs |\n|---|---|---|---|")
    for t, ds in runs.items():
        m = statistics.median(d["us"] for d in ds)
        print(f"| {t} | {m:.1f} | {m * args.interval / 1000:.3f} | {' '.join('%.1f' % d['us'] for d in ds)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
