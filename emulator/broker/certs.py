"""The development PKI for mutual TLS (`esp32emu certs`): a CA, the broker's
server certificate, one client certificate per device (CN = device id) and
a backend client certificate with fleet-wide rights on the broker.

Layout of the PKI directory (SPEC §3), all PEM on the host:

    ca.crt  ca.key              the dev CA (ca.key never leaves the host)
    broker.crt  broker.key      server cert, SAN DNS:localhost + IP:127.0.0.1
    backend.crt backend.key     client cert, CN "backend" (your own backend tools)
    backends/<name>.crt .key    one client cert per backend client, CN = name
                                ("backend-watch", "backend-dashboard", ...)
    devices/<id>.crt <id>.key   client cert, CN = device id
    release.key release.pub     the fleet's release signing key (OTA, issue 18):
                                PKCS#8 PEM (0600) and its SubjectPublicKeyInfo PEM

The broker binds the client id to the certificate (`use_username_as_clientid`):
a certificate connects only as its own CN, so one device cannot take over
another's session, and two backend clients never share a client id as long
as each holds its own certificate (`backend_identity`, `esp32emu certs
--backend NAME`).

What goes onto a board (real or emulated) is *DER*, written under fixed names
at the root of its filesystem: `ca.crt`, `client.crt`, `client.key` (the key
as unencrypted PKCS#8). MicroPython's mbedTLS-based `tls` takes DER bytes
directly and a DER file needs no trailing NUL or base64 decoding on the
board; `board_files()` converts (and `esp32emu flash` copies its output).

Keys are ECDSA P-256: small, fast to make, and cheap for the ESP32's mbedTLS.
Private keys are written 0600. Existing files are never overwritten unless
`force=True`; a kept CA is reused to issue whatever is missing.

No CLI here (cli.py prints what `make_pki` returns) and no broker config
(broker.py writes the ACL).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from emulator.broker.pkireadme import README_TEXT, write_readme
from emulator.validation import BACKEND_ID, UsageError, device_id_error

__all__ = [
    "BACKEND_CN",
    "BACKEND_IDENTITIES",
    "backend_name_error",
    "backend_names",
    "ensure_backend",
    "BOARD_CA",
    "BOARD_CERT",
    "BOARD_KEY",
    "CertError",
    "DEFAULT_DIR",
    "Issued",
    "Pki",
    "board_files",
    "der_files",
    "describe",
    "device_ids",
    "ensure_devices",
    "issue",
    "key_type",
    "make_pki",
    "new_ca",
    "README_TEXT",
    "write_readme",
    "write_pair",
    "RELEASE_KEY",
    "RELEASE_PUB",
    "ensure_release_key",
    "release_files",
    "install_release_key",
]

DEFAULT_DIR = Path("certs")
BACKEND_CN = BACKEND_ID  # reserved: no device id can take it
# Each backend client of esp32emu holds its own certificate (the client id is
# the CN), issued from the CA the first time it connects (`ensure_backend`)
# and always given fleet-wide rights in the ACL esp32emu writes.
BACKEND_IDENTITIES = (
    "backend-observer",  # observers of your own (bench/)
    "backend-watch",  # esp32emu watch
    "backend-dashboard",  # esp32emu dashboard
    "backend-fleet",  # esp32emu fleet's observer (and its --dashboard)
    "backend-rollout",  # esp32emu rollout
    "backend-conformance",  # esp32emu conformance's observer
)
CA_CN = "esp32emu dev CA"
BROKER_CN = "esp32emu broker"
BROKER_SANS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity browsers still accept; plenty for a dev PKI

# File names on the board's filesystem root (SPEC §2), DER content.
BOARD_CA = "ca.crt"
BOARD_CERT = "client.crt"
BOARD_KEY = "client.key"
BOARD_RELEASE_PUB = "release.pub"  # PEM SubjectPublicKeyInfo, read by the firmware's ota op

# The release signing key pair (issue 18): in the PKI folder, or, for a run
# without a PKI, in `<state>/release/` (made on first use; see release_files).
RELEASE_KEY = "release.key"
RELEASE_PUB = "release.pub"


class CertError(Exception):
    """Bad input or a PKI directory that cannot be used (message fit for one line)."""


@dataclass(frozen=True)
class Issued:
    """One certificate `make_pki` wrote or kept, for the CLI to print."""

    path: Path
    subject: str
    key_type: str
    not_after: dt.datetime
    kept: bool  # True: the file existed and was left alone

    def line(self, root: Path | None = None) -> str:
        shown = self.path.relative_to(root) if root is not None and self.path.is_relative_to(root) else self.path
        state = "kept" if self.kept else "new "
        return f"{state} {shown}  CN={self.subject}  {self.key_type}  expires {self.not_after:%Y-%m-%d}"


@dataclass(frozen=True)
class Pki:
    """Paths of a PKI directory (nothing is read or written by constructing one)."""

    root: Path

    @property
    def ca_crt(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def broker_crt(self) -> Path:
        return self.root / "broker.crt"

    @property
    def broker_key(self) -> Path:
        return self.root / "broker.key"

    @property
    def backend_crt(self) -> Path:
        return self.root / "backend.crt"

    @property
    def backend_key(self) -> Path:
        return self.root / "backend.key"

    @property
    def backends_dir(self) -> Path:
        return self.root / "backends"

    def backend_crt_of(self, name: str) -> Path:
        """A named backend identity's certificate ("backend" is the PKI's own backend.crt)."""
        return self.backend_crt if name == BACKEND_CN else self.backends_dir / f"{name}.crt"

    def backend_key_of(self, name: str) -> Path:
        return self.backend_key if name == BACKEND_CN else self.backends_dir / f"{name}.key"

    @property
    def devices_dir(self) -> Path:
        return self.root / "devices"

    def device_crt(self, device_id: str) -> Path:
        return self.devices_dir / f"{device_id}.crt"

    def device_key(self, device_id: str) -> Path:
        return self.devices_dir / f"{device_id}.key"

    def load_ca(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self.ca_crt.read_bytes())
            key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        except FileNotFoundError as e:
            raise CertError(f"{e.filename} is missing: run `esp32emu certs` (or --force to start over)") from None
        except ValueError as e:
            raise CertError(f"cannot read the CA in {self.root}: {e}") from None
        return cert, key  # type: ignore[return-value]


# --- making certificates ----------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def new_ca(
    cn: str = CA_CN,
    *,
    days: int = CA_DAYS,
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key."""
    key = _new_key()
    start = not_before or _now() - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    cn: str,
    *,
    server: bool = False,
    sans: Iterable[str] = (),
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by `ca`: a TLS server cert (`server=True`,
    with `sans` as DNS names or IP addresses) or a TLS client cert."""
    ca_cert, ca_key = ca
    key = _new_key()
    start = not_before or _now() - dt.timedelta(minutes=5)
    end = not_after or start + dt.timedelta(days=days)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


# --- files ----------------------------------------------------------------------


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write `data` with permissions `mode`; refuse to replace a file unless forced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise CertError(f"{path} exists: not overwritten (use --force)") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # O_CREAT honours the umask; an existing file keeps its mode


def write_pair(
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    crt_path: Path,
    key_path: Path,
    *,
    force: bool = False,
) -> None:
    """Write a certificate (0644) and its private key (0600) as PEM."""
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_new(key_path, key_pem, 0o600, force)
    _write_new(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644, force)


def key_type(public_key) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(
            public_key.curve.name, public_key.curve.name
        )
        return f"ECDSA {curve}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    return type(public_key).__name__


def describe(path: Path, kept: bool = True) -> Issued:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return Issued(
        path=path,
        subject=str(cns[0].value) if cns else cert.subject.rfc4514_string(),
        key_type=key_type(cert.public_key()),
        not_after=cert.not_valid_after_utc,
        kept=kept,
    )


def device_ids(n: int) -> list[str]:
    """The ids `esp32emu fleet` gives its boards: dev-00001 ... dev-N."""
    return [f"dev-{i + 1:05d}" for i in range(n)]


def _check_device_id(device_id: str) -> None:
    """The emulator's one device-id rule (emulator/validation.py: the firmware's, and BACKEND_CN reserved)."""
    why = device_id_error(device_id)
    if why is not None:
        raise CertError(why)


def backend_name_error(name: str) -> str | None:
    """Why `name` cannot be a backend identity, or None: "backend-" then the
    characters of a device id (validation.py reserves that prefix for backends)."""
    if not isinstance(name, str) or not name.startswith(BACKEND_CN + "-") or len(name) <= len(BACKEND_CN) + 1:
        return f"backend name {name!r} must start with 'backend-' (e.g. backend-dashboard)"
    why = device_id_error(name.replace(BACKEND_CN + "-", "x-", 1))
    return why.replace("device id", "backend name") if why else None


def backend_names(directory: Path | str) -> list[str]:
    """The named backend identities a PKI holds (`backends/*.crt`)."""
    folder = Pki(Path(directory)).backends_dir
    return sorted(p.stem for p in folder.glob("*.crt") if backend_name_error(p.stem) is None)


def make_pki(
    directory: Path | str = DEFAULT_DIR,
    devices: Iterable[str] = (),
    *,
    force: bool = False,
    backends: Iterable[str] = (),
) -> list[Issued]:
    """Create (or complete) the PKI in `directory`; return what it holds.

    Without `force` existing files are kept and the existing CA signs
    whatever is missing. With `force` everything is made anew (a new CA
    invalidates every old certificate, so nothing is kept).
    """
    pki = Pki(Path(directory))
    ids = list(devices)
    for device_id in ids:
        _check_device_id(device_id)
    names = list(dict.fromkeys(backends))
    for name in names:
        if (why := backend_name_error(name)) is not None:
            raise CertError(why)
    out: list[Issued] = []
    if force or not pki.ca_crt.exists():
        if not force and pki.ca_key.exists():
            raise CertError(f"{pki.ca_key} exists without ca.crt: not overwritten (use --force)")
        ca = new_ca()
        write_pair(*ca, pki.ca_crt, pki.ca_key, force=force)
        out.append(describe(pki.ca_crt, kept=False))
    else:
        ca = None
        out.append(describe(pki.ca_crt, kept=True))

    def leaf(crt: Path, key: Path, cn: str, server: bool = False, sans: Iterable[str] = ()) -> None:
        nonlocal ca
        if not force and (crt.exists() or key.exists()):
            if not (crt.exists() and key.exists()):
                raise CertError(f"{crt if crt.exists() else key} exists without its pair: not overwritten (use --force)")
            out.append(describe(crt, kept=True))
            return
        if ca is None:
            ca = pki.load_ca()
        write_pair(*issue(ca, cn, server=server, sans=sans), crt, key, force=force)
        out.append(describe(crt, kept=False))

    leaf(pki.broker_crt, pki.broker_key, BROKER_CN, server=True, sans=BROKER_SANS)
    leaf(pki.backend_crt, pki.backend_key, BACKEND_CN)
    for name in names:
        leaf(pki.backend_crt_of(name), pki.backend_key_of(name), name)
    for device_id in ids:
        leaf(pki.device_crt(device_id), pki.device_key(device_id), device_id)
    ensure_release_key(pki.root)
    write_readme(pki.root, force=force)
    return out


def ensure_release_key(directory: Path | str) -> bool:
    """Make `release.key` (PKCS#8 PEM, 0600) and `release.pub` (SPKI PEM) in
    `directory` when the key is missing; never replaces a key (not even with
    --force: boards trust only its public half). A key without its .pub gets
    the .pub back; a .pub alone is kept (boards can verify, nothing can sign).
    True when a new key was made."""
    root = Path(directory)
    key_path, pub_path = root / RELEASE_KEY, root / RELEASE_PUB
    made = False
    if key_path.exists():
        if pub_path.exists():
            return False
        try:
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        except ValueError as e:
            raise CertError(f"{key_path}: not a PEM private key ({e})") from None
    elif pub_path.exists():
        return False
    else:
        key = _new_key()
        _write_new(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), 0o600, force=False)
        made = True
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(pub_path, pub, 0o644, force=False)
    return made


def release_files(certs_dir: Path | str, state_dir: Path | str) -> tuple[dict[str, bytes], Path]:
    """The `release.pub` an emulated board gets on its flash, and the key that
    signs for it: the PKI's (`certs_dir/release.pub`) when there is one, else
    the state folder's own pair in `<state>/release/` (made when missing, so
    that `esp32emu rollout` works on the default fleet without `esp32emu certs`)."""
    root = Path(certs_dir) if (Path(certs_dir) / RELEASE_PUB).is_file() else Path(state_dir) / "release"
    ensure_release_key(root)  # quietly, like the boards' flash folders beside it (README: Releases and rollouts)
    return {BOARD_RELEASE_PUB: (root / RELEASE_PUB).read_bytes()}, root / RELEASE_KEY


def ensure_devices(directory: Path | str, devices: Iterable[str]) -> int:
    """Issue a client certificate for every device that has none (the CA must
    exist); never touches existing ones. Returns how many were made."""
    pki = Pki(Path(directory))
    ca = None
    made = 0
    for device_id in devices:
        crt, key = pki.device_crt(device_id), pki.device_key(device_id)
        if crt.exists() and key.exists():
            continue
        _check_device_id(device_id)
        if ca is None:
            ca = pki.load_ca()
        write_pair(*issue(ca, device_id), crt, key)
        made += 1
    return made


def ensure_backend(directory: Path | str, name: str) -> bool:
    """Issue the backend identity `name` from the CA when the PKI lacks it
    (a PKI made before named identities); True when one was made."""
    pki = Pki(Path(directory))
    crt, key = pki.backend_crt_of(name), pki.backend_key_of(name)
    if crt.exists() and key.exists():
        return False
    if name != BACKEND_CN and (why := backend_name_error(name)) is not None:
        raise CertError(why)
    write_pair(*issue(pki.load_ca(), name), crt, key)
    return True


def der_files(ca_cert: x509.Certificate, cert: x509.Certificate, key) -> dict[str, bytes]:
    """The board's three files (DER) from certificate and key objects."""
    return {
        BOARD_CA: ca_cert.public_bytes(serialization.Encoding.DER),
        BOARD_CERT: cert.public_bytes(serialization.Encoding.DER),
        BOARD_KEY: key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    }


