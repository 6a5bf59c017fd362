"""A socket error says what happened, on both backends (issue 13, papercut
6): a connection nothing accepts is "connection refused by host:port" (an
ESP32 raises ECONNRESET 104 for it, Linux ECONNREFUSED 111: before CONNACK
both mean refused), a reset of an established link is "connection reset";
never a bare "OSError 104". The CLI says it too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.broker.mosquitto import free_port

pytestmark = [pytest.mark.integration, pytest.mark.esp32emu(keepalive=2, interval=1)]

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("esp32emu_vm", ["cpython", "micropython"])
def test_reset_and_refusal_are_named_in_the_console(board, mosquitto, esp32emu_observer, esp32emu_vm):
    board.boot()
    esp32emu_observer.expect(board.topic("status"), {"online": True}, timeout=15)
    board.console.expect("mqtt: online", timeout=5)

    board.link.kill_connections(rst=True)
    line = board.console.expect("failed: ", timeout=10)
    assert line.endswith("failed: connection reset") or "failed: connection reset;" in line, line
    board.console.expect("mqtt: online", timeout=15)

    mosquitto.kill()
    line = board.console.expect("mqtt: connection refused by 127.0.0.1:", timeout=15)
    if esp32emu_vm == "cpython":  # a VM board connects through its link proxy's port
        assert f"connection refused by 127.0.0.1:{mosquitto.port};" in line, line
    assert "OSError" not in "\n".join(board.console.lines)


@pytest.mark.parametrize("vm", [[], ["--vm", "micropython"]], ids=["cpython", "micropython"])
def test_cli_run_names_a_refused_broker(tmp_path, vm):
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "emulator", "run", "--broker", f"mqtt://127.0.0.1:{port}", "--duration", "3",
         "--state", str(tmp_path), *vm],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert f"esp32emu: connection refused by 127.0.0.1:{port} (the board keeps retrying)" in r.stderr, r.stderr
    # the board's own line; a VM board connects through its link proxy, whose port it names
    shown = f"127.0.0.1:{port}" if not vm else "127.0.0.1:"
    assert f"mqtt: connection refused by {shown}" in r.stdout and "OSError" not in r.stdout, r.stdout


def test_cli_fleet_with_a_refused_broker_is_one_line(tmp_path):
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "emulator", "fleet", "--devices", "1", "--broker", f"mqtt://127.0.0.1:{port}",
         "--duration", "2", "--quiet", "--state", str(tmp_path)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1] == f"esp32emu: connection refused by 127.0.0.1:{port}", r.stderr
