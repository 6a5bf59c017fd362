"""The README that `esp32emu certs` writes into the PKI folder: what each
file is, which are secret, how they are used and regenerated. Imports
nothing of the emulator (certs.py writes it beside the keys)."""

from pathlib import Path


README_TEXT = """\
# The development PKI (`esp32emu certs`)

Everything in this folder except this README is generated. **Never commit a
key** (`*.key`), and never use these certificates outside a lab: anyone with
`ca.key` can issue a certificate the broker trusts.

| file | what it is | secret |
|---|---|---|
| `ca.crt` | the development CA's certificate: brokers and boards trust what it signed | no |
| `ca.key` | the CA's private key: signs every certificate below; never leaves this host | **yes** |
| `broker.crt` | Mosquitto's server certificate (SAN `127.0.0.1`, `localhost`) | no |
| `broker.key` | its private key | **yes** |
| `backend.crt` | a client certificate, CN `backend`, with fleet-wide rights (observers, `esp32emu watch`, tests) | no |
| `backend.key` | its private key | **yes** |
| `backends/<name>.crt` | one client certificate per backend client (CN `<name>`, e.g. `backend-watch`, `backend-dashboard`), fleet-wide rights; issued when an esp32emu backend client first connects, `esp32emu certs --backend NAME` adds one for a tool of yours | no |
| `backends/<name>.key` | its private key | **yes** |
| `devices/<id>.crt` | one client certificate per device; its CN is the device id | no |
| `devices/<id>.key` | that device's private key (also copied to the board as `client.key`) | **yes** |
| `release.key` | the fleet's release signing key (PKCS#8): `esp32emu release build --key` signs manifests with it | **yes** |
| `release.pub` | its public key (SubjectPublicKeyInfo): copied to every board, which verifies OTA manifests with it | no |

All PEM; keys are ECDSA P-256, private keys written with mode `0600`.

How they are used:

- `esp32emu broker --tls` runs Mosquitto with mutual TLS: `require_certificate
  true`, `use_identity_as_username true` (the certificate CN becomes the MQTT
  username), `use_username_as_clientid true` (the CN is the client id too:
  a certificate cannot connect as another device and take over its session)
  and an ACL `pattern readwrite devices/%u/#`, so a device can only
  publish and subscribe under its own topics; `backend` and every
  `backends/<name>` may use `devices/#` and read `$SYS/#`, nothing else.
  Two clients holding the same certificate share one client id and
  disconnect each other: give each backend client its own.
- `esp32emu flash --id ID` copies `ca.crt`, and that device's certificate and
  key as `client.crt` / `client.key`, to the root of the board's filesystem,
  where `config.json` with `"broker": {"tls": true}` makes the firmware use them.
  On the board they are **DER** (what MicroPython's `tls` module loads without
  a PEM parser); the conversion is done on the host.
- `esp32emu run|fleet --broker mqtts://...` issues any missing device
  certificates from this CA and gives every emulated board its own.

Regenerate:

- `esp32emu certs --devices N` adds what is missing (devices `dev-00001`…N)
  with the existing CA and keeps every existing file.
- `esp32emu certs --devices N --force` makes everything anew, CA included:
  every old certificate stops working, so re-flash every real board.
- A leaked device key: delete `devices/<id>.crt` and `devices/<id>.key`, run
  `esp32emu certs` again and re-flash that board (a dev PKI has no revocation
  list; `--force` is the only way to retire the old certificate).
- The release key is never replaced, not even with `--force`: boards in the
  field trust only its public half. To rotate it, delete both `release.*`
  files, run `esp32emu certs`, and re-flash every board's `release.pub`.
"""


def write_readme(directory: Path | str, force: bool = False) -> bool:
    """Write README.md (what each file is, which are secret, how to
    regenerate) into the PKI directory unless one is there (a user's edits
    are kept, except with `force`). True when written."""
    path = Path(directory) / "README.md"
    if path.exists() and not force:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(README_TEXT)
    return True
