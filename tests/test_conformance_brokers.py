"""Issue 19: `esp32emu conformance` against three brokers from the package
registries -- Mosquitto (apt; with persistence and a graceful `--restart-cmd`),
amqtt 0.12.1 (PyPI, its own venv) and aedes 1.2.0 (npm) -- plus Mosquitto
with mutual TLS and the client id bound to the certificate, and three brokers
that misbehave: one that accepts TCP and never answers, one that refuses
every CONNECT, one that refuses the devices only. The seven runs go at once
(subprocesses of the real command, KA=2 s: about 17 s), and each table is pinned here: which behaviours pass,
which fail and why (the broker's own words when it refused). A broker that
changes behaviour changes its table; a misbehaving one fails rows, never
crashes or hangs the command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from emulator.broker.mosquitto import Broker, TlsConfig
from tests.other_brokers import REPO, start_aedes, start_amqtt

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto, pytest.mark.slow]

KA = 2
ALL_PASS = {
    "connect_will": "pass",
    "birth_retained": "pass",
    "will_keepalive": "pass",
    "will_reset": "pass",
    "will_retained": "pass",
    "no_will_disconnect": "pass",
    "will_takeover": "pass",
    "restart_retained": "n.a.",  # no --restart-cmd (the Mosquitto run has one)
    "qos1_session": "n.a.",  # the firmware's clean session
    "keepalive_limits": "pass",
    "command_1k": "pass",
    "telemetry_64k": "pass",
}
# broker -> (its table, exit code, the failing rows' reasons as substrings of `detail`)
ALL_FAIL = {key: "fail" for key in ALL_PASS}
PINNED = {
    "mosquitto": ({**ALL_PASS, "restart_retained": "pass"}, 0, {}),
    "mosquitto-tls": (ALL_PASS, 0, {}),
    "aedes": (ALL_PASS, 0, {}),
    # amqtt 0.12.1 never enforces keepalive (a frozen device stays online for
    # good) and drops a taken-over connection without its Will.
    "amqtt": ({**ALL_PASS, "will_keepalive": "fail", "will_takeover": "fail"}, 1, {
        "will_keepalive": "does not enforce keepalive",
        "will_takeover": "no Will for the taken-over connection",
    }),
    "silent": (ALL_FAIL, 1, {"connect_will": "did not accept the observer within 10 s"}),
    "refusing": (ALL_FAIL, 1, {"connect_will": "refused the observer: Not authorized"}),
    # Lets the observer in but refuses every device (client ids cf-*): the device's and a raw CONNECT's words.
    "refusing-devices": ({**ALL_FAIL, "restart_retained": "n.a.", "qos1_session": "n.a."}, 1, {
        "connect_will": "the device says: mqtt: broker refused CONNECT: not authorized (code 5); a raw CONNECT "
                        "with the same Will got CONNACK 5 (not authorized)",
        "will_keepalive": "the device never came online: mqtt: broker refused CONNECT: not authorized (code 5)",
        "keepalive_limits": "KA=2: CONNACK 5 (not authorized)",
    }),
}


class Silent:
    """Accepts TCP connections and never says a word (a hung broker)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = "127.0.0.1", self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                return

    def stop(self) -> None:
        self.server.close()
        for sock in self.held:
            sock.close()


class Restartable:
    """tests/restartable_broker.py: Mosquitto with persistence, restarted by `kill -USR1`."""

    def __init__(self, workdir: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "restartable_broker.py"), str(workdir)],
                                     stdout=subprocess.PIPE, text=True, cwd=REPO)
        line = self.proc.stdout.readline()  # EOF (and a failure below) if it died
        assert line.startswith("port "), f"restartable broker did not start: {line!r}"
        self.host, self.port = "127.0.0.1", int(line.split()[1])
        self.restart_cmd = f"kill -USR1 {self.proc.pid}"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stdout.close()


@pytest.fixture
def brokers(tmp_path: Path, esp32emu_pki: Path):
    started: dict = {}
    try:
        started["mosquitto"] = Restartable(tmp_path / "mosquitto")
        started["mosquitto-tls"] = Broker(tmp_path / "mosquitto-tls", tls=TlsConfig.from_pki(esp32emu_pki)).start()
        started["amqtt"] = start_amqtt(tmp_path)
        started["aedes"] = start_aedes(tmp_path)
        started["silent"] = Silent()
        started["refusing"] = Broker(tmp_path / "refusing", users={"someone": "secret"}).start()
        started["refusing-devices"] = Broker(tmp_path / "refusing-devices",
                                             extra_config=["clientid_prefixes backend-"]).start()
        yield started
    finally:
        for broker in started.values():
            broker.stop()


def test_conformance_tables_of_three_brokers_and_three_that_misbehave(brokers, tmp_path, esp32emu_pki):
    runs = {}
    for name, broker in brokers.items():
        report = tmp_path / f"{name}.json"
        argv = [sys.executable, "-m", "emulator", "conformance", "--broker", broker.url, "--keepalive", str(KA),
                "--report", str(report), "--certs", str(esp32emu_pki)]
        if isinstance(broker, Restartable):
            argv += ["--restart-cmd", broker.restart_cmd]
        runs[name] = (report, subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                               text=True, env={**os.environ, "PYTHONPATH": str(REPO)}))
    outputs = {}
    try:
        for name, (report, proc) in runs.items():
            out, err = proc.communicate(timeout=120)  # a run has deadlines everywhere: ~15 s
            outputs[name] = (proc.returncode, out, err, report)
    finally:
        for _, proc in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    for name, (rc, out, err, report) in outputs.items():
        table, code, reasons = PINNED[name]
        assert "Traceback" not in err, f"{name}:\n{err}"
        data = json.loads(report.read_text())
        got = {row["key"]: row["status"] for row in data["rows"]}
        assert got == table, f"{name}:\n{out}"
        assert rc == code, f"{name}: exit {rc}\n{out}\n{err}"
        for key, reason in reasons.items():
            row = next(r for r in data["rows"] if r["key"] == key)
            assert reason in row["detail"], f"{name} {key}: {row}"
        for row in data["rows"]:  # the table shows every row with its result
            assert f"{row['behaviour']}" in out and row["status"] in out
        assert data["keepalive"] == KA and data["passed"] is (code == 0)
        assert data["duration_s"] < 60, f"{name}: {data['duration_s']} s"
    # Measured against the bounds: Mosquitto's Will after floor(1.5*KA)+7 at the latest.
    mosq = json.loads(outputs["mosquitto"][3].read_text())
    will = next(r for r in mosq["rows"] if r["key"] == "will_keepalive")
    assert 1.5 * KA - 0.5 <= will["seconds"] <= int(1.5 * KA) + 7
