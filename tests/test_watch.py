"""`esp32emu watch`: the live table for any broker — a fleet's boards and a
device that is not ours (a paho client publishing its own status and
telemetry, with a gap in its seq)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.boards import is_birth

pytestmark = pytest.mark.integration

ESP32EMU = [sys.executable, "-m", "emulator"]
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _row(out: str, device: str) -> list[str]:
    for line in out.splitlines():
        if line.startswith(device + " "):
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no row for {device} in:\n{out}")


def test_watch_sees_a_fleet_and_a_foreign_device(tmp_path, broker, observer):
    obs = observer(broker)
    obs.subscribe("devices/+/status")
    fleet = subprocess.Popen(
        ESP32EMU
        + ["--state", str(tmp_path / "s"), "fleet", "--devices", "3", "--broker", broker.url]
        + ["--interval", "1", "--keepalive", "5", "--duration", "60", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    try:
        for i in (1, 2, 3):
            obs.wait_for(is_birth(f"dev-{i:05d}"), 20)
        # A device that is not ours: plain-text status, its own telemetry shape.
        obs.publish("devices/foreign-1/status", b"online", retain=True)

        once = subprocess.run(ESP32EMU + ["watch", "--broker", broker.url, "--once"], capture_output=True, text=True, timeout=30, env=ENV)
        assert once.returncode == 0, once.stderr
        for dev in ("dev-00001", "dev-00002", "dev-00003", "foreign-1"):
            assert _row(once.stdout, dev)[1] == "online"

        watch = subprocess.Popen(
            ESP32EMU + ["watch", "--broker", broker.url, "--duration", "4", "--plain"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert "watching" in watch.stderr.readline()  # subscribed: from here on it sees everything
        for seq in (0, 1, 3):  # seq 2 never arrives
            obs.publish("devices/foreign-1/telemetry", json.dumps({"seq": seq, "temp": 20.5}).encode())
        out, err = watch.communicate(timeout=30)
        assert watch.returncode == 0, err
        foreign = _row(out, "foreign-1")
        assert foreign[1] == "online" and foreign[3:5] == ["3", "1"], foreign  # received 3, lost 1
        for dev in ("dev-00001", "dev-00002", "dev-00003"):
            row = _row(out, dev)
            assert row[1] == "online" and int(row[3]) >= 2 and row[4] == "0", row
    finally:
        fleet.terminate()
        fleet.wait(30)


def test_watch_unreachable_broker_says_so(tmp_path):
    from emulator.broker import free_port

    port = free_port()
    r = subprocess.run(
        ESP32EMU + ["watch", "--broker", f"mqtt://127.0.0.1:{port}", "--once"], capture_output=True, text=True, timeout=30, env=ENV
    )
    assert r.returncode == 1
    assert f"connection refused by 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr
