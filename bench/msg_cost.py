"""What one telemetry message costs the boards (issue 15, "CPU per message"):
N CPython boards in THIS process (the fleet's BoardGroup: its boot schedule,
gc policy and event loop), no observer, against a private Mosquitto; after
every board is online and a settle time, a window in which the process's CPU
seconds are divided by the telemetry PUBLISHes the boards wrote (counted on
each link's tap: a PUBLISH packet type on the wire). With few enough boards
that the loop keeps up (lag p99 well under the interval) this is the per-
message cost of an unsaturated board, without the parent's observer: the
"boards only" figure of bench/fleet_bench.py, without its noise.

    .venv/bin/python bench/msg_cost.py --devices 1000 --window 30
    .venv/bin/python bench/msg_cost.py --tree /tmp/before            # another tree (same flags)
    .venv/bin/python bench/msg_cost.py --devices 500 --window 20 --profile 25   # + cProfile's top functions
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/dev/null \
        .venv/bin/python bench/msg_cost.py --devices 20 --window 30 --settle 10 --callgrind  # instructions/message

`--gc` adds what the cyclic collector did in the window (collections, their
time, objects collected). Prints one table row (markdown); not a test.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(args) -> dict:
    import asyncio
    import gc

    from emulator.broker.mosquitto import Broker
    from emulator.fleet.workers import BoardGroup, GroupSpec, loop_name, raise_fd_limit, run_loop

    raise_fd_limit()
    work = Path(tempfile.mkdtemp(prefix="esp32emu-msgcost-"))
    published = [0]
    gc_stats = {"collections": 0, "s": 0.0, "collected": 0}
    t_gc = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            t_gc[0] = time.perf_counter()
        else:
            gc_stats["collections"] += 1
            gc_stats["s"] += time.perf_counter() - t_gc[0]
            gc_stats["collected"] += info.get("collected", 0)

    def count(direction: str, data: bytes, now: float) -> None:
        if direction == "tx" and data[0] >> 4 == 3:  # a PUBLISH (each write is one here)
            published[0] += 1

    async def main(broker) -> dict:
        if True:
            spec = GroupSpec(indices=tuple(range(args.devices)), devices=args.devices, host="127.0.0.1", port=broker.port,
                             tls=False, keepalive=30, interval=args.interval, seed=1, state_dir=work / "state",
                             certs_dir=work / "certs", boot_rate=args.boot_rate, loop=loop_name())
            group = BoardGroup(spec)
            group.build()
            for board in group.boards:
                board.link.taps.append(count)
            group.start(time.monotonic())
            boot_s = args.devices / args.boot_rate
            await asyncio.sleep(boot_s + args.settle)
            prof = None
            if args.profile:
                import cProfile

                prof = cProfile.Profile()
            gc.callbacks.append(on_gc)
            if args.garbage:
                gc.collect()
                gc.set_debug(gc.DEBUG_SAVEALL)
            count0 = gc.get_count()[0]
            lag0, n0, cpu0, t0 = len(group.lag_ms), published[0], time.process_time(), time.monotonic()
            if prof:
                prof.enable()
            if args.callgrind:
                _callgrind("on")
            await asyncio.sleep(args.window)
            if args.callgrind:
                _callgrind("off")
            if prof:
                prof.disable()
            cpu, n, wall = time.process_time() - cpu0, published[0] - n0, time.monotonic() - t0
            gc_stats["piled_up"] = gc.get_count()[0] - count0
            if args.garbage:
                gc.collect()
                kinds: dict = {}
                for obj in gc.garbage:
                    k = type(obj).__qualname__
                    kinds[k] = kinds.get(k, 0) + 1
                gc.garbage.clear()
                gc.set_debug(0)
                top = sorted(kinds.items(), key=lambda kv: -kv[1])[: args.garbage]
                print("cyclic garbage of the window, by type (objects per message):", file=sys.stderr)
                for k, v in top:
                    print(f"  {v / max(n, 1):7.2f}  {k}", file=sys.stderr)
            gc.callbacks.remove(on_gc)
            lags = sorted(group.lag_ms[lag0:])
            online = sum(1 for b in group.boards if b.running)
            await group.stop()
            if prof:
                import pstats

                pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
            return {"cpu_s": cpu, "msgs": n, "wall_s": wall, "online": online,
                    "lag_p99_ms": lags[int(0.99 * (len(lags) - 1))] if lags else None}

    broker = Broker(work / "broker").start()
    try:
        out = run_loop(main(broker))
    finally:
        broker.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    out["gc"] = gc_stats
    return out


def _callgrind(state: str) -> None:
    # Instrumentation on/off for this process under `valgrind --tool=callgrind --instr-atstart=no`.
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], check=True, capture_output=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--window", type=float, default=30.0, help="seconds measured, after boot and --settle")
    p.add_argument("--settle", type=float, default=15.0)
    p.add_argument("--boot-rate", type=float, default=500.0)
    p.add_argument("--tree", type=Path, help="run another source tree (a checkout's root) instead of this one")
    p.add_argument("--gc", action="store_true", help="also show the collector's work in the window")
    p.add_argument("--garbage", type=int, default=0, metavar="N",
                   help="keep the window's cyclic garbage (gc.DEBUG_SAVEALL) and list its N commonest types (stderr)")
    p.add_argument("--callgrind", action="store_true",
                   help="under valgrind --tool=callgrind --instr-atstart=no: instrument the window alone "
                        "(callgrind's instruction count / the messages: a figure the machine's load does not move)")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="cProfile the window, print its top N (stderr)")
    args = p.parse_args()
    if args.tree is not None and os.environ.get("ESP32EMU_MSGCOST_CHILD") != "1":
        argv = [a for a in sys.argv[1:]]
        i = argv.index("--tree")
        del argv[i : i + 2]
        env = dict(os.environ, PYTHONPATH=str(args.tree.resolve()), ESP32EMU_MSGCOST_CHILD="1")
        # This script's own copy runs in the other tree (its emulator on the path first).
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv, "--tree", str(args.tree)], env=env)
    if args.tree is None:
        sys.path.insert(0, str(REPO))
    r = run(args)
    us = r["cpu_s"] / max(r["msgs"], 1) * 1e6
    tree = args.tree or REPO
    g = r["gc"]
    gc_txt = (f", gc {g['collections']} collections {g['s'] * 1000:.0f} ms, {g['piled_up'] / max(r['msgs'], 1):.1f} "
              "objects piled up a message" if args.gc else "")
    if args.callgrind:  # valgrind prints "Collected : <instructions>" (the window's alone) at the end
        print(f"{r['msgs']} messages in the window: divide callgrind's Collected count by it")
    print(f"| {tree} | {args.devices} | {args.interval:g} s | {r['msgs'] / r['wall_s']:.0f} msg/s | {us:.0f} CPU-µs/msg "
          f"| lag p99 {r['lag_p99_ms']:.0f} ms | load {os.getloadavg()[0]:.1f}{gc_txt} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
