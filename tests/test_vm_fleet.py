"""`esp32emu fleet --vm micropython` as a user runs it: every board one
process of the real MicroPython interpreter on the fleet's boot schedule,
counted by the fleet's own observer (the report) and by an observer of the
test's (births with `fw`, the planned offline at the end); scenario board
actions on VM boards; what the VM backend cannot do refused at load time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.board.vm.interpreter import DEFAULT_HEAP

ESP32EMU = [sys.executable, "-m", "emulator"]
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
HEAP = DEFAULT_HEAP  # 100k, an ESP32 without PSRAM


def _fleet(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ESP32EMU, "--state", str(tmp_path / "state"), "fleet", *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, check=False)


def _shutdowns(obs, ids: list[str], timeout: float = 10) -> None:
    for did in ids:
        obs.wait_for(lambda m, d=did: m.topic == f"devices/{d}/status" and m.json().get("reason") == "shutdown", timeout)


@pytest.mark.integration
def test_five_vm_boards_come_online_publish_and_answer(tmp_path, broker, observer):
    obs = observer(broker)
    obs.subscribe("devices/+/status")
    report = tmp_path / "r.json"
    r = _fleet(tmp_path, "--devices", "5", "--vm", "micropython", "--heap", HEAP, "--broker", broker.url,
               "--interval", "1", "--keepalive", "5", "--duration", "10", "--report", str(report), "--quiet")
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["vm"] == "micropython" and data["heap"] == HEAP and data["devices"] == 5
    assert data["online_at_end"] == 5 and data["all_online_s"] is not None
    assert data["telemetry_received"] >= 5 * 5 and data["telemetry_lost"] == 0
    assert data["lwt_seen"] == 0 and data["reconnects"] == 0
    assert data["commands_ok"] == data["commands_sent"] > 0
    # The interpreter processes are measured and part of rss_mb.
    assert data["vm_rss_per_board_kb"] > data["vm_anon_per_board_kb"] > 1024
    assert 0 < data["vm_cpu_s"] <= data["cpu_s"]
    assert data["rss_mb"] * 1024 > 5 * data["vm_rss_per_board_kb"]
    ids = [f"dev-{i:05d}" for i in range(1, 6)]
    births = [m for m in obs.messages if m.json().get("online") is True]
    assert sorted(m.topic.split("/")[1] for m in births) == ids
    assert all(m.json()["fw"] and m.json()["reset"] == "power_on" for m in births)
    _shutdowns(obs, ids)  # --duration ends with a planned offline, not Wills
    # Each board ran from its own flash, deployed as `flash --mpy` does.
    assert all((tmp_path / "state" / "vm-boards" / d / "flash" / "app.mpy").is_file() for d in ids)


@pytest.mark.integration
def test_a_power_cycle_in_a_scenario_gives_a_will_and_a_rebirth(tmp_path, broker, observer):
    obs = observer(broker)
    obs.subscribe("devices/+/status")
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[event]]\nat = 3\nselect = "ids:dev-00002"\naction = "power_cycle"\noff_s = 0.5\n')
    report = tmp_path / "r.json"
    r = _fleet(tmp_path, "--devices", "3", "--vm", "micropython", "--heap", HEAP, "--broker", broker.url,
               "--interval", "1", "--keepalive", "5", "--duration", "8", "--scenario", str(scenario),
               "--report", str(report), "--quiet")
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    # Power loss: no DISCONNECT, so the broker sends the Will when the new
    # boot's CONNECT takes the old session over; then the new boot's birth.
    assert data["lwt_seen"] == 1 and data["reconnects"] == 1, data
    assert data["online_at_end"] == 3
    status = [m for m in obs.messages if m.topic == "devices/dev-00002/status"]
    kinds = [("will" if m.json() == {"online": False} else "birth" if m.json()["online"] else "off") for m in status]
    assert kinds[:3] == ["birth", "will", "birth"], kinds
    first, again = status[0].json(), status[2].json()
    assert again["boot"] == first["boot"] + 1 and again["reset"] == "power_on"
    _shutdowns(obs, ["dev-00001", "dev-00002", "dev-00003"])


@pytest.mark.integration
def test_ctrl_c_in_a_terminal_takes_every_vm_board_offline_as_planned(tmp_path, broker, observer):
    """Ctrl-C sends SIGINT to the whole foreground process group: the
    interpreters must not get it (they would die with a Will), the fleet does
    and presses every board's BOOT button."""
    obs = observer(broker)
    obs.subscribe("devices/+/status")
    obs.subscribe("devices/+/telemetry")
    proc = subprocess.Popen([*ESP32EMU, "--state", str(tmp_path / "state"), "fleet", "--devices", "2", "--vm", "micropython",
                             "--heap", HEAP, "--broker", broker.url, "--interval", "1", "--keepalive", "5", "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, start_new_session=True)
    try:
        for did in ("dev-00001", "dev-00002"):
            obs.wait_for(lambda m, d=did: m.topic == f"devices/{d}/status" and m.json().get("online") is True, 20)
        # A telemetry message after each birth: the fleet's own observer, which
        # `online_at_end` comes from, has had the births too (not only ours).
        for did in ("dev-00001", "dev-00002"):
            obs.wait_for(lambda m, d=did: m.topic == f"devices/{d}/telemetry", 20)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the fleet and every process in its group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err
    _shutdowns(obs, ["dev-00001", "dev-00002"])
    assert json.loads(out.splitlines()[-1])["online_at_end"] == 2


@pytest.mark.parametrize("event,named", [
    ('action = "dns_fail"\nduration = 2', "'dns_fail' is not supported on the micropython backend"),
    ('action = "link"\nprofile = { base = "wifi-good", connect_refuse_rate = 0.5 }',
     "'link' is not supported on the micropython backend: link profile connect_refuse_rate"),
])
def test_an_action_the_vm_backend_cannot_do_is_refused_at_load_time(tmp_path, event, named):
    scenario = tmp_path / "s.toml"
    scenario.write_text(f"[[event]]\nat = 1\n{event}\n")
    r = _fleet(tmp_path, "--devices", "2", "--vm", "micropython", "--heap", HEAP, "--broker", "mqtt://127.0.0.1:1",
               "--scenario", str(scenario), "--duration", "5", timeout=20)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and f"{scenario}:1:" in lines[0], r.stderr
    assert not (tmp_path / "state" / "vm-boards").exists()  # nothing was booted
    # The same file is fine for CPython boards: only the backend refuses it.
    from emulator.run.scenario import load_scenario

    load_scenario(scenario, private_broker=False, backend="cpython")


def test_run_refuses_the_same_actions_at_load_time(tmp_path):
    scenario = tmp_path / "s.toml"
    scenario.write_text('[[event]]\nat = 1\naction = "dns_fail"\n')
    r = subprocess.run([*ESP32EMU, "--state", str(tmp_path / "state"), "run", "--vm", "micropython", "--heap", HEAP,
                        "--broker", "mqtt://127.0.0.1:1", "--scenario", str(scenario)],
                       capture_output=True, text=True, timeout=20, env=ENV, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "'dns_fail' is not supported on the micropython backend" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--devices", "99999", "--vm", "micropython"], "VM boards need about"),
    (["--devices", "2", "--heap", "160k"], "--heap needs --vm micropython"),
    (["--devices", "2", "--vm", "micropython", "--heap", "lots"], "heap must look like 100k"),
])
def test_vm_fleet_usage_errors(tmp_path, args, message):
    r = _fleet(tmp_path, "--broker", "mqtt://127.0.0.1:1", *args, timeout=20)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.stderr


def test_vm_capacity_warns_when_the_boards_need_more_cpu_than_the_machine_has(monkeypatch, capsys):
    from emulator.fleet import run as fleet
    monkeypatch.setattr(fleet.os, "cpu_count", lambda: 1)
    monkeypatch.setattr(fleet, "mem_available_kb", lambda: None)
    fleet.check_vm_capacity(100, "100k", interval=10)  # 100 x 0.09 % = 9 % of the one core
    assert capsys.readouterr().err == ""
    fleet.check_vm_capacity(400, "100k", interval=1)  # 400 x 0.38 % = 1.5 cores
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "400 VM boards need about 1.5 cores (0.38 % each)" in err, err
