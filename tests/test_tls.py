"""SPEC §4 item 18, mutual TLS: emulated boards running the real firmware
(tlsctx.py through the board's fake `tls`, handshakes by CPython's `ssl`)
against a real Mosquitto with a TLS listener, `require_certificate`,
`use_identity_as_username` and the per-device ACL; watched by paho-mqtt
clients holding the backend certificate.

Every PKI is generated into tmp_path, never into the repository's certs/.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from emulator.board.clock import BoardClock
from emulator.board.fakes.misc import FlashFS
from emulator.board.fakes.tlsfake import CERT_NONE, CERT_REQUIRED, SslModule, TlsModule
from emulator.broker import certs
from emulator.broker.mosquitto import TlsConfig
from emulator.broker.probe import mqtt_connect_rc
from tests.boards import PacketTap, is_birth, is_will
from tests.helpers import Observer

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

KA = 3
DEVICES = ("dev-a", "dev-b", "dev-p1", "dev-x")
# The broker makes a certificate's CN the client id: each observer of a test holds its own.
BACKENDS = tuple(f"backend-test-{n}" for n in range(1, 5))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.make_pki(root, DEVICES, backends=(*certs.BACKEND_IDENTITIES, *BACKENDS))
    return root


@pytest.fixture
def tls_broker(broker_factory, pki):
    return broker_factory(tls=TlsConfig.from_pki(pki))


@pytest.fixture
def tls_observer():
    """`tls_observer(broker, pki, identity=None)`: a connected paho client
    holding that identity's certificate (default: a backend identity of its
    own, `BACKENDS` in turn); closed at teardown."""
    made: list[Observer] = []

    def make(broker, pki_dir: Path, identity: str | None = None, client_id: str | None = None) -> Observer:
        identity = identity or BACKENDS[len(made) % len(BACKENDS)]
        obs = Observer(broker.host, broker.port, client_id=client_id or f"{identity}-obs{len(made)}")
        crt, key = _identity_files(Path(pki_dir), identity)
        obs.client.tls_set(ca_certs=str(Path(pki_dir) / "ca.crt"), certfile=str(crt), keyfile=str(key))
        made.append(obs)
        return obs.connect()

    yield make
    for obs in made:
        obs.close()


def _identity_files(pki_dir: Path, identity: str) -> tuple[Path, Path]:
    p = certs.Pki(pki_dir)
    if identity == certs.BACKEND_CN or identity.startswith(certs.BACKEND_CN + "-"):
        return p.backend_crt_of(identity), p.backend_key_of(identity)
    return p.device_crt(identity), p.device_key(identity)


def _client_context(pki_dir: Path, identity: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    if identity is not None:
        ctx.load_cert_chain(*_identity_files(pki_dir, identity))
    return ctx


def start_tls_board(emu, broker, device_id, pki_dir, host="localhost", port=None, files=None, **cfg):
    cfg.setdefault("keepalive", KA)
    cfg.setdefault("interval", 1)
    cfg.setdefault("backoff", {"base_ms": 200, "cap_ms": 1000})
    lines: list[str] = []
    if files is None:
        board = emu.add_board(
            device_id, host, port or broker.port, certs=pki_dir, start=False, console=lines.append, **cfg
        )
    else:
        cfg["broker"] = {"tls": True, **cfg.get("broker", {})}
        board = emu.add_board(device_id, host, port or broker.port, start=False, console=lines.append, **cfg)
        board.install_files(files)
    board.console_lines = lines
    return board


def _connected_as(broker, device_id: str) -> bool:
    return f"as {device_id} (" in broker.log_text()


def _expired(ca, cn, server=False, sans=()):
    now = dt.datetime.now(dt.timezone.utc)
    return certs.issue(
        ca, cn, server=server, sans=sans, not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
    )


# --- the happy path ------------------------------------------------------------------


def test_valid_certificate_connects_with_its_cn_as_username(emu, tls_broker, pki, tls_observer):
    """Valid cert -> connected; the broker names the client by its certificate;
    the firmware built a verifying client context with its own cert."""
    obs = tls_observer(tls_broker, pki)
    obs.subscribe("devices/#")
    board = start_tls_board(emu, tls_broker, "dev-a", pki, host="127.0.0.1")  # IP SAN
    emu.call(board.start)
    birth = obs.wait_for(is_birth("dev-a"), 10)
    assert birth.json()["online"] is True
    obs.wait_topic("devices/dev-a/telemetry", 5)
    assert "as dev-a (p2, c1, k3, u'dev-a')" in tls_broker.log_text()
    tls_mod = board.modules.modules["tls"]
    calls = [name for name, _ in tls_mod.contexts[-1].calls]
    assert calls == ["SSLContext", "verify_mode", "load_verify_locations", "load_cert_chain", "handshake"]
    ctx = tls_mod.contexts[-1]
    assert ctx.verify_mode == CERT_REQUIRED
    assert ctx.calls[2][1].startswith("DER ")  # the board's files are DER
    assert all(part.startswith("DER ") for part in ctx.calls[3][1])
    # Commands reach it through the ACL (backend -> devices/dev-a/cmd -> result).
    obs.publish("devices/dev-a/cmd", json.dumps({"id": "t1", "op": "ping", "args": {}}))
    result = obs.wait_topic("devices/dev-a/cmd/result", 5)
    assert result.json()["ok"] is True


# --- refused: the broker side -----------------------------------------------------------


def test_no_client_certificate_or_plaintext_is_refused(tls_broker, pki):
    """No cert -> refused (TLS alert); plaintext MQTT -> refused; anonymous never gets a CONNACK."""
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        mqtt_connect_rc(tls_broker.host, tls_broker.port, ssl_context=_client_context(pki, None))
    with pytest.raises((ConnectionError, OSError)):
        mqtt_connect_rc(tls_broker.host, tls_broker.port)
    # The same identity with its certificate is accepted (control).
    assert mqtt_connect_rc(tls_broker.host, tls_broker.port, ssl_context=_client_context(pki, "backend")) == 0
    log = tls_broker.log_text()
    assert "peer did not return a certificate" in log


def test_board_without_tls_config_cannot_reach_a_tls_broker(emu, tls_broker):
    board = emu.add_board("dev-plain", tls_broker.host, tls_broker.port, keepalive=KA, interval=1,
                          backoff={"base_ms": 200, "cap_ms": 1000})
    time.sleep(2.5)
    assert not _connected_as(tls_broker, "dev-plain")
    assert board.running and not board.halted


@pytest.mark.parametrize("variant", ["expired", "other-ca"])
def test_bad_client_certificate_is_refused_by_the_broker(emu, tls_broker, pki, tmp_path, variant):
    """An expired device certificate, or one from another CA, never gets online."""
    ca = certs.Pki(pki).load_ca()
    if variant == "expired":
        cert, key = _expired(ca, "dev-x")
    else:
        cert, key = certs.issue(certs.new_ca("rogue CA"), "dev-x")
    board = start_tls_board(emu, tls_broker, "dev-x", pki, files=certs.der_files(ca[0], cert, key))
    emu.call(board.start)
    time.sleep(2)
    assert not _connected_as(tls_broker, "dev-x")
    log = tls_broker.log_text()
    assert "certificate verify failed" in log, log[-2000:]  # Mosquitto logs both this way
    assert any("mqtt:" in line and "retry" in line for line in board.console_lines), board.console_lines
    assert board.running and not board.halted


# --- refused: the board side (server certificate verified) ---------------------------------


@pytest.mark.parametrize("variant", ["expired", "other-ca", "wrong-name"])
def test_board_refuses_a_bad_server_certificate(emu, broker_factory, pki, tmp_path, variant):
    """The board verifies the broker: expired, foreign-CA or wrong-name server
    certificates fail the handshake and the board never sends CONNECT."""
    ca = certs.Pki(pki).load_ca()
    if variant == "expired":
        cert, key = _expired(ca, "esp32emu broker", server=True, sans=certs.BROKER_SANS)
    elif variant == "other-ca":
        cert, key = certs.issue(certs.new_ca("rogue CA"), "esp32emu broker", server=True, sans=certs.BROKER_SANS)
    else:
        cert, key = certs.issue(ca, "esp32emu broker", server=True, sans=("wrong.example",))
    crt_path, key_path = tmp_path / "srv.crt", tmp_path / "srv.key"
    certs.write_pair(cert, key, crt_path, key_path)
    broker = broker_factory(tls=TlsConfig(certs.Pki(pki).ca_crt, crt_path, key_path))
    board = start_tls_board(emu, broker, "dev-x", pki)
    emu.call(board.start)
    time.sleep(2)
    assert not _connected_as(broker, "dev-x")
    failures = [line for line in board.console_lines if "failed" in line or "rejected" in line]
    # The link reports the failed handshake as OSError (a board: ValueError
    # with mbedTLS's reason); either way the firmware backs off and retries.
    assert failures, board.console_lines
    assert board.running and not board.halted
    handshakes = [c for c in board.modules.modules["tls"].contexts[-1].calls if c[0] == "handshake"]
    assert handshakes and handshakes[-1][1]["verify"] is True


def test_board_with_unset_clock_does_not_attempt_tls(emu, tls_broker, pki):
    """mbedTLS checks validity against the RTC: without NTP the board cannot verify."""
    board = start_tls_board(emu, tls_broker, "dev-x", pki, ntp=False)
    emu.call(board.start)
    time.sleep(2)
    assert not _connected_as(tls_broker, "dev-x")
    assert any("tls: clock not set" in line for line in board.console_lines), board.console_lines


def test_board_without_certificate_files_stays_offline(emu, tls_broker, pki):
    ca = certs.Pki(pki).load_ca()
    files = certs.der_files(ca[0], *certs.issue(ca, "dev-x"))
    del files[certs.BOARD_KEY]
    board = start_tls_board(emu, tls_broker, "dev-x", pki, files=files)
    emu.call(board.start)
    time.sleep(1.5)
    assert not _connected_as(tls_broker, "dev-x")
    assert any("tls: cannot read client.key" in line for line in board.console_lines), board.console_lines


# --- ACL: one device's certificate confined to its own topics --------------------------------


def _raw_tls_connect(broker, ctx, client_id, will=None) -> tuple[socket.socket, int]:
    """CONNECT (optionally with a QoS 1 retained Will) over TLS; return the socket and CONNACK code."""

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    flags = 0x02
    payload = s(client_id.encode())
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20
        payload += s(will[0].encode()) + s(will[1])
    body = s(b"MQTT") + bytes([4, flags]) + (30).to_bytes(2, "big") + payload
    raw = socket.create_connection((broker.host, broker.port), timeout=5)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    sock.sendall(bytes([0x10, len(body)]) + body)
    connack = sock.recv(4)
    return sock, connack[3]


def test_device_certificate_cannot_touch_another_devices_topics(emu, tls_broker, pki, tls_observer):
    """Board A's certificate cannot read B's commands or telemetry, nor write
    B's status (directly or as a Will); B keeps working."""
    backend = tls_observer(tls_broker, pki)
    backend.subscribe("devices/#")
    board_b = start_tls_board(emu, tls_broker, "dev-b", pki)
    emu.call(board_b.start)
    backend.wait_for(is_birth("dev-b"), 10)

    intruder = tls_observer(tls_broker, pki, identity="dev-a", client_id="dev-a-intruder")
    # Mosquitto 2.0.11 grants these SUBACKs but checks read access per message.
    intruder.subscribe("devices/dev-b/cmd")
    intruder.subscribe("devices/#")
    intruder.subscribe("devices/dev-a/#")
    intruder.publish("devices/dev-b/status", b'{"online": false, "forged": true}', qos=1, retain=True)
    intruder.publish("devices/dev-b/cmd/result", b'{"id": "x", "ok": true, "result": {}}', qos=1)
    intruder.publish("devices/dev-a/telemetry", b'{"seq": 0}', qos=1)  # its own: allowed (control)

    # A Will aimed at B's status: refused at CONNECT or never published.
    # (dev-x's certificate: the client id is the CN, dev-a's would replace the intruder)
    will_sock, rc = _raw_tls_connect(
        tls_broker, _client_context(pki, "dev-x"), "dev-x-will", will=("devices/dev-b/status", b'{"online":false}')
    )
    will_sock.close()  # no DISCONNECT: the Will would fire now

    backend.publish("devices/dev-b/cmd", json.dumps({"id": "c1", "op": "ping", "args": {}}))
    backend.wait_topic("devices/dev-b/cmd/result", 5)
    backend.wait_topic("devices/dev-a/telemetry", 5)
    time.sleep(1.5)

    seen_by_intruder = {m.topic for m in intruder.messages}
    assert seen_by_intruder == {"devices/dev-a/telemetry"}, seen_by_intruder
    forged = [m for m in backend.messages if m.topic.startswith("devices/dev-b/") and b"forged" in m.payload]
    assert not forged
    assert not [m for m in backend.messages if is_will("dev-b")(m)], "a Will reached B's status"
    results_b = [m.json() for m in backend.messages if m.topic == "devices/dev-b/cmd/result"]
    assert [r["id"] for r in results_b] == ["c1"]
    late = tls_observer(tls_broker, pki)
    late.subscribe("devices/dev-b/status")
    assert late.wait_topic("devices/dev-b/status", 5).json()["online"] is True
    assert rc in (0, 5)  # 2.0.11 accepts the CONNECT and drops the Will when it would fire


