"""The host side of OTA releases (issue 18): the release key `esp32emu certs`
makes, `esp32emu release build` (manifest, raw r||s signature, files, the
refusals) and `esp32emu release serve` (HTTP/1.1 with Range, HTTPS with the
PKI, the fault hooks) -- a real HTTP server on loopback, real keys."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import ssl
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from emulator.broker import certs
from emulator.cli import main
from emulator.ota.release import ReleaseError, build, check_release, path_error
from emulator.ota.serve import ReleaseServer

REPO = Path(__file__).resolve().parent.parent
FIRMWARE = REPO / "firmware"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.make_pki(root)
    return root


def firmware_copy(dest: Path, version: str = "9.9.9") -> Path:
    shutil.copytree(FIRMWARE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    dev = dest / "device.py"
    dev.write_text(dev.read_text().replace('FW_VERSION = "0.1.0"', f'FW_VERSION = "{version}"'))
    return dest


@pytest.fixture(scope="module")
def release(tmp_path_factory, pki) -> Path:
    tmp = tmp_path_factory.mktemp("rel")
    build(firmware_copy(tmp / "fw"), "9.9.9", pki / "release.key", tmp / "r", mpy=True)
    return tmp / "r"


# -- the release key ------------------------------------------------------------------------------


def test_certs_makes_a_release_key_once_and_never_replaces_it(tmp_path, capsys):
    assert main(["certs", "--dir", str(tmp_path)]) == 0
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp256r1"
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    spki = serialization.load_pem_public_key(pub.read_bytes())
    assert spki.public_numbers() == private.public_key().public_numbers()
    der = spki.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(der) == 26 + 65 and der[26] == 4  # the fixed P-256 SPKI prefix, then 04 || X || Y (the contract)
    before = key.read_bytes()
    assert main(["certs", "--dir", str(tmp_path), "--force"]) == 0  # a new CA, the same release key
    assert key.read_bytes() == before
    assert "kept release.key" in capsys.readouterr().out


def test_boards_without_a_pki_get_the_state_folders_release_key(tmp_path):
    files, key = certs.release_files(tmp_path / "no-certs", tmp_path / "state")
    assert key == tmp_path / "state" / "release" / "release.key" and key.is_file()
    assert files == {"release.pub": (tmp_path / "state" / "release" / "release.pub").read_bytes()}
    again, _ = certs.release_files(tmp_path / "no-certs", tmp_path / "state")
    assert again == files  # made once, then reused
    certs.make_pki(tmp_path / "certs")
    pki_files, pki_key = certs.release_files(tmp_path / "certs", tmp_path / "state")
    assert pki_key == tmp_path / "certs" / "release.key" and pki_files != files


# -- release build --------------------------------------------------------------------------------


def test_build_signs_the_exact_manifest_bytes_with_raw_r_s(release, pki):
    text = (release / "manifest.json").read_bytes()
    sig = (release / "manifest.json.sig").read_bytes()
    assert len(sig) == 64
    pub = serialization.load_pem_public_key((pki / "release.pub").read_bytes())
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    pub.verify(der, text, ec.ECDSA(hashes.SHA256()))  # raises when it does not verify
    m = json.loads(text)
    assert m["version"] == "9.9.9" and isinstance(m["created"], int) and len(text) < 4096
    assert sorted(f["path"] for f in m["files"]) == sorted(p.name for p in FIRMWARE.glob("*.py"))
    for f in m["files"]:
        data = (release / "files" / f["path"]).read_bytes()
        assert (f["size"], f["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        if f["path"] in ("boot.py", "main.py"):
            assert "mpy" not in f
        else:
            code = (release / "files" / (f["path"] + ".mpy")).read_bytes()
            assert f["mpy"] == {"size": len(code), "sha256": hashlib.sha256(code).hexdigest(), "abi": 774}
            assert code[:2] == b"M\x06"  # abi 774 = v6.3 as sys.implementation._mpy & 0x3ff says on the VM
    assert check_release(release, pki / "release.pub")["version"] == "9.9.9"


def test_a_changed_byte_or_another_key_does_not_verify(release, tmp_path, pki):
    bad = tmp_path / "bad"
    shutil.copytree(release, bad)
    text = (bad / "manifest.json").read_bytes()
    (bad / "manifest.json").write_bytes(text.replace(b'"9.9.9"', b'"9.9.8"'))
    with pytest.raises(ReleaseError, match="signature does not verify"):
        check_release(bad, pki / "release.pub")
    other = tmp_path / "other"
    certs.ensure_release_key(other)
    with pytest.raises(ReleaseError, match="signature does not verify"):
        check_release(release, other / "release.pub")


@pytest.mark.parametrize("name", [".hidden", "config.json", "client.key", "ca.crt", "release.pub", "ota.json",
                                  "a b.py", "x" * 65])
def test_names_a_board_would_not_write_are_refused(name):
    assert path_error(name) is not None


def test_plain_names_are_fine():
    assert path_error("device.py") is None and path_error("data_v2.bin") is None


def _cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("case", ["version", "semver", "unsafe", "folder", "nokey", "pubkey", "rsa", "p384", "out"])
def test_build_refuses_bad_input_with_one_line_and_exit_2(case, tmp_path, pki, capsys):
    fw = firmware_copy(tmp_path / "fw")
    key, out, version = pki / "release.key", tmp_path / "out", "9.9.9"
    if case == "version":
        version = "9.9.10"
    elif case == "semver":
        version = "v9"
    elif case == "unsafe":
        (fw / "config.json").write_text("{}")
    elif case == "folder":
        (fw / "lib").mkdir()
    elif case == "nokey":
        key = tmp_path / "missing.key"
    elif case == "pubkey":
        key = pki / "release.pub"
    elif case in ("rsa", "p384"):
        k = rsa.generate_private_key(65537, 2048) if case == "rsa" else ec.generate_private_key(ec.SECP384R1())
        key = tmp_path / "k.pem"
        key.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    elif case == "out":
        out.mkdir()
        (out / "manifest.json").write_text("old")
    code, err = _cli(["release", "build", "--firmware", str(fw), "--version", version, "--key", str(key),
                      "--out", str(out)], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("esp32emu: ") and "Traceback" not in err, err
    expect = {"version": "FW_VERSION 9.9.9", "semver": "not a semantic version", "unsafe": "config.json",
              "folder": "lib/", "nokey": "no such file", "pubkey": "not a PEM private key", "rsa": "P-256",
              "p384": "P-256", "out": "never overwritten"}[case]
    assert expect in err
    if case != "out":
        assert not out.exists()  # nothing written


def test_build_cli_end_to_end(tmp_path, pki):
    fw = firmware_copy(tmp_path / "fw", "1.2.3")
    r = subprocess.run([sys.executable, "-m", "emulator", "release", "build", "--firmware", str(fw), "--version",
                        "1.2.3", "--key", str(pki / "release.key"), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    assert "release 1.2.3" in r.stdout
    assert check_release(tmp_path / "r", pki / "release.pub")["version"] == "1.2.3"


# -- release serve --------------------------------------------------------------------------------


@pytest.fixture
def server(release):
    with ReleaseServer(release.parent) as srv:
        yield srv


def _get(srv: ReleaseServer, path: str, headers: dict | None = None, method: str = "GET"):
    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
    conn.request(method, "/" + path, headers=headers or {})
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r, body


def test_serve_whole_files_and_ranges(server, release):
    data = (release / "files" / "device.py").read_bytes()
    n = len(data)
    r, body = _get(server, "r/files/device.py")
    assert (r.status, body, r.getheader("Accept-Ranges")) == (200, data, "bytes")
    r, body = _get(server, "r/files/device.py", {"Range": "bytes=100-199"})
    assert (r.status, body, r.getheader("Content-Range")) == (206, data[100:200], f"bytes 100-199/{n}")
    r, body = _get(server, "r/files/device.py", {"Range": "bytes=1000-"})
    assert (r.status, body) == (206, data[1000:])
    r, body = _get(server, "r/files/device.py", {"Range": "bytes=-10"})
    assert (r.status, body) == (206, data[-10:])
    r, body = _get(server, "r/files/device.py", {"Range": f"bytes={n}-"})
    assert (r.status, body, r.getheader("Content-Range")) == (416, b"", f"bytes */{n}")
    r, body = _get(server, "r/files/device.py", method="HEAD")
    assert (r.status, r.getheader("Content-Length"), body) == (200, str(n), b"")
    for bad in ("r/../../etc/passwd", "r/files/nope.py", "%2e%2e/%2e%2e/etc/passwd"):
        assert _get(server, bad)[0].status == 404
    assert server.stats.partial == 3 and server.stats.unsatisfiable == 1


def test_serve_keeps_the_connection_for_the_next_request(server, release):
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    for name in ("manifest.json", "manifest.json.sig", "files/app.py"):
        conn.request("GET", f"/r/{name}")
        assert conn.getresponse().read() == (release / name).read_bytes()
    conn.close()


def test_drop_after_n_bytes_then_resume_with_range(server, release):
    data = (release / "files" / "device.py").read_bytes()
    server.faults.drop("device.py", 1000)
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    conn.request("GET", "/r/files/device.py")
    r = conn.getresponse()
    assert r.status == 200
    got = b""
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        while chunk := r.read1(65536):
            got += chunk
        raise ConnectionError("ended early")  # a clean end of a short body is a drop too
    assert len(got) <= 1000 and data.startswith(got)
    r, rest = _get(server, "r/files/device.py", {"Range": f"bytes={len(got)}-"})
    assert r.status == 206 and got + rest == data  # once: the resumed request is whole
    assert server.stats.drops == 1


def test_corrupt_flips_one_byte_once(server, release):
    data = (release / "files" / "config.py").read_bytes()
    server.faults.corrupt("files/config.py", 5000)
    _, first = _get(server, "r/files/config.py")
    diff = [i for i in range(len(data)) if first[i] != data[i]]
    assert diff == [5000] and first[5000] == data[5000] ^ 0xFF
    assert _get(server, "r/files/config.py")[1] == data
    assert server.stats.corruptions == 1


def test_https_with_the_pki(release, pki):
    with ReleaseServer(release.parent, tls_dir=pki) as srv:
        assert srv.url("r/manifest.json").startswith("https://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with urllib.request.urlopen(srv.url("r/manifest.json"), context=ctx, timeout=10) as r:
            assert r.read() == (release / "manifest.json").read_bytes()
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            urllib.request.urlopen(srv.url("r/manifest.json"), context=ssl.create_default_context(), timeout=10)


def test_serve_cli_rejects_a_missing_folder(tmp_path, capsys):
    code, err = _cli(["release", "serve", str(tmp_path / "nope"), "--port", "0", "--duration", "1"], capsys)
    assert code == 2 and "is not a folder" in err and err.count("\n") == 1


def test_every_fleet_board_gets_the_release_pub_on_its_flash(tmp_path):
    from emulator.board.loader import FirmwareImage
    from emulator.fleet.workers import GroupSpec, make_board

    files, key = certs.release_files(tmp_path / "certs", tmp_path / "state")  # no PKI: the state folder's pair
    spec = GroupSpec(indices=(0, 1), devices=2, host="127.0.0.1", port=1883, tls=False, keepalive=30, interval=10,
                     seed=0, state_dir=tmp_path / "state", certs_dir=tmp_path / "certs", boot_rate=100,
                     release_pub=files["release.pub"])
    image = FirmwareImage(FIRMWARE)
    for i in (0, 1):
        board = make_board(spec, i, image)
        assert (board.flash_dir / "release.pub").read_bytes() == (key.parent / "release.pub").read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
