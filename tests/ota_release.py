"""Test-side helpers for over-the-air updates (tests/test_ota*.py): a signed
release folder as the contract (ota-contract.md) lays it out, from any files
and any manifest (bad ones included: `esp32emu release build` makes only good
ones). The tests serve it with `esp32emu release serve`'s server
(emulator/ota/serve.py: Range, fault hooks, a log of the requests)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from emulator.ota.release import sign

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def firmware_files(version: str, **changes: bytes) -> dict[str, bytes]:
    """Every firmware/*.py with FW_VERSION set to `version`; `changes`
    replace or add files (name with '.' as '_dot_': app_dot_py=...)."""
    files = {p.name: p.read_bytes() for p in sorted(FIRMWARE.glob("*.py"))}
    dev = files["device.py"].decode()
    line = next(x for x in dev.splitlines() if x.startswith("FW_VERSION = "))
    files["device.py"] = dev.replace(line, f'FW_VERSION = "{version}"', 1).encode()
    for name, data in changes.items():
        files[name.replace("_dot_", ".")] = data
    return files


def build_release(out: Path, files: dict[str, bytes], version: str, key, *, mpy_cross: str | None = None,
                  abi: int = 0, manifest: dict | None = None) -> Path:
    """Write out/manifest.json, its .sig and out/files/<name>; returns the
    manifest's path. With `mpy_cross`, every .py also gets a .mpy variant."""
    (out / "files").mkdir(parents=True, exist_ok=True)
    entries = []
    for name, data in sorted(files.items()):
        (out / "files" / name).write_bytes(data)
        entry = {"path": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        if mpy_cross and name.endswith(".py"):
            src = out / "files" / name
            subprocess.run([mpy_cross, "-o", str(src) + ".mpy", str(src)], check=True, cwd=out / "files")
            mdata = (out / "files" / (name + ".mpy")).read_bytes()
            entry["mpy"] = {"size": len(mdata), "sha256": hashlib.sha256(mdata).hexdigest(), "abi": abi}
        entries.append(entry)
    body = manifest if manifest is not None else {"version": version, "created": int(time.time()), "files": entries}
    raw = json.dumps(body, separators=(",", ":")).encode()
    (out / "manifest.json").write_bytes(raw)
    (out / "manifest.json.sig").write_bytes(sign(key, raw))
    return out / "manifest.json"
