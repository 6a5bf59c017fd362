"""The plugin's shared broker (`--esp32emu-broker-scope=session`, issue 13
papercut 2): each test's boards get a topic prefix of their own, so retained
births and late Wills of earlier tests never reach a later one, and the
default observer sees only its test's traffic. Run as a user runs it: a
fresh directory, only the installed plugin, one pytest session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "tests"

ISOLATION = '''
import pytest


@pytest.mark.esp32emu(keepalive=2)
def test_first_leaves_a_will_behind(board, observer, esp32emu_prefix):
    assert esp32emu_prefix == "devices-1"
    board.boot()
    observer.expect(board.topic("status"), {"online": True}, timeout=10)
    board.power_loss()  # its Will comes after this test is over


@pytest.mark.esp32emu(keepalive=2)
def test_second_sees_only_its_own_topics(board, mosquitto, observer, observer_factory, esp32emu_prefix):
    assert esp32emu_prefix == "devices-2"
    assert board.topic("status") == "devices-2/dev-00001/status"
    everything = observer_factory(mosquitto, subscribe="#")
    board.boot()
    birth = observer.expect(board.topic("status"), {"online": True}, timeout=10)
    assert birth.retain is False  # no retained birth of the first test's dev-00001 matched
    # The first test's Will arrives now, under its own prefix...
    everything.expect("devices-1/dev-00001/status", lambda m: m.json() == {"online": False},
                      timeout=board.will_deadline + 5, since=0)
    # ...and this test's observer never saw anything of it.
    assert {m.topic.split("/")[0] for m in observer.messages} == {"devices-2"}
'''


def _session_run(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    (workdir / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
         "--esp32emu-broker-scope=session", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )


def test_the_examples_pass_twice_in_one_session_on_one_broker(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    r = _session_run(tmp_path, "tests", "tests", "--keep-duplicates")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "6 passed" in r.stdout, r.stdout


def test_a_later_test_sees_neither_retained_messages_nor_wills_of_an_earlier_one(tmp_path):
    (tmp_path / "test_isolation.py").write_text(ISOLATION)
    r = _session_run(tmp_path, "test_isolation.py")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout, r.stdout
