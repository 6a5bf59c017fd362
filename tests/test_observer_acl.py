"""The fleet observer (`watch`, `fleet`) over a mutual-TLS broker with the
project's ACL (issue 13, papercut 3): its flush marker lives under the
prefix, where the backend may write, so `watch`/`fleet` do not stall on it;
and a broker that denies a subscription or the marker's publish is
reported in one line instead of a silent timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.broker import certs
from emulator.broker.mosquitto import TlsConfig
from emulator.observe.counting import FleetObserver
from tests.scripted_broker import ScriptedServer, read_packet, serve_until_subscribe

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    certs.make_pki(root, ["dev-00001"])
    return root


def _tls_observer(broker, pki, **kw) -> FleetObserver:
    obs = FleetObserver(broker.host, broker.port, **kw)
    obs.use_tls(pki)
    return obs


def _acl_broker(broker_factory, pki, tmp_path, backend_lines: str):
    acl = tmp_path / "acl"
    acl.write_text("pattern readwrite devices/%u/#\n\nuser backend\n" + backend_lines)
    return broker_factory(tls=TlsConfig.from_pki(pki, acl_file=acl))


def test_flush_marker_round_trips_inside_the_projects_acl(broker_factory, pki):
    broker = broker_factory(tls=TlsConfig.from_pki(pki))  # the ACL `esp32emu broker --tls` writes
    warned: list[str] = []
    obs = _tls_observer(broker, pki, warn=warned.append).start(timeout=5)  # start() needs the round trip
    try:
        assert obs._flush_topic.startswith("devices/")
        assert obs.flush(timeout=5) is True
        assert warned == []
    finally:
        obs.stop()


def test_a_subscription_mosquitto_denies_fails_the_marker_round_trip(broker_factory, pki, tmp_path):
    # Mosquitto 2.0 grants it (SUBACK 1) and then delivers nothing: only the round trip tells.
    broker = _acl_broker(broker_factory, pki, tmp_path, "topic write devices/#\n")
    obs = _tls_observer(broker, pki)
    with pytest.raises(ConnectionError, match=r"^publish to devices/esp32emu-observer-\w+/flush denied or lost: "):
        obs.start(timeout=2)


def test_suback_0x80_is_one_line_naming_the_filter():
    # Brokers that do refuse subscriptions (SUBACK 0x80) -- Mosquitto's ACL does not (above), so a scripted one.
    def script(conn, server):
        pid = serve_until_subscribe(conn)
        conn.sendall(b"\x90\x06" + pid.to_bytes(2, "big") + bytes([1, 0x80, 1, 0]))
        while True:
            read_packet(conn)

    server = ScriptedServer(script)
    try:
        obs = FleetObserver("127.0.0.1", server.port)
        with pytest.raises(ConnectionError) as e:
            obs.start(timeout=5)
        assert str(e.value) == (f"subscribe to devices/+/telemetry denied by the broker at 127.0.0.1:{server.port} "
                                "(SUBACK 0x80)")
    finally:
        server.close()


def test_a_denied_marker_publish_is_reported_not_waited_on(broker_factory, pki, tmp_path):
    # May read everything, may write commands only: the marker's publish is
    # dropped by the broker, which (MQTT 3.1.1) gives no sign of it.
    broker = _acl_broker(broker_factory, pki, tmp_path, "topic read devices/#\ntopic write devices/+/cmd\n")
    obs = _tls_observer(broker, pki)
    with pytest.raises(ConnectionError) as e:
        obs.start(timeout=2)
    assert str(e.value).startswith(f"publish to {obs._flush_topic} denied or lost:"), e.value


def test_a_later_failed_flush_is_said_once_and_not_waited_on_again(broker, pki):
    warned: list[str] = []
    obs = FleetObserver(broker.host, broker.port, warn=warned.append).start(timeout=5)
    try:
        obs.client.unsubscribe(obs._flush_topic)  # from here on the marker never comes back
        obs.client.subscribe("devices/none/#")  # a round trip: the UNSUBSCRIBE has been handled
        assert obs.flush(timeout=1) is False
        assert len(warned) == 1 and warned[0].startswith(f"publish to {obs._flush_topic} denied or lost")
        assert obs.flush(timeout=30) is False  # returns at once: broken, said once
        assert len(warned) == 1
    finally:
        obs.stop()


def test_watch_over_mqtts_finishes_without_a_denied_or_lost_marker(broker_factory, pki, tmp_path):
    broker = broker_factory(tls=TlsConfig.from_pki(pki))
    r = subprocess.run(
        [sys.executable, "-m", "emulator", "watch", "--broker", f"mqtts://127.0.0.1:{broker.port}", "--once",
         "--duration", "1", "--certs", str(pki)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert "denied or lost" not in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_fleet_over_mqtts_counts_without_a_denied_or_lost_marker(broker_factory, pki, tmp_path):
    broker = broker_factory(tls=TlsConfig.from_pki(pki))
    report = tmp_path / "r.json"
    r = subprocess.run(
        [sys.executable, "-m", "emulator", "fleet", "--devices", "2", "--broker", f"mqtts://127.0.0.1:{broker.port}",
         "--interval", "1", "--keepalive", "5", "--duration", "4", "--quiet", "--certs", str(pki),
         "--report", str(report), "--state", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=90, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert "denied or lost" not in r.stderr, r.stderr
    data = json.loads(report.read_text())
    assert data["online_at_end"] == 2 and data["telemetry_received"] >= 2, data
