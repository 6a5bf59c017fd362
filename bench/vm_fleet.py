"""Fleets on the real interpreter: `esp32emu fleet --vm micropython` with N
boards (one `micropython` process each) against a private Mosquitto,
measured by the fleet's own independent observer (its JSON report).

For each N (telemetry every --interval s, keepalive 30 s, a ping to 10 boards
every interval):
  all online    seconds from the first boot until the observer saw every birth
  heap          the MicroPython heap each board's process gets (plus the shims')
  RSS/board     VmRSS of one interpreter process (from /proc/<pid>/status), mean
                at the end (counts the shared library pages in every process)
  own           RssAnon of one interpreter process: what each board really adds
  +host         (rss_mb - RSS before any board) / N: VmRSS plus the host's share
                (link proxy, shim channel)
  CPU/1k msgs   CPU seconds (host process + every interpreter process) per 1000
                telemetry messages, from all online to the end
  CPU/board     the same CPU as % of one core per board
  VM share      the part of that CPU spent in the interpreter processes
  lost          telemetry lost (seq gaps seen by the observer) / sent
  cmd ok        pings answered / sent

Prints a table; not a timed test. The machine's load average is printed too:
CPU figures on a shared machine are upper bounds.

    .venv/bin/python bench/vm_fleet.py                          # N in 10 25 50, heap 160k, ~2.5 min
    .venv/bin/python bench/vm_fleet.py --sizes 10 --heaps 100k,160k --window 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.board.vm.interpreter import DEFAULT_HEAP  # noqa: E402
from emulator.broker.mosquitto import Broker  # noqa: E402

KEEPALIVE = 30


def run(n: int, heap: str, args, work: Path) -> dict:
    broker = Broker(work / "broker").start()
    try:
        duration = n / args.boot_rate + 10 + args.window
        report = work / "report.json"
        cmd = [sys.executable, "-m", "emulator", "--state", str(work / "state"), "fleet", "--devices", str(n)]
        cmd += ["--vm", "micropython", "--heap", heap, "--broker", broker.url, "--interval", str(args.interval)]
        cmd += ["--keepalive", str(KEEPALIVE), "--duration", f"{duration:.0f}", "--boot-rate", str(args.boot_rate)]
        cmd += ["--quiet", "--report", str(report)]
        t = time.monotonic()
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=duration + 120, check=False)
        wall = time.monotonic() - t
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]}
        data = json.loads(report.read_text())
    finally:
        broker.stop()
    steady = data.get("steady") or {}
    cpu_pct = None
    if steady.get("s"):
        cpu_pct = steady["cpu_s"] / steady["s"] / n * 100
    return {
        "all_online_s": data["all_online_s"],
        "online": data["online_at_end"],
        "vm_rss_kb": data.get("vm_rss_per_board_kb"),
        "anon_kb": data.get("vm_anon_per_board_kb"),
        "vm_share": data["vm_cpu_s"] / data["cpu_s"] * 100 if data.get("cpu_s") else None,
        "rss_kb": data["rss_per_board_kb"],
        "cpu_1k": steady.get("cpu_s_per_1000_msgs"),
        "cpu_pct": cpu_pct,
        "msgs_per_s": steady.get("msgs_per_s"),
        "lost": data["telemetry_lost"],
        "sent": data["telemetry_sent"],
        "cmd": f"{data['commands_ok']}/{data['commands_sent']}",
        "wills": data["lwt_seen"],
        "wall_s": wall,
    }


def fmt(v, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,25,50", help="comma-separated board counts (default 10,25,50)")
    ap.add_argument("--heaps", default=DEFAULT_HEAP, help=f"comma-separated heaps (default {DEFAULT_HEAP})")
    ap.add_argument("--interval", type=float, default=1.0, help="telemetry interval in seconds (default 1)")
    ap.add_argument("--window", type=float, default=20.0, help="seconds measured after booting (default 20)")
    ap.add_argument("--boot-rate", type=float, default=200.0, help="boards powered on per second (default 200)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    heaps = args.heaps.split(",")
    print(f"esp32emu fleet --vm micropython: {os.cpu_count()} cores, telemetry every {args.interval:g} s, "
          f"window {args.window:g} s, load average before: {os.getloadavg()[0]:.1f}", flush=True)
    head = (f"{'boards':>6} {'heap':>5} {'all online':>10} {'online':>6} {'RSS/board':>10} {'own':>7} {'+host':>8} "
            f"{'CPU/1k msgs':>11} {'CPU/board':>9} {'VM share':>8} {'msg/s':>6} {'lost':>9} {'cmd ok':>9} {'Wills':>5}")
    rows = []
    for heap in heaps:
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="esp32emu-vmfleet-") as tmp:
                res = run(n, heap, args, Path(tmp))
            if "error" in res:
                rows.append(f"{n:>6} {heap:>5} error: {res['error']}")
            else:
                rows.append(
                    f"{n:>6} {heap:>5} {fmt(res['all_online_s'], '.1f') + ' s':>10} {res['online']:>6} "
                    f"{fmt(res['vm_rss_kb'] and res['vm_rss_kb'] / 1024, '.1f') + ' MB':>10} "
                    f"{fmt(res['anon_kb'] and res['anon_kb'] / 1024, '.1f') + ' MB':>7} "
                    f"{fmt(res['rss_kb'] / 1024, '.1f') + ' MB':>8} "
                    f"{fmt(res['cpu_1k'], '.2f') + ' s':>11} {fmt(res['cpu_pct'], '.2f') + ' %':>9} "
                    f"{fmt(res['vm_share'], '.0f') + ' %':>8} "
                    f"{fmt(res['msgs_per_s'], '.0f'):>6} {str(res['lost']) + '/' + str(res['sent']):>9} "
                    f"{res['cmd']:>9} {res['wills']:>5}"
                )
            print(rows[-1], file=sys.stderr, flush=True)  # progress
    print(head)
    for row in rows:
        print(row)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