def board_files(directory: Path | str, device_id: str) -> dict[str, bytes]:
    """The three DER files a board with `"tls": true` reads from its root."""
    pki = Pki(Path(directory))
    try:
        return der_files(
            x509.load_pem_x509_certificate(pki.ca_crt.read_bytes()),
            x509.load_pem_x509_certificate(pki.device_crt(device_id).read_bytes()),
            serialization.load_pem_private_key(pki.device_key(device_id).read_bytes(), password=None),
        )
    except FileNotFoundError as e:
        raise CertError(f"{e.filename} is missing: run `esp32emu certs --devices N` first") from None


# -- what a command provisions ---------------------------------------------------------


def provision_tls(certs_dir: Path, device_ids: list[str]) -> None:
    """Make sure every device has its client certificate in `certs_dir`
    (issued from the CA there when missing; existing ones are kept)."""
    try:
        made = ensure_devices(certs_dir, device_ids)
    except CertError as e:
        raise UsageError(f"mqtts:// needs the dev PKI: {e}") from None
    if made:
        print(f"esp32emu: issued {made} device certificate(s) in {certs_dir}", file=sys.stderr, flush=True)


def install_release_key(board, files: dict[str, bytes]) -> None:
    """Put `release.pub` (from `release_files`) on a board's flash (either backend)."""
    board.install_files(files)


def install_tls(board, certs_dir: Path) -> None:
    """Put the board's own DER ca.crt/client.crt/client.key on its flash
    (`board`: either backend; it has `.id` and `.install_files`)."""
    try:
        board.install_files(board_files(certs_dir, board.id))
    except CertError as e:
        raise UsageError(str(e)) from None
