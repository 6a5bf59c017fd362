"""The esp32emu pytest plugin (emulator/testing/plugin.py, emulator/testing/handles.py):
its helpers, and the README's example tests (examples/tests/) run the way a
user runs them — a fresh directory, no conftest, only the installed plugin —
against our firmware (they pass) and against a deliberately broken copy
(they fail, and say why)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from emulator.run.scenario import BOARD_ACTIONS
from emulator.testing.handles import BoardHandle, Console, LinkControls

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "tests"


# -- helpers without a broker ---------------------------------------------------------


def test_every_scenario_board_action_has_a_helper_of_the_same_name():
    """A scenario event can be promoted into a test (and back) name for name."""
    on_board = {"power_cycle", "reset", "shutdown", "hang", "sensor_fault", "power_loss"}
    on_link = set(BOARD_ACTIONS) - on_board - {"link"}
    assert on_board | on_link | {"link"} == set(BOARD_ACTIONS)
    for name in on_board:
        assert callable(getattr(BoardHandle, name)), name
    for name in on_link:
        assert callable(getattr(LinkControls, name)), name
    assert callable(LinkControls.__call__)  # board.link(profile="nb-iot")


def test_console_expect_consumes_in_order_and_fails_with_the_tail():
    console = Console()
    threading.Timer(0.05, console, ["mqtt: online at 127.0.0.1:1883"]).start()
    console("wifi: connecting")
    assert console.expect("wifi", timeout=2) == "wifi: connecting"
    assert console.expect("mqtt: online", timeout=2).endswith("1883")
    t0 = time.monotonic()
    with pytest.raises(AssertionError) as err:
        console.expect("wifi", timeout=0.2)  # already consumed: only new lines count
    assert time.monotonic() - t0 < 1
    text = str(err.value)
    assert "no line containing 'wifi' within 0.2 s" in text and "mqtt: online at" in text


# -- the fixtures, with a broker ----------------------------------------------------------


@pytest.mark.integration
@pytest.mark.esp32emu(keepalive=2)
def test_observer_expect_failure_says_what_was_expected_and_what_came(board, esp32emu_observer):
    obs = esp32emu_observer
    board.config["interval"] = 3600  # no telemetry: only the birth arrives
    board.boot()
    obs.expect(board.topic("status"), {"online": True}, timeout=10)
    assert board.flash["config.json"].count(b'"interval": 3600') == 1
    with pytest.raises(AssertionError) as err:
        obs.expect(board.topic("status"), {"online": False}, timeout=0.5, since=0)
    text = str(err.value)
    assert "expected a message on 'devices/dev-00001/status' with JSON containing {\"online\": false} within 0.5 s" in text
    assert 'retain=0 {"online":true,"fw"' in text  # what did arrive, with its time
    assert obs.collect("devices/+/status", count=1, since=0)[0].json()["boot"] == 1


@pytest.mark.integration
def test_tls_broker_boards_get_certificates_and_the_observer_the_backend_identity(mosquitto_tls, boards,
                                                                                   observer_factory):
    obs = observer_factory(mosquitto_tls)
    (tls_board,) = boards(1, broker=mosquitto_tls)
    assert set(tls_board.flash) >= {"ca.crt", "client.crt", "client.key", "config.json"}
    tls_board.boot()
    obs.expect(tls_board.topic("status"), {"online": True}, timeout=15)
    assert mosquitto_tls.url.startswith("mqtts://")


@pytest.mark.integration
def test_scenario_named_faults_act_on_the_board(board, esp32emu_observer):
    obs = esp32emu_observer
    board.boot()
    obs.expect(board.topic("status"), {"online": True}, timeout=10)
    board.link(profile="wifi-weak")
    board.link.blackhole(tx=False, duration=0.3)
    board.sensor_fault("bme280", "missing")
    obs.expect(board.topic("telemetry"), lambda m: m.json()["err"]["t"], timeout=5)
    log = "\n".join(board.link.log)
    assert "profile wifi-weak" in log and "blackhole rx=True tx=False" in log
    obs.expect(board.topic("telemetry"), timeout=5)  # healed after 0.3 s: still publishing


# -- the README examples, as a user runs them ----------------------------------------------


def _broken_firmware(dest: Path) -> Path:
    """Our firmware with two bugs: the Will says online, and arguments are not range-checked."""
    shutil.copytree(REPO / "firmware", dest)
    for name, old, new in [
        ("device.py", b"""b'{"online":false}', 1, True""", b"""b'{"online":true}', 1, True"""),
        ("commands.py", b"if not is_int(v) or v < lo or v > hi:", b"if not is_int(v):"),
    ]:
        source = (dest / name).read_bytes()
        assert source.count(old) == 1, f"{name} changed: update this test's sabotage"
        (dest / name).write_bytes(source.replace(old, new))
    return dest


def _run_examples(workdir: Path, *args: str) -> subprocess.Popen:
    """`pytest` in a directory holding only a copy of examples/tests and an empty ini."""
    workdir.mkdir()
    shutil.copytree(EXAMPLES, workdir / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    (workdir / "pytest.ini").write_text("[pytest]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "tests", "-n", "3", "-p", "no:cacheprovider", "-q", *args],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.integration
@pytest.mark.slow
def test_examples_pass_on_our_firmware_and_fail_readably_on_a_broken_copy(tmp_path):
    broken = _broken_firmware(tmp_path / "broken-firmware")
    good_run = _run_examples(tmp_path / "good")
    bad_run = _run_examples(tmp_path / "bad", "--firmware", str(broken))
    good_out, _ = good_run.communicate(timeout=90)
    bad_out, _ = bad_run.communicate(timeout=90)

    assert good_run.returncode == 0, good_out
    assert "3 passed" in good_out, good_out

    assert bad_run.returncode == 1, bad_out
    assert "2 failed, 1 passed" in bad_out, bad_out
    # The Will test names what it waited for and shows the wrong Will that came.
    assert ("expected a message on 'devices/dev-00001/status' with "
            "lambda m: m.json() == {\"online\": False} within") in bad_out, bad_out
    assert 'retain=0 {"online":true}' in bad_out, bad_out
    # The command test shows the result that should have been a refusal.
    assert "with JSON containing {\"id\": \"bad-range\", \"ok\": false} within 5 s" in bad_out, bad_out
    assert '{"id":"bad-range","ok":true,"result":{"interval":0}}' in bad_out, bad_out
    # Each failure report carries the board's console and link log and the observer's messages.
    assert bad_out.count("esp32emu board dev-00001") == 2, bad_out
    assert "mqtt: online at 127.0.0.1:" in bad_out and "abandoned 1 connection(s) half-open" in bad_out
    assert bad_out.count("esp32emu observer") == 2, bad_out
    assert "FAILED tests/test_broker_restart.py" not in bad_out
