"""What one board costs in memory (issue 15): N CPython boards in this
process against a private Mosquitto, tracemalloc snapshots before the boards
are built and once they have run a while, the difference per board grouped
by where it was allocated (file:line, or file with --by file).

    .venv/bin/python bench/board_memory.py --devices 300 --run 20
    PYTHONPATH=/tmp/main-copy .venv/bin/python bench/board_memory.py   # another tree

Not a test; prints a table (markdown). RSS/board here includes tracemalloc's
own overhead; the fleet report's figure is the one to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

if "emulator" not in sys.modules and not any(p.endswith("fleetperf") or "main-copy" in p for p in sys.path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.fleet.workers import BoardGroup, GroupSpec, raise_fd_limit, rss_kb  # noqa: E402


async def run(group: BoardGroup, seconds: float) -> None:
    group.start(time.monotonic())
    await asyncio.sleep(seconds)
    online = sum(1 for b in group.boards if b.running)
    print(f"{online} boards running after {seconds:g} s", file=sys.stderr)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=300)
    p.add_argument("--run", type=float, default=20, help="seconds the boards run before the snapshot")
    p.add_argument("--interval", type=float, default=10)
    p.add_argument("--by", choices=["lineno", "filename"], default="lineno")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--trace", help="print the allocating stacks of this file:line")
    args = p.parse_args()
    raise_fd_limit()
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
        tracemalloc.start(12 if args.trace else 1)
        before = tracemalloc.take_snapshot()
        rss0 = rss_kb()
        group.build()
        loop = asyncio.new_event_loop()
        loop.run_until_complete(run(group, args.run))
        gc.collect()
        after = tracemalloc.take_snapshot()
        rss1 = rss_kb()
        loop.run_until_complete(group.stop())
        loop.close()
    finally:
        broker.stop()
    stats = after.compare_to(before, args.by)
    total = sum(s.size_diff for s in stats)
    n = args.devices
    print(f"{n} boards: traced {total / n / 1024:.1f} KiB/board, RSS {(rss1 - rss0) / n:.1f} KiB/board (with tracemalloc)")
    print(f"| where | B/board | blocks/board |\n|---|---|---|")
    for s in stats[: args.top]:
        where = s.traceback[0]
        print(f"| {Path(where.filename).name}:{where.lineno if args.by == 'lineno' else ''} | {s.size_diff / n:.0f} | {s.count_diff / n:.1f} |")
    if args.trace:
        for s in after.compare_to(before, "traceback"):
            f = s.traceback[0]
            if f"{Path(f.filename).name}:{f.lineno}" == args.trace:
                print(f"{s.size_diff / n:.0f} B/board:")
                print("\n".join(s.traceback.format()[-14:]))
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
