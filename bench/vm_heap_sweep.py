"""The firmware on the real MicroPython interpreter at several heap sizes
(not a test): one VM board per heap (emulator/board/vm/, firmware as `flash --mpy`
deploys it) against a private Mosquitto, telemetry every second and a
`stats` command every second for `--seconds`; prints one row per heap.

    .venv/bin/python bench/vm_heap_sweep.py                      # 100k 120k 130k 140k 160k, 20 s each
    .venv/bin/python bench/vm_heap_sweep.py --seconds 60 124k 130k

Columns: online (a birth was seen), up at the end (no MemoryError, still
publishing), heap_alloc/heap_free from the first `stats` after connect
(firmware only: the shims' own heap is left out, see README), commands
answered/sent, and the last console line when the board stopped.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.testing.handles import BoardHandle, ObserverClient  # noqa: E402
from emulator.testing.harness import Emulator  # noqa: E402


def one(emu: Emulator, broker: Broker, heap: str, seconds: float) -> dict:
    dev = f"dev-{heap}"
    board = BoardHandle(emu, dev, {"broker": {"host": broker.host, "port": broker.port}, "keepalive": 5,
                                    "interval": 1}, vm="micropython", heap=heap)
    obs = ObserverClient(broker.host, broker.port, f"bench-{heap}")
    obs.connect()
    obs.subscribe(f"devices/{dev}/#")
    row = {"heap": heap, "online": False, "up": False, "heap_alloc": None, "heap_free": None, "sent": 0,
           "answered": 0, "last": ""}
    board.boot()
    try:
        obs.expect(board.topic("status"), {"online": True}, timeout=15)
        row["online"] = True
    except AssertionError:
        pass
    if row["online"]:
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end and not board.board.halted:
            cmd_id = f"s{row['sent']}"
            obs.client.publish(board.topic("cmd"), '{"id": "%s", "op": "stats"}' % cmd_id, qos=1)
            row["sent"] += 1
            try:
                res = obs.expect(board.topic("cmd/result"), {"id": cmd_id}, timeout=1.5).json()
                row["answered"] += 1
                if row["heap_alloc"] is None and res.get("ok"):
                    row["heap_alloc"], row["heap_free"] = res["result"]["heap_alloc"], res["result"]["heap_free"]
            except AssertionError:
                pass
            left = 1.0 - (time.monotonic() % 1.0)
            time.sleep(left)  # the bench's own pacing: one command a second
        seq_before = [m.json()["seq"] for m in obs.messages if m.topic.endswith("/telemetry")]
        try:
            obs.expect(board.topic("telemetry"), lambda m: m.json()["seq"] > max(seq_before or [-1]), timeout=3)
            row["up"] = not board.board.halted
        except AssertionError:
            row["up"] = False
    tail = [line for line in board.console.lines if line.strip()]
    row["last"] = tail[-2] if board.board.halted and len(tail) > 1 else (tail[-1] if tail else "")
    obs.close()
    emu.run(board.board.stop())
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("heaps", nargs="*", default=["100k", "120k", "130k", "140k", "160k"])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "mosquitto").start()
        try:
            with Emulator(Path(tmp) / "boards") as emu:
                rows = [one(emu, broker, heap, args.seconds) for heap in args.heaps]
        finally:
            broker.stop()
    print(f"{'heap':>6} {'online':>6} {'up':>4} {'heap_alloc':>10} {'heap_free':>9} {'cmds':>9}  last console line")
    for r in rows:
        cmds = f"{r['answered']}/{r['sent']}"
        print(f"{r['heap']:>6} {str(r['online']):>6} {str(r['up']):>4} {str(r['heap_alloc'] or '-'):>10} "
              f"{str(r['heap_free'] or '-'):>9} {cmds:>9}  {r['last'][:70]}")


if __name__ == "__main__":
    main()
