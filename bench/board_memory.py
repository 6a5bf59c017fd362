"""What one board costs in memory (issue 15): N CPython boards in this
process against a private Mosquitto, tracemalloc snapshots before the boards
are built and once they have run a while, the difference per board grouped
by where it was allocated (file:line, or file with --by file).

    .venv/bin/python bench/board_memory.py --devices 300 --run 20
    PYTHONPATH=/tmp/main-copy .venv/bin/python bench/board_memory.py   # another tree (its emulator and firmware)

Not a test; prints a table (markdown). RSS/board here includes tracemalloc's
own overhead; the fleet report's figure is the one to quote.

With --rss, no tracemalloc: each size in a fresh process on the fleet's event
loop (uvloop when installed), its RSS per board (VmRSS after --run seconds
minus before the boards, as the fleet measures it), and between two sizes
what one more board costs (the slope) and the fixed part (imports, caches):

    .venv/bin/python bench/board_memory.py --rss --devices 1000 3000 --run 30
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

if "emulator" not in sys.modules and not os.environ.get("PYTHONPATH"):  # else: the tree PYTHONPATH names
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.fleet.workers import BoardGroup, GroupSpec, raise_fd_limit, rss_kb, run_loop  # noqa: E402


async def run(group: BoardGroup, seconds: float) -> None:
    group.start(time.monotonic())
    await asyncio.sleep(seconds)
    online = sum(1 for b in group.boards if b.running)
    print(f"{online} boards running after {seconds:g} s", file=sys.stderr)


def rss_child(n: int, seconds: float, interval: float) -> dict:
    """One size, in this process: RSS per board without tracemalloc."""
    work = Path(tempfile.mkdtemp(prefix="esp32emu-mem-"))
    broker = Broker(work / "broker").start()
    try:
        spec = GroupSpec(indices=tuple(range(n)), devices=n, host=broker.host, port=broker.port, tls=False,
                         keepalive=30, interval=interval, seed=0, state_dir=work / "state", certs_dir=work / "certs",
                         boot_rate=500)
        group = BoardGroup(spec)
        group.build()  # measures the base (image loaded, no board yet)

        async def go() -> dict:
            group.start(time.monotonic())
            await asyncio.sleep(seconds)
            out = {"devices": n, "running": sum(1 for b in group.boards if b.running), "rss_kb": rss_kb() - group.rss_base_kb}
            await group.stop()
            return out

        return run_loop(go())
    finally:
        broker.stop()


def rss_sizes(sizes: list[int], seconds: float, interval: float) -> int:
    rows = []
    for n in sizes:
        cmd = [sys.executable, __file__, "--rss-child", str(n), "--run", str(seconds), "--interval", str(interval)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + n / 50 + 120)
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print("| boards | running | RSS KiB | RSS/board KiB |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['devices']} | {row['running']} | {row['rss_kb']} | {row['rss_kb'] / row['devices']:.1f} |")
    if len(rows) >= 2:
        a, b = rows[0], rows[-1]
        slope = (b["rss_kb"] - a["rss_kb"]) / (b["devices"] - a["devices"])
        print(f"one more board: {slope:.1f} KiB; fixed part: {(a['rss_kb'] - slope * a['devices']) / 1024:.1f} MB")
    return 0


class _Owned:
    def __init__(self, owner: str):
        self.owner, self.size_diff, self.count_diff = owner, 0, 0


def owner_of(traceback, lines: bool = False) -> str:
    """The innermost frame in this repository's code: firmware modules are
    compiled under their bare names ("device.py"), the emulator's by path."""
    for frame in reversed(traceback):
        name = frame.filename
        at = f":{frame.lineno}" if lines else ""
        if "/" not in name and name.endswith(".py"):
            return "firmware/" + name + at
        if "/emulator/" in name:
            return short(name) + at
    return "stdlib, uvloop (no repository frame)"