# --- nothing in plaintext ------------------------------------------------------------------


class WireRecorder:
    """A TCP relay between a board and the broker that keeps every byte that
    crosses the wire (both directions), i.e. what a sniffer on the LAN sees."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.data = {"up": bytearray(), "down": bytearray()}
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._socks += [client, server]
            threading.Thread(target=self._pump, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, "down"), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, direction: str) -> None:
        try:
            while chunk := src.recv(65536):
                with self._lock:
                    self.data[direction] += chunk
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def wire(self) -> bytes:
        with self._lock:
            return bytes(self.data["up"]) + b"\0" + bytes(self.data["down"])

    def close(self) -> None:
        self._server.close()
        for sock in self._socks:
            sock.close()


def test_nothing_crosses_the_wire_in_plaintext(emu, tls_broker, pki, tls_observer):
    """CONNECT (client id, Will topic and payload), birth, telemetry, commands
    and results: none of it is readable on the wire; the board-side tap (above
    TLS) shows the same traffic in clear, so the check would catch a leak."""
    backend = tls_observer(tls_broker, pki)
    backend.subscribe("devices/#")
    recorder = WireRecorder((tls_broker.host, tls_broker.port))
    try:
        board = start_tls_board(emu, tls_broker, "dev-p1", pki, port=recorder.port)
        tap = PacketTap(board)
        emu.call(board.start)
        backend.wait_for(is_birth("dev-p1"), 10)
        backend.wait_topic("devices/dev-p1/telemetry", 5)
        backend.publish("devices/dev-p1/cmd", json.dumps({"id": "secret-cmd", "op": "ping", "args": {}}))
        backend.wait_topic("devices/dev-p1/cmd/result", 5)
        emu.call(board.link.kill_connections)  # the broker sends the Will
        backend.wait_for(is_will("dev-p1"), 5)
        backend.wait_for(is_birth("dev-p1"), 10, start=len(backend.messages) - 1)  # reconnected (CONNECT + Will again)
        time.sleep(0.3)
    finally:
        recorder.close()

    plain = b"".join(data for _, data in tap.sent()) + b"".join(d for _, direction, d in tap.chunks if direction == "rx")
    wire = recorder.wire()
    secrets = [b"MQTT", b"dev-p1", b"devices/", b'{"online":false}', b'"online"', b"telemetry", b"secret-cmd", b"pong"]
    for secret in secrets[:-1]:
        assert secret in plain, f"sanity: {secret!r} should be visible above TLS"
    assert len(wire) > 1000
    leaked = [s for s in secrets if s in wire]
    assert not leaked, f"plaintext on the wire: {leaked}"
    assert wire[:1] == b"\x16"  # a TLS handshake record, not an MQTT CONNECT (0x10)


# --- the fake `tls`/`ssl` modules reject what a board rejects -----------------------------------


def _stub_board(tmp_path: Path, clock_set: bool = True):
    clock = BoardClock()
    if clock_set:
        clock.sync_rtc_to_host()
    events: list = []
    return SimpleNamespace(clock=clock, fs=FlashFS(tmp_path), log_event=lambda *a: events.append(a), events=events)


def test_fake_tls_follows_micropython_semantics(tmp_path, pki):
    board = _stub_board(tmp_path)
    tls = TlsModule(board)
    files = certs.board_files(pki, "dev-a")
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    assert ctx.verify_mode == CERT_REQUIRED  # native tls verifies by default
    with pytest.raises(TypeError, match="keyword"):
        ctx.load_verify_locations(cadata=files["ca.crt"])  # the native function takes no keywords
    with pytest.raises(OSError) as bad:
        ctx.load_verify_locations(b"not a certificate")
    assert bad.value.args[0] == -0x2800
    with pytest.raises(OSError) as bad_key:
        ctx.load_cert_chain(files["client.crt"], b"junk")
    assert bad_key.value.args[0] == -0x3E80
    with pytest.raises(OSError):
        ctx.load_cert_chain("client.crt", "client.key")  # a str is data for native tls, not a path
    ctx.load_verify_locations(files["ca.crt"])
    ctx.load_cert_chain(files["client.crt"], files["client.key"])
    host = ctx.host_context()
    assert host.verify_mode == ssl.CERT_REQUIRED and host.check_hostname

    # The ssl wrapper starts at CERT_NONE and reads paths from the board's flash.
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    sslmod = SslModule(board)
    wrapped = sslmod.SSLContext(sslmod.PROTOCOL_TLS_CLIENT)
    assert wrapped.verify_mode == CERT_NONE
    wrapped.load_verify_locations(cafile="/ca.crt")
    wrapped.load_cert_chain("client.crt", "/client.key")
    assert wrapped.host_context().verify_mode == ssl.CERT_NONE  # not asked to verify: it does not
    wrapped.verify_mode = sslmod.CERT_REQUIRED
    assert wrapped.host_context().verify_mode == ssl.CERT_REQUIRED


def test_fake_tls_cannot_verify_with_the_clock_in_2000(tmp_path, pki):
    board = _stub_board(tmp_path, clock_set=False)
    tls = TlsModule(board)
    files = certs.board_files(pki, "dev-a")
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(files["ca.crt"])
    with pytest.raises(ValueError, match="validity starts in the future"):
        ctx.host_context()
    ctx.verify_mode = CERT_NONE  # only if the firmware asks
    ctx.host_context()


def test_fake_tls_without_a_ca_fails_verification_against_the_broker(tmp_path, tls_broker, pki):
    """No CA bundle on a board: CERT_REQUIRED with no CA loaded cannot verify the broker."""
    tls = TlsModule(_stub_board(tmp_path))
    files = certs.board_files(pki, "dev-a")
    ctx = tls.SSLContext(tls.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(files["client.crt"], files["client.key"])
    with pytest.raises(ssl.SSLCertVerificationError):
        mqtt_connect_rc("localhost", tls_broker.port, ssl_context=ctx.host_context())
    ctx.load_verify_locations(files["ca.crt"])
    assert mqtt_connect_rc("localhost", tls_broker.port, client_id="dev-a", ssl_context=ctx.host_context()) == 0


def test_bind_client_id_stops_session_takeover(emu, broker_factory, pki, tls_observer):
    """Optional hardening: with `use_username_as_clientid`, A's certificate
    connecting with B's client id does not disconnect B."""
    broker = broker_factory(tls=TlsConfig.from_pki(pki, bind_client_id=True))
    backend = tls_observer(broker, pki)
    backend.subscribe("devices/dev-b/status")
    board_b = start_tls_board(emu, broker, "dev-b", pki)
    emu.call(board_b.start)
    backend.wait_for(is_birth("dev-b"), 10)
    sock, rc = _raw_tls_connect(broker, _client_context(pki, "dev-a"), "dev-b")
    try:
        assert rc == 0
        time.sleep(1.0)
        assert not [m for m in backend.messages if is_will("dev-b")(m)], "B was kicked off"
        assert "as dev-a (" in broker.log_text()  # renamed to its certificate's CN
    finally:
        sock.close()
