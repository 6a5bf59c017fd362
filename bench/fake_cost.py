"""What the sensor fakes cost per telemetry message (issue 15): a board with
the default sensors (SPEC §2: a BME280 over I2C, a battery divider on ADC pin
35, the MCU's temperature), driven the way the firmware drives them each
message: ctrl_hum and ctrl_meas written, the status polled after the
conversion time, the 8 data bytes read; one read_u16 and eight read_uv on
the ADC; esp32.mcu_temperature(). 200 boards, each on its own manual clock
one second apart per message (so the air's knots, the battery's sample
window and the noise words turn over as in a 1-s fleet), CPU time of this
process per message, best of --runs rounds; each tree in a child process
of its own, the trees' rounds interleaved (the machine's load hits both).

    .venv/bin/python bench/fake_cost.py                      # this tree
    .venv/bin/python bench/fake_cost.py --tree /work/main    # before (another checkout) and after

Prints one markdown table (and the drive loop's own cost, the same loop
with every fake a do-nothing object: subtract it for the fakes alone);
not a test.
"""

from __future__ import annotations

import argparse
import functools
import json
import operator
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BOARDS = 200
MESSAGES = 30  # per board and round


class _Idle:
    """Stands in for every fake in the dry run: the drive loop's own cost."""

    def device(self, addr):
        return self

    def read(self, reg, n):
        return b""

    def write(self, reg, data):
        pass

    def read_u16(self):
        return 0

    def read_uv(self):
        return 0

    def mcu_temperature(self):
        return 0.0


def measure(dry: bool = False) -> dict[str, float]:
    """One round in this process: CPU-µs per message for each part (with
    `dry`, of the drive loop alone, every fake an _Idle)."""
    from emulator.board.environment import Environment
    from emulator.board.fakes.esp32fake import Esp32Module
    from emulator.board.fakes.machinefake import ADC
    from emulator.board.sensors import wire
    from emulator.rng import SmallRandom

    class Pin:
        _id = 35

    class Board:
        pass

    class Clock(list):
        """A manual clock as cheap to read as the fleet's time.time (a C
        call: partial(getitem)), not a Python __call__."""

        def advance(self, s: float) -> None:
            self[0] += s

    boards = []
    for i in range(BOARDS):
        clock = Clock([1_700_000_000.0])
        board = Board()
        board.env = env = Environment(SmallRandom(f"env:{i}"), now=functools.partial(operator.getitem, clock, 0))
        wire(env, [{"type": "bme280", "i2c": 0, "sda": 21, "scl": 22, "addr": 0x76}, {"type": "battery", "pin": 35, "divider": 2.0}])
        boards.append((clock, _Idle(), _Idle(), _Idle()) if dry else (clock, env.i2c_bus(0), ADC(board, Pin(), atten=3), Esp32Module(board)))

    def bme280(clock, bus, adc, esp32):
        bus.device(0x76).write(0xF2, b"\x01")
        bus.device(0x76).write(0xF4, b"\x25")
        clock.advance(0.01)  # the firmware sleeps out the conversion
        bus.device(0x76).read(0xF3, 1)
        bus.device(0x76).read(0xF7, 8)

    def battery(clock, bus, adc, esp32):
        adc.read_u16()
        for _ in range(8):
            adc.read_uv()

    def mcu(clock, bus, adc, esp32):
        esp32.mcu_temperature()

    out = {}
    for b in boards:  # warm up: the first message builds what is cached
        bme280(*b), battery(*b), mcu(*b)
    for name, part in (("bme280", bme280), ("battery (ADC x9)", battery), ("mcu", mcu)):
        t0 = time.process_time()
        for _ in range(MESSAGES):
            for b in boards:
                part(*b)
                b[0].advance(1.0 / 3)  # a second per message across the three parts
        out[name] = (time.process_time() - t0) / MESSAGES / BOARDS * 1e6
    out["total"] = sum(out.values())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--tree", type=Path, action="append", default=[], help="also run another source tree (a checkout's root); repeatable")
    p.add_argument("--runs", type=int, default=5, help="rounds per tree (the best is reported, and the median)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dry", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(dry=args.dry)))
        return 0
    trees = [*args.tree, REPO]
    for tree in trees:
        if not (tree / "emulator" / "board" / "environment.py").is_file():
            print(f"fake_cost: {tree} is not an esp32emu tree", file=sys.stderr)
            return 2
    rounds: dict[object, list[dict[str, float]]] = {t: [] for t in [*trees, "drive loop alone"]}
    for _ in range(args.runs):
        for tree in rounds:
            dry = tree == "drive loop alone"
            env = dict(os.environ, PYTHONPATH=str(REPO if dry else tree.resolve()))
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--child", *(["--dry"] if dry else [])], env=env, capture_output=True, text=True, cwd=REPO if dry else tree
            )
            if out.returncode:
                print(f"fake_cost: {tree}: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            rounds[tree].append(json.loads(out.stdout))
    parts = list(rounds[REPO][0])
    print(f"CPU-µs per telemetry message, {BOARDS} boards x {MESSAGES} messages, best (median) of {args.runs}; load {os.getloadavg()[0]:.2f}")
    print()
    print("| tree | " + " | ".join(parts) + " |")
    print("|---" * (len(parts) + 1) + "|")
    for tree in rounds:
        cells = [f"{min(r[k] for r in rounds[tree]):.1f} ({statistics.median(r[k] for r in rounds[tree]):.1f})" for k in parts]
        print(f"| {tree} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
