"""The plugin's backend switch, used the way a user uses it: a fresh
directory with one test file and the installed plugin, the backend chosen
by `--esp32emu-vm` on the command line or `esp32emu_vm` in the ini (with
`esp32emu_heap`), the board on the real MicroPython interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

USER_TEST = '''\
def test_on_the_chosen_backend(board, esp32emu_observer):
    board.boot()
    birth = esp32emu_observer.expect(board.topic("status"), {"online": True}, timeout=20).json()
    assert birth["reset"] == "power_on"
    print("BACKEND", board.backend, board.board.heap if board.backend == "micropython" else "-")
'''


def _run(workdir: Path, ini: str, *args: str) -> subprocess.CompletedProcess:
    workdir.mkdir()
    (workdir / "test_user.py").write_text(USER_TEST)
    (workdir / "pytest.ini").write_text("[pytest]\n" + ini)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-q", "-s", "-n", "0",
         f"--firmware={REPO / 'firmware'}", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.mark.integration
def test_option_and_ini_choose_the_micropython_backend(tmp_path):
    by_option = _run(tmp_path / "option", "", "--esp32emu-vm", "micropython", "--esp32emu-heap", "150k")
    assert by_option.returncode == 0, by_option.stdout[-3000:]
    assert "BACKEND micropython 150k" in by_option.stdout
    by_ini = _run(tmp_path / "ini", "esp32emu_vm = micropython\nesp32emu_heap = 170k\n")
    assert by_ini.returncode == 0, by_ini.stdout[-3000:]
    assert "BACKEND micropython 170k" in by_ini.stdout
    default = _run(tmp_path / "default", "")
    assert default.returncode == 0, default.stdout[-3000:]
    assert "BACKEND cpython -" in default.stdout
