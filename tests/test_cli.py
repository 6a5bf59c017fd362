"""The `esp32emu` command line as a user runs it: a real process, a real
Mosquitto, a paho-mqtt observer. Includes the foundation issue's acceptance
run (SIGSTOP the whole emulator, Will, SIGCONT, back online)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.boards import is_birth, is_will

pytestmark = pytest.mark.integration

ESP32EMU = [sys.executable, "-m", "emulator"]
REPO = Path(__file__).resolve().parent.parent


class Proc:
    """A CLI process whose output lines are collected by reader threads."""

    def __init__(self, args: list[str], cwd: Path):
        self.p = subprocess.Popen(
            ESP32EMU + args,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: list[tuple[str, str]] = []
        for name, stream in (("out", self.p.stdout), ("err", self.p.stderr)):
            threading.Thread(target=self._pump, args=(name, stream), daemon=True).start()

    def _pump(self, name: str, stream) -> None:
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def wait_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            for _, line in self.seen:
                m = re.search(pattern, line)
                if m:
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got: {self.seen[-20:]}")
            try:
                self.seen.append(self.lines.get(timeout=left))
            except queue.Empty:
                pass

    def stop(self, timeout: float = 15) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGCONT)
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        return self.p.returncode


@pytest.fixture
def cli(tmp_path):
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        proc = Proc(["--state", str(tmp_path / "state"), *args], tmp_path)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def ping(obs, device: str, cmd_id: str) -> dict:
    mark = len(obs.messages)
    t0 = time.monotonic()
    obs.publish(f"devices/{device}/cmd", json.dumps({"id": cmd_id, "op": "ping"}))
    res = obs.wait_for(lambda m: m.topic.endswith("cmd/result") and m.json().get("id") == cmd_id, 5, start=mark)
    return {"rtt": res.t - t0, **res.json()}


def test_run_acceptance_with_sigstop(cli, broker, observer):
    ka = 2
    obs = observer(broker)
    obs.subscribe("devices/X/#")
    proc = cli("run", "--broker", broker.url, "--id", "X", "--keepalive", str(ka), "--interval", "1")
    birth = obs.wait_for(is_birth("X"), 15).json()
    assert birth["fw"] and birth["boot"] >= 1 and birth["reset"] == "power_on" and birth["ip"]
    tele = [obs.wait_for(lambda m, s=s: m.topic == "devices/X/telemetry" and m.json()["seq"] == s, 5) for s in (0, 1, 2)]
    rate = (tele[2].t - tele[0].t) / 2
    assert 0.8 <= rate <= 1.3, f"telemetry every {rate:.2f} s"
    assert ping(obs, "X", "p1")["rtt"] < 0.5
    mark = len(obs.messages)
    obs.publish("devices/X/cmd", b"{malformed")
    bad = obs.wait_for(lambda m: m.topic == "devices/X/cmd/result", 5, start=mark).json()
    assert bad["ok"] is False and bad["error"]
    seq = obs.wait_for(lambda m: m.topic == "devices/X/telemetry", 3, start=mark).json()["seq"]
    obs.wait_for(lambda m: m.topic == "devices/X/telemetry" and m.json()["seq"] == seq + 1, 3, start=mark)
    # The console went to stdout.
    proc.wait_line(r"mqtt: online at 127\.0\.0\.1", 5)

    mark = len(obs.messages)
    t_stop = time.monotonic()
    proc.p.send_signal(signal.SIGSTOP)
    will = obs.wait_for(is_will("X"), int(1.5 * ka) + 7 + 2, start=mark)
    assert will.t - t_stop <= int(1.5 * ka) + 7
    mark = len(obs.messages)
    proc.p.send_signal(signal.SIGCONT)
    obs.wait_for(is_birth("X"), 15, start=mark)
    assert ping(obs, "X", "p2")["ok"] is True
    assert proc.stop() == 0


def test_run_without_broker_starts_its_own(cli, observer):
    proc = cli("run", "--id", "solo", "--keepalive", "5", "--interval", "1")
    m = proc.wait_line(r"started a private Mosquitto at mqtt://127\.0\.0\.1:(\d+)", 15)
    port = int(m.group(1))

    class Where:
        host = "127.0.0.1"

    Where.port = port
    obs = observer(Where)
    obs.subscribe("devices/solo/status")
    obs.wait_for(is_birth("solo"), 15)
    assert proc.stop() == 0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["run", "--broker", "http://127.0.0.1:1"], "mqtt://host:port"),
        (["run", "--keepalive", "1"], "--keepalive"),
        (["run", "--interval", "0"], "--interval"),
        (["fleet", "--devices", "0"], "--devices"),
        (["fleet"], "--devices"),
        (["nonsense"], "invalid choice"),
    ],
)
def test_bad_usage_exits_2_with_one_line(tmp_path, args, needle):
    r = subprocess.run(
        ESP32EMU + ["--state", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2, r
    lines = [line for line in r.stderr.splitlines() if line.startswith("esp32emu:")]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_fleet_report(tmp_path, broker):
    report = tmp_path / "r.json"
    r = subprocess.run(
        ESP32EMU
        + ["--state", str(tmp_path / "s"), "fleet", "--devices", "5", "--broker", broker.url]
        + ["--interval", "1", "--keepalive", "5", "--duration", "5", "--report", str(report), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    for key in (
        "devices duration_s online_at_end telemetry_sent telemetry_received telemetry_lost reconnects "
        "lwt_seen commands_sent commands_ok cmd_rtt_ms rss_mb cpu_s"
    ).split():
        assert key in data, key
    assert data["devices"] == 5 and data["online_at_end"] == 5
    assert data["telemetry_received"] >= 5 * 3 and data["telemetry_lost"] == 0
    assert data["lwt_seen"] == 0
    assert data["commands_ok"] == data["commands_sent"] > 0
    assert data["cmd_rtt_ms"]["p50"] is not None
    # the boards in this process: their CPU is the process's less the observer's thread
    steady = data["steady"]
    assert steady is not None and 0 < steady["boards_cpu_s_per_1000_msgs"] < steady["cpu_s_per_1000_msgs"]
