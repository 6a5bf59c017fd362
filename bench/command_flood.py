"""Command flood benchmark (issue 12 D1): one emulated board, telemetry every
second, a paho backend publishes N commands (`ping`, each with its own id) to
`devices/<id>/cmd` as fast as it can, against a private Mosquitto.

For each QoS and N:
  received   commands that reached the board's firmware (the broker runs with
             max_queued_messages 0, so it drops nothing either way)
  answered   results seen for distinct ids / N (missing ones never came)
  ok / busy  results that ran / that were refused "busy: ..." (queue full)
  dups       results beyond the first for one id (must be 0)
  last s     seconds from the first publish to the last result
  tel gap s  longest gap between two telemetry messages, from the first
             publish to the last result (1 s when nothing stalls)
  tel        telemetry messages seen between the first publish and the
             last result
  board gap  the same gap as the board published (before the broker's queue
             to the backend, where telemetry waits behind results)

With --vm micropython the board runs on the real MicroPython VM (one
`micropython` process, -X heapsize=--heap, default 100k): `received` and
`board gap` are not measured there ("-"), and after the flood the bench
asks for `stats`:
  alloc KiB  heap_alloc after the flood (after gc.collect())
  maxfree    the largest free block, KiB
  console    MemoryError / link-lost lines the board printed ("-": none)

Prints a table; not a timed test.

    .venv/bin/python bench/command_flood.py                       # N in 3000 30000, QoS 0 and 1
    .venv/bin/python bench/command_flood.py --vm micropython --sizes 1000 --qos 1
    .venv/bin/python bench/command_flood.py --sizes 100000 --qos 0
    .venv/bin/python bench/command_flood.py --firmware /tmp/old/firmware  # another firmware tree
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.board.loader import FirmwareImage  # noqa: E402
from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.observe.recording import ObserverClient  # noqa: E402
from emulator.testing.harness import Emulator  # noqa: E402

DEV = "flood"


def _probe(device_id: str) -> tuple[list[int], list[float]]:
    """Count the commands the board's Device hands to _enqueue_command, and
    note when it publishes telemetry (as the board sees it, before any
    broker queue)."""
    import gc

    dev = next(o for o in gc.get_objects() if type(o).__name__ == "Device" and getattr(o, "id", None) == device_id)
    count: list[int] = [0]
    sent: list[float] = []
    enqueue, publish = dev._enqueue_command, dev.client.publish
    telemetry = dev.t_telemetry

    def counted(msg):
        count[0] += 1
        enqueue(msg)

    async def noted(topic, payload, qos=0, retain=False):
        if topic == telemetry:
            sent.append(time.monotonic())
        return await publish(topic, payload, qos, retain)

    dev._enqueue_command = counted
    dev.client.publish = noted
    return count, sent


def run_one(firmware: Path | None, n: int, qos: int, quiet_s: float, vm: str = "cpython", heap: str = "100k") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        # No queue limit: Mosquitto's default (1000) would drop results on
        # their way to the backend and hide what the board did.
        broker = Broker(Path(tmp) / "broker", extra_config=["max_queued_messages 0"])
        broker.start()
        image = FirmwareImage(firmware) if firmware else None
        console: list[str] = []
        if vm == "micropython":
            emu = Emulator(Path(tmp) / "boards", image, vm=vm, heap=heap)
        else:
            emu = Emulator(Path(tmp) / "boards", image)
        obs = ObserverClient(broker.host, broker.port, client_id="flood-backend").connect()
        try:
            obs.subscribe(f"devices/{DEV}/#")
            emu.add_board(DEV, broker.host, broker.port, interval=1, keepalive=30,
                          backoff={"base_ms": 200, "cap_ms": 2000}, console=console.append)
            obs._wait(lambda: any(m.topic.endswith("/telemetry") for m in obs._messages), 20, "telemetry")
            received, sent = _probe(DEV) if vm == "cpython" else ([-1], [])
            mark = obs.mark()
            t0 = time.monotonic()
            for i in range(n):
                obs.client.publish(f"devices/{DEV}/cmd", json.dumps({"id": f"c{i}", "op": "ping"}), qos=qos)
            # Until every id is answered, or no new result for quiet_s seconds.
            last_count, last_change = -1, time.monotonic()
            while True:
                msgs = obs.messages[mark:]
                got = [m for m in msgs if m.topic.endswith("/cmd/result")]
                if len({json.loads(m.payload)["id"] for m in got}) >= n:
                    break
                if len(got) != last_count:
                    last_count, last_change = len(got), time.monotonic()
                elif time.monotonic() - last_change > quiet_s:
                    break
                time.sleep(0.2)
            msgs = obs.messages[mark:]
            results = [(m.t, json.loads(m.payload)) for m in msgs if m.topic.endswith("/cmd/result")]
            end = max((t for t, _ in results), default=t0)
            tel = [t0] + [m.t for m in msgs if m.topic.endswith("/telemetry") and m.t <= end] + [end]
            board_tel = [t0] + [t for t in sent if t0 <= t <= end] + [end]
            first: dict = {}
            for _, r in results:
                first.setdefault(r["id"], r)
            stats = {}
            if vm != "cpython":
                mark2 = obs.mark()
                obs.client.publish(f"devices/{DEV}/cmd", json.dumps({"id": "stats", "op": "stats"}), qos=1)
                try:
                    m = obs._wait(lambda: any(m.topic.endswith("/cmd/result") and json.loads(m.payload)["id"] == "stats"
                                              for m in obs._messages[mark2:]), 20, "stats")
                except AssertionError:
                    m = None
                for m in obs.messages[mark2:]:
                    if m.topic.endswith("/cmd/result") and json.loads(m.payload)["id"] == "stats":
                        stats = json.loads(m.payload).get("result", {})
            bad = [line for line in console if "Error" in line or "link lost" in line]
            return {
                "alloc": stats.get("heap_alloc"),
                "maxfree": stats.get("heap_max_free"),
                "console": bad[0][:60] if bad else "-",
                "received": received[0],
                "answered": len(first),
                "ok": sum(1 for r in first.values() if r["ok"]),
                "busy": sum(1 for r in first.values() if not r["ok"] and r["error"].startswith("busy")),
                "dups": len(results) - len(first),
                "last_s": end - t0,
                "gap_s": max(b - a for a, b in zip(tel, tel[1:])),
                "tel": len(tel) - 2,
                "board_gap_s": max(b - a for a, b in zip(board_tel, board_tel[1:])),
            }
        finally:
            obs.close()
            emu.close()
            broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[3000, 30000])
    ap.add_argument("--qos", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--firmware", type=Path, default=None)
    ap.add_argument("--quiet", type=float, default=10.0, help="give up after this many seconds without a new result")
    ap.add_argument("--vm", choices=["cpython", "micropython"], default="cpython")
    ap.add_argument("--heap", default="100k", help="the VM board's heap (with --vm micropython)")
    args = ap.parse_args()
    vm = args.vm == "micropython"
    head = f"{'QoS':>3} {'N':>7} {'received':>9} {'answered':>9} {'ok':>6} {'busy':>7} {'dups':>5} {'last s':>7} {'tel gap s':>9} {'tel':>5}"
    print(head + (f" {'alloc KiB':>9} {'maxfree':>7}  console" if vm else f" {'board gap':>9}"))
    for qos in args.qos:
        for n in args.sizes:
            r = run_one(args.firmware, n, qos, args.quiet, args.vm, args.heap)
            row = (f"{qos:>3} {n:>7} {r['received'] if not vm else '-':>9} {r['answered']:>9} {r['ok']:>6} {r['busy']:>7} "
                   f"{r['dups']:>5} {r['last_s']:>7.1f} {r['gap_s']:>9.1f} {r['tel']:>5}")
            if vm:
                kib = (lambda v: f"{v / 1024:.1f}" if v is not None else "-")
                row += f" {kib(r['alloc']):>9} {kib(r['maxfree']):>7}  {r['console']}"
            else:
                row += f" {r['board_gap_s']:>9.1f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
