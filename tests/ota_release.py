"""Test-side helpers for over-the-air updates (tests/test_ota*.py): a signed
release folder as the contract (ota-contract.md) lays it out, built with the
`cryptography` package, and a small static HTTP server on loopback with
`Range` support and link faults (the real one is `esp32emu release serve`)."""

from __future__ import annotations

import hashlib
import http.server
import json
import subprocess
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

FIRMWARE = Path(__file__).resolve().parents[1] / "firmware"


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


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


class ReleaseServer:
    """Serves a folder over HTTP/1.1 on 127.0.0.1 with `Range`. Faults:
    `drop_after[name] = n` closes the connection after n body bytes of that
    file (once), `corrupt[name] = i` flips byte i of it (once)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.bytes_served = 0
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.hosts: set[str] = set()  # Host headers seen
        self.drop_after: dict[str, int] = {}
        self.corrupt: dict[str, int] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                rel = self.path.lstrip("/")
                path = (server.root / rel).resolve()
                rng = self.headers.get("Range")
                with server._lock:
                    server.requests.append((rel, rng))
                    server.hosts.add(self.headers.get("Host", ""))
                if server.root.resolve() not in path.parents or not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = bytearray(data[start:])
                name = path.name
                with server._lock:
                    flip = server.corrupt.pop(name, None)
                    drop = server.drop_after.pop(name, None)
                if flip is not None and 0 <= flip - start < len(body):
                    body[flip - start] ^= 0xFF
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                if drop is not None:
                    body = body[:drop]
                self.wfile.write(body)
                with server._lock:
                    server.bytes_served += len(body)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, rel: str = "manifest.json") -> str:
        return f"http://127.0.0.1:{self.port}/{rel}"

    def __enter__(self) -> "ReleaseServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
