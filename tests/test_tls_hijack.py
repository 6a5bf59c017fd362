"""Issue 19, session hijack closed over mutual TLS: the broker binds the
client id to the certificate (`use_identity_as_username` +
`use_username_as_clientid`), so a device certificate connects only as its
own id, and every backend client holds a backend identity of its own (two
never share a client id, so they never disconnect each other).

Real Mosquitto with TLS, a real board (dev-b) running the firmware, a raw
TLS CONNECT holding dev-a's certificate.
"""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest

from emulator.broker import certs
from emulator.broker.mosquitto import TlsConfig
from emulator.cli import main
from emulator.observe.connection import backend_tls
from emulator.observe.counting import FleetObserver
from emulator.validation import device_id_error
from tests.boards import is_birth, is_will
from tests.helpers import Observer

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

KA = 3


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.make_pki(root, ["dev-a", "dev-b"], backends=("backend-test-1",))
    return root


def _context(pki: Path, device_id: str) -> ssl.SSLContext:
    p = certs.Pki(pki)
    ctx = ssl.create_default_context(cafile=str(p.ca_crt))
    ctx.load_cert_chain(p.device_crt(device_id), p.device_key(device_id))
    return ctx


def _connect_as(broker, ctx: ssl.SSLContext, client_id: str) -> tuple[socket.socket, int]:
    """A raw MQTT 3.1.1 CONNECT (clean session, no Will) over TLS: the socket and the CONNACK code."""
    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    body = s(b"MQTT") + bytes([4, 0x02]) + (30).to_bytes(2, "big") + s(client_id.encode())
    sock = ctx.wrap_socket(socket.create_connection((broker.host, broker.port), timeout=5), server_hostname="localhost")
    sock.sendall(bytes([0x10, len(body)]) + body)
    connack = sock.recv(4)
    return sock, connack[3]


@pytest.mark.parametrize("bound", [True, False], ids=["client-id-bound", "unbound-control"])
def test_a_device_certificate_cannot_take_over_another_devices_session(emu, broker_factory, pki, bound):
    """dev-a's certificate asking for client id dev-b: with the client id
    bound (the default) dev-b stays connected, no Will of dev-b appears and
    dev-b still answers a command sent afterwards. The unbound control shows
    the hole the binding closes (dev-b is kicked off and its Will fires), so
    this test can tell the two apart."""
    broker = broker_factory(tls=TlsConfig.from_pki(pki, bind_client_id=bound))
    backend = Observer(broker.host, broker.port, client_id="ignored-the-cn-is-the-id",
                       tls=backend_tls(pki, "backend-test-1"))
    try:
        backend.connect()
        backend.subscribe("devices/#")
        lines: list[str] = []
        board = emu.add_board("dev-b", "localhost", broker.port, certs=pki, start=False, console=lines.append,
                              keepalive=KA, interval=1, backoff={"base_ms": 200, "cap_ms": 1000})
        emu.call(board.start)
        backend.wait_for(is_birth("dev-b"), 15)
        mark = len(backend.messages)

        sock, rc = _connect_as(broker, _context(pki, "dev-a"), "dev-b")
        try:
            assert rc == 0  # accepted, as the certificate's own id when bound
            if not bound:
                backend.wait_for(is_will("dev-b"), 10, mark)
                assert "Client dev-b already connected, closing old connection" in broker.log_text()
                return
            # A command round trip after the CONNACK: Mosquitto publishes a
            # taken-over connection's Will before that CONNACK, so anything it
            # did to dev-b is in by the time the result comes back.
            backend.publish("devices/dev-b/cmd", json.dumps({"id": "after", "op": "ping", "args": {}}))
            backend.wait_for(lambda m: m.topic == "devices/dev-b/cmd/result" and b'"after"' in m.payload, 15, mark)
            after = backend.messages[mark:]
            assert not [m for m in after if is_will("dev-b")(m)], "dev-b's Will appeared: its session was taken over"
            assert not [m for m in after if is_birth("dev-b")(m)], "dev-b had to reconnect"
            assert not [line for line in lines if "link lost" in line], lines
            log = broker.log_text()
            assert "as dev-a (" in log  # the intruder connected as its own certificate's CN
            assert "dev-b already connected" not in log
        finally:
            sock.close()
    finally:
        backend.close()


def test_backend_clients_with_their_own_identities_never_kick_each_other(broker_factory, pki):
    """`esp32emu watch` and `esp32emu dashboard` on one TLS broker at once:
    each holds its own backend certificate (issued on demand from the CA), so
    each has its own client id; both keep fleet-wide rights and their first
    connection."""
    broker = broker_factory(tls=TlsConfig.from_pki(pki))
    observers = []
    try:
        for identity in ("backend-watch", "backend-dashboard"):
            obs = FleetObserver(broker.host, broker.port)
            obs.use_tls(pki, identity)
            observers.append(obs.start())  # connect, subscribe devices/#, a marker round trip
        assert certs.Pki(pki).backend_crt_of("backend-dashboard").is_file()
        for obs in observers:  # a second round trip each, after both are up
            assert obs.flush(10)
            assert obs.conn.connected and obs.conn.connects == 1
        log = broker.log_text()
        assert "as backend-watch (" in log and "as backend-dashboard (" in log
        assert "already connected" not in log
    finally:
        for obs in observers:
            obs.stop()


def test_certs_backend_adds_a_named_identity_and_device_ids_cannot_take_backend_names(tmp_path, capsys):
    out = tmp_path / "pki"
    assert main(["certs", "--devices", "1", "--dir", str(out), "--backend", "backend-mytool"]) == 0
    assert "CN=backend-mytool" in capsys.readouterr().out
    crt = out / "backends" / "backend-mytool.crt"
    assert certs.describe(crt).subject == "backend-mytool"
    assert (out / "backends" / "backend-mytool.key").stat().st_mode & 0o777 == 0o600
    assert main(["certs", "--dir", str(out), "--backend", "mytool"]) == 2
    assert "must start with 'backend-'" in capsys.readouterr().err
    assert "reserved" in device_id_error("backend-mytool")
    assert device_id_error("dev-backend") is None
    # Every name the broker's ACL grants fleet-wide rights to is one no device can take.
    for name in TlsConfig.from_pki(out).backend_users:
        assert device_id_error(name) is not None, name
