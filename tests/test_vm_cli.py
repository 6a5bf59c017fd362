"""`esp32emu run --vm micropython [--heap]` as a user runs it: one board on
the real interpreter against a private Mosquitto, its console on stdout,
Ctrl-C/--duration ending in a planned offline; bad --heap/--vm are usage
errors (exit 2, one line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ESP32EMU = [sys.executable, "-m", "emulator"]


def _run(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ESP32EMU, "--state", str(tmp_path / "state"), "run", *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.integration
def test_run_vm_boots_on_the_interpreter_and_shuts_down_planned(tmp_path):
    r = _run(tmp_path, "--vm", "micropython", "--heap", "100k", "--keepalive", "5", "--interval", "1",
             "--duration", "4")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert any(line.startswith("esp32emu fw") and "reset power_on" in line for line in lines), r.stdout
    assert any(line.startswith("mqtt: online at 127.0.0.1:") for line in lines), r.stdout
    assert "mqtt: offline (shutdown)" in lines, r.stdout
    assert (tmp_path / "state" / "vm-boards" / "dev-00001" / "flash" / "app.mpy").is_file()


@pytest.mark.parametrize("args,message", [
    (["--heap", "160k"], "--heap needs --vm micropython"),
    (["--vm", "micropython", "--heap", "lots"], "heap must look like 100k"),
    (["--vm", "cpython3"], "invalid choice"),
])
def test_run_vm_usage_errors(tmp_path, args, message):
    r = _run(tmp_path, "--broker", "mqtt://127.0.0.1:1", *args, timeout=20)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
