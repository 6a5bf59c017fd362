"""Qstr census of the firmware on the real MicroPython VM: which module
interns which qstrs first, in the order a board loads them (the stubs, the
system modules, then app, commands, config, ... device, as app.py imports
them). A .mpy interns its whole qstr table when it loads, so this is what
the modules add before they run; the running device adds a few more.

    .venv/bin/python bench/vm_qstr.py [--names] [--py] [--ref main] [--order a,b,...]

The interned-string pools hold 20 + 40 + 80 + 160 = 300 entries; the
301st qstr allocates a 320-entry pool (3.5 KiB on the 64-bit VM)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vm_board import FIRMWARE_DIR, MICROPYTHON, STUB_NAMES, SYSTEM_MODULES, board_config, git_firmware, stage  # noqa: E402

ORDER = "app,commands,config,mqtt_codec,mqtt_session,mqtt_client,sensors,device"  # as app.py loads them

_PROBE = """\
import micropython, sys
def dump(tag):
    print("STEP", tag)
    micropython.qstr_info(1)
dump("interpreter")
for _n in sys.argv[1].split(","):
    __import__(_n)
    dump(_n)
"""


def census(fs: Path, order: list[str]) -> list[tuple[str, list[str]]]:
    """[(step, qstrs it interned first)] for importing `order` in one VM."""
    (fs / "_qstr_probe.py").write_text(_PROBE)
    out = subprocess.run([str(MICROPYTHON), "-X", "heapsize=2m", "_qstr_probe.py", ",".join(order)],
                         cwd=fs, capture_output=True, text=True, timeout=60).stdout
    steps: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("STEP "):
            current = []
            steps.append((line[5:], current))
        elif line.startswith("Q(") and line.endswith(")"):
            q = line[2:-1]
            if q not in seen:
                seen.add(q)
                current.append(q)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--names", action="store_true", help="list each step's qstrs")
    ap.add_argument("--py", action="store_true", help=".py sources instead of .mpy")
    ap.add_argument("--ref", help="the firmware as of this git ref instead of the working tree")
    ap.add_argument("--order", default=ORDER,
                    help="the firmware modules, comma-separated, in load order (last: what only it interns)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        firmware = FIRMWARE_DIR
        if args.ref:
            firmware = git_firmware(args.ref, Path(tmp) / "ref")
            if firmware is None:
                sys.exit(f"no firmware at git ref {args.ref}")
        fs = stage(Path(tmp) / "fs", board_config("127.0.0.1", 1883), firmware_dir=firmware, mpy=not args.py)
        modules = args.order.split(",")
        steps = census(fs, list(STUB_NAMES) + list(SYSTEM_MODULES) + modules)
    total = 0
    print(f"{'step':<14} {'new qstrs':>9} {'total':>6}")
    for step, names in steps:
        total += len(names)
        if names or step in modules:
            print(f"{step:<14} {len(names):>9} {total:>6}")
            if args.names and (step in modules or step in STUB_NAMES):
                print("    " + " ".join(sorted(names)))


if __name__ == "__main__":
    main()
