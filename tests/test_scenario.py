"""Scenario files: strict parsing with errors that name the line, selectors,
and a timeline run against emulated boards and a real Mosquitto."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.run import scenario
from tests.boards import is_birth

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "examples" / "scenarios").glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_parse(path):
    sc = scenario.load(path)
    assert sc.events and sc.events == sorted(sc.events, key=lambda e: e.at)


BAD = [
    ("[[event]]\nat = 1\naction = \"explode\"\n", 3, "unknown board action 'explode'"),
    ("[[event]]\nat = 1\naction = \"kill\"\ntarget = \"broker\"\n\n[[event]]\nat = -2\naction = \"reset\"\n", 7, "'at'"),
    ("[[event]]\nat = 1\naction = \"blackhole\"\nduration = \"long\"\n", 4, "'duration'"),
    ("[[event]]\nat = 1\naction = \"reset\"\nselect = \"group:west\"\n", 4, "unknown group 'west'"),
    ("[[event]]\nat = 1\naction = \"reset\"\nselect = \"fraction:2\"\n", 4, "fraction"),
    ("[[event]]\nat = 1\naction = \"reset\"\noff_s = 3\n", 4, "takes no 'off_s'"),
    ("[[event]]\nat = 1\ntarget = \"broker\"\naction = \"melt\"\n", 4, "unknown broker action"),
    ("colour = 3\n[[event]]\nat = 1\naction = \"reset\"\n", 1, "unknown top-level key 'colour'"),
    ("seed = 1\n", 1, "no [[event]]"),
    ("[[event]\nat = 1\n", 1, "not valid TOML"),
    # OTA faults (issue 18; tests/test_ota_scenario.py runs them against a board)
    ('[[event]]\nat = 0\naction = "power_loss"\n', 1, "power_loss needs during"),
    ('[[event]]\nat = 0\naction = "power_loss"\nduring = "boot"\n', 4, "power_loss needs during"),
    ('[[event]]\nat = 0\naction = "power_loss"\nduring = "download"\nafter_bytes = 0\n', 5, "'after_bytes' must be a positive"),
    ('[[event]]\nat = 0\ntarget = "release"\naction = "melt"\n', 4, "unknown release action 'melt'"),
    ('[[event]]\nat = 0\ntarget = "release"\naction = "drop"\n', 1, "release drop needs after"),
    ('[[event]]\nat = 0\ntarget = "release"\naction = "rate"\nafter = 0\n', 5, "release rate needs after = an integer >= 1"),
    ('[[event]]\nat = 0\ntarget = "release"\naction = "drop"\nafter = 5\ntimes = -1\n', 6, "times must be"),
    ('[[event]]\nat = 0\ntarget = "release"\naction = "drop"\nafter = 5\nselect = "all"\n', 6, "release events take no 'select'"),
]


@pytest.mark.parametrize("text,line,needle", BAD, ids=[b[2] for b in BAD])
def test_bad_scenarios_name_the_line(tmp_path, text, line, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(path)
    msg = str(e.value)
    assert needle in msg, msg
    assert "\n" not in msg
    if "not valid TOML" not in needle:
        assert msg.startswith(f"{path}:{line}: "), msg
    else:
        assert "line 1" in msg


class FakeBoard:
    def __init__(self, i):
        self.id = f"dev-{i:05d}"


def test_selectors_are_seeded_and_exact():
    boards = [FakeBoard(i) for i in range(1, 21)]
    groups = {"east": ["dev-00001", "dev-00003"], "half": "fraction:0.5"}
    pick = lambda sel, seed=0: [b.id for b in scenario.select_boards(sel, boards, groups, random.Random(seed))]  # noqa: E731
    assert len(pick("all")) == 20
    assert pick("first:3") == ["dev-00001", "dev-00002", "dev-00003"]
    assert pick("ids:dev-00002, dev-00019") == ["dev-00002", "dev-00019"]
    assert pick("group:east") == ["dev-00001", "dev-00003"]
    assert len(pick("fraction:0.25")) == 5
    assert len(pick("group:half")) == 10
    assert pick("fraction:0.25", seed=4) == pick("fraction:0.25", seed=4)


@pytest.mark.integration
def test_timeline_against_boards_and_broker(emu, broker, observer, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        """
[[event]]
at = 0.5
select = "ids:dev-t1"
action = "power_cycle"
off_s = 1

[[event]]
at = 0.5
select = "ids:dev-t2"
action = "blackhole"
duration = 1.5

[[event]]
at = 1
target = "broker"
action = "restart"
"""
    )
    obs = observer(broker)
    obs.subscribe("devices/+/status")
    boards = [
        emu.add_board(d, broker.host, broker.port, keepalive=2, interval=1, backoff={"base_ms": 200, "cap_ms": 2000})
        for d in ("dev-t1", "dev-t2")
    ]
    for b in boards:
        obs.wait_for(is_birth(b.id), 10)
    timeline = scenario.Timeline(scenario.load(path), boards, broker)
    emu.run(timeline.run(), timeout=30)
    assert [msg for _, msg in timeline.log][:2] == [
        "power_cycle {'off_s': 1} on 1 board(s) [ids:dev-t1] (line 2)",
        "blackhole {'duration': 1.5} on 1 board(s) [ids:dev-t2] (line 8)",
    ]
    assert any("broker restart" in msg for _, msg in timeline.log)
    late = observer(broker)
    late.subscribe("devices/+/status")
    t1 = late.wait_for(is_birth("dev-t1", boot=2), 15)
    assert t1.json()["reset"] == "power_on"
    late.wait_for(is_birth("dev-t2", boot=1), 15)


@pytest.mark.integration
def test_fleet_cli_runs_a_scenario(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[event]]\nat = 2\nselect = "first:2"\naction = "power_cycle"\noff_s = 1\n')
    report = tmp_path / "r.json"
    r = subprocess.run(
        [sys.executable, "-m", "emulator", "--state", str(tmp_path / "st"), "fleet", "--devices", "4",
         "--interval", "1", "--keepalive", "2", "--duration", "14", "--quiet",
         "--scenario", str(path), "--report", str(report)],
        capture_output=True, text=True, timeout=90, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["lwt_seen"] == 2, data
    assert data["online_at_end"] == 4


def test_fleet_cli_rejects_bad_scenario_with_line(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[event]]\nat = 2\naction = "nope"\n')
    r = subprocess.run(
        [sys.executable, "-m", "emulator", "--state", str(tmp_path / "st"), "fleet", "--devices", "1",
         "--scenario", str(path)],
        capture_output=True, text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 2
    assert f"{path}:3: unknown board action 'nope'" in r.stderr
    assert "Traceback" not in r.stderr