def owners(after, before, lines: bool = False) -> list:
    """The snapshot difference grouped by owner_of, biggest first."""
    out: dict[str, _Owned] = {}
    for s in after.compare_to(before, "traceback"):
        key = owner_of(s.traceback, lines)
        o = out.setdefault(key, _Owned(key))
        o.size_diff += s.size_diff
        o.count_diff += s.count_diff
    return sorted(out.values(), key=lambda o: -o.size_diff)


def short(filename: str) -> str:
    """A file's name as the table gives it: its path under the repository
    (emulator/board/sensors.py, firmware/sensors.py), else its last part."""
    parts = Path(filename).parts
    for top in ("emulator", "firmware", "bench"):
        if top in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(top):])
    return parts[-1] if parts else filename


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, nargs="+", default=[300])
    p.add_argument("--rss", action="store_true", help="RSS per board without tracemalloc, each size in its own process")
    p.add_argument("--rss-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--run", type=float, default=20, help="seconds the boards run before the snapshot")
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--by", choices=["lineno", "filename", "owner", "owner-line"], default="lineno",
                   help="owner: each block charged to the innermost frame in this repository's code "
                        "(firmware/ or emulator/), by file (owner-line: by file:line); what only the standard library or uvloop allocated: 'stdlib'")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace", help="print the allocating stacks of this file:line")
    args = p.parse_args()
    raise_fd_limit()
    if args.rss_child:
        print(json.dumps(rss_child(args.rss_child, args.run, args.interval)))
        return 0
    if args.rss:
        return rss_sizes(args.devices, args.run, args.interval)
    if len(args.devices) != 1:
        p.error("several --devices only with --rss")
    args.devices = args.devices[0]
    work = Path(tempfile.mkdtemp(prefix="esp32emu-mem-"))
    broker = Broker(work / "broker").start()
    try:
        spec = GroupSpec(indices=tuple(range(args.devices)), devices=args.devices, host=broker.host, port=broker.port,
                         tls=False, keepalive=30, interval=args.interval, seed=0, state_dir=work / "state",
                         certs_dir=work / "certs", boot_rate=200)
        group = BoardGroup(spec)
        from emulator.board.loader import FIRMWARE_DIR, FirmwareImage

        FirmwareImage(FIRMWARE_DIR)  # imports and caches warmed before the first snapshot
        gc.collect()
        tracemalloc.start(12 if args.trace else 30 if args.by.startswith("owner") else 1)
        before = tracemalloc.take_snapshot()
        rss0 = rss_kb()
        group.build()

        async def go():  # on the fleet's event loop (uvloop when installed), as a worker runs
            await run(group, args.run)
            gc.collect()
            snap = tracemalloc.take_snapshot(), rss_kb()
            await group.stop()
            return snap

        after, rss1 = run_loop(go())
    finally:
        broker.stop()
    stats = owners(after, before, args.by == "owner-line") if args.by.startswith("owner") else after.compare_to(before, args.by)
    total = sum(s.size_diff for s in stats)
    n = args.devices
    if args.by.startswith("owner"):
        print(f"{n} boards: traced {total / n / 1024:.1f} KiB/board, RSS {(rss1 - rss0) / n:.1f} KiB/board (with tracemalloc)")
        print("| owner | B/board | blocks/board |\n|---|---|---|")
        for s in stats[: args.top]:
            print(f"| {s.owner} | {s.size_diff / n:.0f} | {s.count_diff / n:.1f} |")
        return 0
    print(f"{n} boards: traced {total / n / 1024:.1f} KiB/board, RSS {(rss1 - rss0) / n:.1f} KiB/board (with tracemalloc)")
    print(f"| where | B/board | blocks/board |\n|---|---|---|")
    for s in stats[: args.top]:
        where = s.traceback[0]
        print(f"| {short(where.filename)}:{where.lineno if args.by == 'lineno' else ''} | {s.size_diff / n:.0f} | {s.count_diff / n:.1f} |")
    if args.trace:
        for s in after.compare_to(before, "traceback"):
            f = s.traceback[-1]  # the most recent frame (tracebacks run oldest first)
            if f"{short(f.filename)}:{f.lineno}" == args.trace:
                print(f"{s.size_diff / n:.0f} B/board:")
                print("\n".join(s.traceback.format()[-14:]))
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
