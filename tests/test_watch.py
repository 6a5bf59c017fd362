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

from emulator.observe.counting import DeviceView
from emulator.observe.watch import DEVICE_COLUMNS, device_rows, plain_device_lines
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

        # --once waits for the retained statuses and one telemetry round: every
        # online device has sent telemetry (the foreign one once we publish it).
        once = subprocess.Popen(ESP32EMU + ["watch", "--broker", broker.url, "--once"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=ENV)
        assert "watching" in once.stderr.readline()
        obs.publish("devices/foreign-1/telemetry", json.dumps({"seq": 7}).encode())
        out, err = once.communicate(timeout=30)
        assert once.returncode == 0, err
        for dev in ("dev-00001", "dev-00002", "dev-00003", "foreign-1"):
            row = _row(out, dev)
            assert row[1] == "online" and row[2] != "-" and int(row[3]) >= 1, row

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
    from emulator.broker.mosquitto import free_port

    port = free_port()
    r = subprocess.run(
        ESP32EMU + ["watch", "--broker", f"mqtt://127.0.0.1:{port}", "--once"], capture_output=True, text=True, timeout=30, env=ENV
    )
    assert r.returncode == 1
    assert f"connection refused by 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr


def _view(**kw) -> DeviceView:
    return DeviceView(**kw)


def test_plain_table_columns_line_up_under_their_headers():
    now = 1000.0
    views = {
        "a-very-long-device-id-0001": _view(state="offline", reason="shutdown", received=123456, births=3,
                                            last_telemetry_at=now - 2.5, offline_since=now - 1),
        "d2": _view(state="will", received=7, wills=12, inferred_sent=9, seq_received=7, offline_since=now - 5),
        "d3": _view(state="online", births=1),
    }
    header, *rows = plain_device_lines(views, now)
    starts, ends, pos = [], [], 0
    for col in DEVICE_COLUMNS:
        pos = header.index(col, pos)
        starts.append(pos)
        ends.append(pos + len(col))
        pos += len(col)
    assert len(rows) == 3
    for line, cells in zip(rows, device_rows(views, now)):
        pos = 0
        for i, cell in enumerate(cells):
            pos = line.index(cell, pos)
            if i < 2:  # device, status: left-aligned with the header
                assert pos == starts[i], (line, cell, starts[i])
            else:  # figures: right-aligned under the header
                assert pos + len(cell) == ends[i], (line, cell, ends[i])
            pos += len(cell)


@pytest.mark.mosquitto
def test_watch_once_with_a_device_that_never_sends_telemetry_says_so(broker, observer, monkeypatch, capsys):
    from emulator.observe import watch
    obs = observer(broker)
    obs.publish("devices/quiet-1/status", b"online", retain=True)
    monkeypatch.setattr(watch, "ONCE_WAIT_S", 1.0)
    assert watch.run_watch(broker.url, once=True) == 0
    out, err = capsys.readouterr()
    assert _row(out, "quiet-1")[1:4] == ["online", "-", "0"]
    assert "no telemetry within 1 s from 1 online device(s) (quiet-1); --duration S waits longer" in err


def test_a_birth_that_comes_after_its_first_telemetry_is_no_loss():
    """The observer gets a QoS 1 birth later than the QoS 0 telemetry behind it
    when its in-flight window is full (a busy observer at boot time): the
    count must not see a gap, while a real gap still counts."""
    from emulator.observe.counting import FleetObserver

    obs = FleetObserver("127.0.0.1", 1)

    def lost(events) -> int:
        view = DeviceView()
        for kind, value in events:
            if kind == "seq":
                obs._telemetry(view, {"seq": value}, 1.0, 1.0)
            else:
                obs._status(view, {"online": True, "boot": value}, False, 1.0, 1.0)
        return view.lost

    assert lost([("seq", 0), ("birth", 3), ("seq", 1), ("seq", 2)]) == 0
    assert lost([("birth", 3), ("seq", 0), ("seq", 1), ("seq", 0), ("birth", 4), ("seq", 1)]) == 0  # after a reboot
    assert lost([("seq", 0), ("birth", 3), ("seq", 2)]) == 1
