"""The dev PKI (`esp32emu certs`, emulator/broker/certs.py) and the broker's ACL.

Everything is generated into tmp_path, never into the repository's certs/.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emulator.broker import certs
from emulator.broker.mosquitto import Broker, TlsConfig, acl_text
from emulator.cli import main


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _cn(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def test_make_pki_layout_names_and_chain(tmp_path):
    issued = certs.make_pki(tmp_path, ["dev-00001", "dev-00002"])
    pki = certs.Pki(tmp_path)
    assert [i.subject for i in issued] == ["esp32emu dev CA", "esp32emu broker", "backend", "dev-00001", "dev-00002"]
    assert all(not i.kept and i.key_type == "ECDSA P-256" for i in issued)
    ca = _load(pki.ca_crt)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    broker = _load(pki.broker_crt)
    sans = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in broker.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    for path, cn in [(pki.backend_crt, "backend"), (pki.device_crt("dev-00002"), "dev-00002")]:
        cert = _load(path)
        assert _cn(cert) == cn
        assert ExtendedKeyUsageOID.CLIENT_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        cert.verify_directly_issued_by(ca)
    broker.verify_directly_issued_by(ca)


def test_private_keys_are_0600_and_match_their_certificates(tmp_path):
    certs.make_pki(tmp_path, ["dev-00001"])
    keys = sorted(tmp_path.rglob("*.key"))
    assert [k.name for k in keys] == ["backend.key", "broker.key", "ca.key", "dev-00001.key", "release.key"]
    keys.pop()  # the release signing key has a .pub, not a certificate (tests/test_ota_release.py)
    assert stat.S_IMODE((tmp_path / "release.key").stat().st_mode) == 0o600
    for key_path in keys:
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600, key_path
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = _load(key_path.with_suffix(".crt"))
        assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    for crt in tmp_path.rglob("*.crt"):
        assert stat.S_IMODE(crt.stat().st_mode) == 0o644


def test_existing_files_are_never_overwritten_without_force(tmp_path):
    certs.make_pki(tmp_path, ["dev-00001"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    again = certs.make_pki(tmp_path, ["dev-00001", "dev-00002"])
    assert [i.kept for i in again] == [True, True, True, True, False]
    for path, data in before.items():
        assert path.read_bytes() == data
    # The new device certificate comes from the kept CA.
    _load(certs.Pki(tmp_path).device_crt("dev-00002")).verify_directly_issued_by(_load(tmp_path / "ca.crt"))
    forced = certs.make_pki(tmp_path, ["dev-00001"], force=True)
    assert not any(i.kept for i in forced)
    assert (tmp_path / "ca.crt").read_bytes() != before[tmp_path / "ca.crt"]
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_half_a_pair_or_bad_ids_are_refused(tmp_path):
    certs.make_pki(tmp_path, [])
    (tmp_path / "backend.crt").unlink()
    with pytest.raises(certs.CertError, match="without its pair"):
        certs.make_pki(tmp_path, [])
    for bad in ("", "a/b", "x" * 65, "backend", "dev 1"):
        with pytest.raises(certs.CertError):
            certs.make_pki(tmp_path / "other", [bad])


def test_board_files_are_der_and_ensure_devices_only_adds(tmp_path):
    certs.make_pki(tmp_path, ["dev-00001"])
    files = certs.board_files(tmp_path, "dev-00001")
    assert set(files) == {"ca.crt", "client.crt", "client.key"}
    assert all(not data.startswith(b"-----BEGIN") for data in files.values())
    assert _cn(x509.load_der_x509_certificate(files["client.crt"])) == "dev-00001"
    serialization.load_der_private_key(files["client.key"], password=None)
    original = (tmp_path / "devices" / "dev-00001.crt").read_bytes()
    assert certs.ensure_devices(tmp_path, ["dev-00001", "dev-00003"]) == 1
    assert (tmp_path / "devices" / "dev-00001.crt").read_bytes() == original
    with pytest.raises(certs.CertError, match="missing"):
        certs.board_files(tmp_path, "dev-09999")
    with pytest.raises(certs.CertError, match="missing"):
        certs.ensure_devices(tmp_path / "empty", ["dev-00001"])


def test_cli_certs_prints_expiry_and_key_type_and_keeps_files(tmp_path, capsys):
    out_dir = tmp_path / "certs"
    assert main(["certs", "--devices", "2", "--dir", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "new  devices/dev-00002.crt  CN=dev-00002  ECDSA P-256  expires 20" in out
    assert "5 new, 0 kept" in out
    ca = (out_dir / "ca.crt").read_bytes()
    assert main(["certs", "--devices", "2", "--dir", str(out_dir)]) == 0
    assert "0 new, 5 kept" in capsys.readouterr().out
    assert (out_dir / "ca.crt").read_bytes() == ca
    with pytest.raises(SystemExit) as e:  # argparse's --devices type: one line, exit 2
        main(["certs", "--devices", "-1", "--dir", str(out_dir)])
    assert e.value.code == 2
    assert "--devices" in capsys.readouterr().err


def test_cli_broker_tls_without_pki_is_a_usage_error(tmp_path, capsys):
    code = main(["--state", str(tmp_path / "state"), "broker", "--tls", "--certs", str(tmp_path / "none")])
    assert code == 2
    assert "esp32emu certs" in capsys.readouterr().err


def test_acl_confines_devices_and_grants_the_backend(tmp_path):
    text = acl_text("devices", ["backend"])
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == ["pattern readwrite devices/%u/#", "user backend", "topic readwrite devices/#", "topic read $SYS/#"]
    certs.make_pki(tmp_path / "pki", [])
    broker = Broker(tmp_path / "b", port=8883, tls=TlsConfig.from_pki(tmp_path / "pki"))
    conf = broker.config_text()
    for line in ("require_certificate true", "use_identity_as_username true", "allow_anonymous false"):
        assert line in conf.splitlines()
    assert f"acl_file {tmp_path / 'b' / 'acl'}" in conf
    # Issue 19: the client id is bound to the certificate by default (no session takeover).
    assert "use_username_as_clientid true" in conf.splitlines()
    assert "use_username_as_clientid" not in Broker(
        tmp_path / "c", port=8883, tls=TlsConfig.from_pki(tmp_path / "pki", bind_client_id=False)
    ).config_text()


def test_certs_writes_a_readme_naming_every_file_and_its_secrecy(tmp_path, capsys):
    out_dir = tmp_path / "mine"
    assert main(["certs", "--devices", "1", "--dir", str(out_dir)]) == 0
    assert "README.md says what each file is" in capsys.readouterr().out
    readme = (out_dir / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        if line.startswith("| `"):
            name, _, secret = (cell.strip() for cell in line.strip("|").split("|"))
            rows[name.strip("`")] = secret
    written = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file() and p.name != "README.md"}
    named = {n.replace("<id>", "dev-00001") for n in rows if "<name>" not in n}  # backends/: on demand
    assert written == named, (written, named)
    assert {n for n, s in rows.items() if s == "**yes**"} == {n for n in rows if n.endswith(".key")}
    assert "--force" in readme and "esp32emu certs --devices N" in readme  # how to regenerate


def test_certs_readme_keeps_a_users_edits_unless_forced(tmp_path):
    certs.make_pki(tmp_path, [])
    (tmp_path / "README.md").write_text("ours\n")
    certs.make_pki(tmp_path, ["dev-00001"])
    assert (tmp_path / "README.md").read_text() == "ours\n"
    certs.make_pki(tmp_path, [], force=True)
    assert (tmp_path / "README.md").read_text() == certs.README_TEXT


def test_the_repositorys_certs_readme_is_what_the_command_writes():
    assert (Path(__file__).resolve().parent.parent / "certs" / "README.md").read_text() == certs.README_TEXT
