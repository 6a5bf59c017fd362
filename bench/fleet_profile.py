"""Where a fleet's CPU goes (issue 15): one `esp32emu fleet --workers 1`
process of N boards against a private Mosquitto, sampled by py-spy over the
steady state, each sample charged to the first frame (from the innermost
out) that belongs to a part of the emulator, then scaled by the run's own
figures (steady CPU s per 1,000 messages, boards, window) into CPU-µs per
message and per board-second.

    .venv/bin/pip install py-spy
    .venv/bin/python bench/fleet_profile.py --devices 5000 --interval 10
    .venv/bin/python bench/fleet_profile.py --devices 5000 --interval 1 --tree /tmp/main-copy  # another tree

Not a test; prints a table (markdown).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (category, regex on "function (file:line)"), tried on each frame from the innermost out.
PARTS = [
    ("observer (paho, parent)", r"paho/|observe/"),
    ("JSON", r"/json/|json\.py"),
    ("MQTT codec", r"mqtt_codec\.py"),
    ("MQTT client/session", r"mqtt_client\.py|mqtt_session\.py"),
    ("sensors + fakes", r"sensors\.py|bme280\.py|dhtfake|machinefake|environment\.py|esp32fake"),
    ("WiFi poll / chores", r"networkfake|\(chores|wifi_watch|\(watch_wifi"),
    ("link (stream, pipes, socket)", r"net/link\.py|net/pipe\.py|net/stream\.py|selector_events\.py"),
    ("asyncio fake / clock", r"asynciofake|timefake|clock\.py|board/loader\.py"),
    ("firmware app (device.py)", r"device\.py|commands\.py|config\.py"),
    ("gc / collector", r"gcpolicy|\(collect "),
    ("event loop", r"asyncio/|uvloop|selectors\.py|base_events|events\.py"),
]


def charge(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, rx in PARTS:
            if re.search(rx, frame):
                return name
    return "other"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=5000)
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--window", type=float, default=30, help="seconds sampled in the steady state")
    p.add_argument("--boot-rate", type=float, default=500)
    p.add_argument("--settle", type=float, help="seconds from start to the sampled window (default: twice the boot's, plus 15)")
    p.add_argument("--tree", type=Path, default=REPO, help="the source tree to run (default: this one)")
    p.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    p.add_argument("--raw", type=Path, help="keep py-spy's raw stacks here")
    p.add_argument("--top", type=int, default=0, help="also list the N functions with most samples (self)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `fleet` arguments")
    args = p.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    work = Path(tempfile.mkdtemp(prefix="esp32emu-prof-"))
    boot_s = args.devices / args.boot_rate
    settle = args.settle if args.settle is not None else 2 * boot_s + 15  # a busy machine boots slower
    duration = settle + args.window + 10
    report = work / "report.json"
    cmd = [sys.executable, "-m", "emulator", "--state", str(work / "state"), "fleet", "--devices", str(args.devices)]
    cmd += ["--workers", "1", "--interval", str(args.interval), "--keepalive", "30", "--duration", f"{duration:.0f}"]
    cmd += ["--boot-rate", str(args.boot_rate), "--quiet", "--report", str(report), *args.extra]
    env = dict(os.environ, PYTHONPATH=str(args.tree))
    fleet = None
    try:
        fleet = subprocess.Popen(cmd, cwd=args.tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(settle)
        raw = work / "raw.txt"
        spy = [pyspy, "record", "--pid", str(fleet.pid), "--duration", f"{args.window:.0f}", "--rate", str(args.rate)]
        spy += ["--format", "raw", "--output", str(raw), "--nonblocking"]
        subprocess.run(spy, capture_output=True, text=True, check=True)
        _, err = fleet.communicate(timeout=duration + 120)
        if fleet.returncode != 0:
            print(err, file=sys.stderr)
            return 1
        data = json.loads(report.read_text())
        if args.raw:
            shutil.copy(raw, args.raw)
        parts: Counter = Counter()
        leaves: Counter = Counter()
        for line in raw.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            parts[charge(stack)] += int(n)
            leaves[re.sub(r":\d+\)$", ")", stack.split(";")[-1])] += int(n)
    finally:
        if fleet is not None and fleet.poll() is None:  # py-spy failed: do not leave the fleet running
            fleet.terminate()
            fleet.wait(timeout=120)
        shutil.rmtree(work, ignore_errors=True)
    steady = data["steady"]
    if steady is None:  # never all online at once: the whole run's figures
        steady = {"s": data["duration_s"], "cpu_s": data["cpu_s"], "msgs_per_s": round(data["telemetry_received"] / data["duration_s"], 1),
                  "cpu_s_per_1000_msgs": round(data["cpu_s"] / max(data["telemetry_received"], 1) * 1000, 3),
                  "loop_lag_p99_ms": data["loop_lag_ms"]["p99"]}
        print("(never all online: figures of the whole run, boot included)")
    total = sum(parts.values())
    per_msg_us = steady["cpu_s_per_1000_msgs"] * 1000  # CPU-µs per message
    per_board_s_us = steady["cpu_s"] / steady["s"] / args.devices * 1e6
    print(f"{args.devices} boards, interval {args.interval:g} s, tree {args.tree}: {steady['msgs_per_s']} msg/s, "
          f"{steady['cpu_s_per_1000_msgs']} CPU-s/1k msgs, RSS {data['rss_per_board_kb']} KiB/board, "
          f"lag p99 {steady['loop_lag_p99_ms']} ms, load {os.getloadavg()[0]:.2f}; {total} samples")
    print("| part | share | CPU-µs/msg | CPU-µs/board-s |\n|---|---|---|---|")
    for name, n in parts.most_common():
        share = n / total
        print(f"| {name} | {100 * share:.0f} % | {share * per_msg_us:.0f} | {share * per_board_s_us:.1f} |")
    for frame, n in leaves.most_common(args.top):
        print(f"  {100 * n / total:4.1f} %  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
