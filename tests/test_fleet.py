"""`esp32emu fleet` at the edges the unit of one board does not reach:
boards spread over worker processes (ids global, one observer, one report),
scenario selections that agree across workers, and the open-file limit."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator.fleet.workers import BoardGroup, GroupSpec, auto_workers, split

ESP32EMU = [sys.executable, "-m", "emulator"]
REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def test_split_is_round_robin_and_covers_every_board():
    slices = split(range(7), 3)
    assert slices == [(0, 3, 6), (1, 4), (2, 5)]
    assert sorted(i for s in slices for i in s) == list(range(7))


def test_default_workers_is_one_per_2500_boards_up_to_the_cores():
    assert auto_workers(20, cores=8) == 1
    assert auto_workers(2500, cores=8) == 1
    assert auto_workers(2501, cores=8) == 2
    assert auto_workers(10_000, cores=2) == 2
    assert auto_workers(100_000, cores=4) == 4


class FakeBoard:
    def __init__(self, index: int):
        self.index = index
        self.id = f"dev-{index + 1:05d}"
        self.resets = 0

    def hard_reset(self) -> None:
        self.resets += 1


def test_scenario_selection_is_the_same_in_every_worker(tmp_path):
    """Each worker draws the fleet-wide random selection and acts on its own boards only:
    together they reset exactly the boards one process would have reset."""
    sc = tmp_path / "s.toml"
    sc.write_text('seed = 3\n[[event]]\nat = 0\nselect = "fraction:0.3"\naction = "reset"\n')
    n = 20

    def run(k: int) -> set[str]:
        reset = set()
        for indices in split(range(n), k):
            spec = GroupSpec(indices, n, "127.0.0.1", 1, False, 30, 10, 0, tmp_path, tmp_path, 100.0, sc)
            group = BoardGroup(spec)
            group.boards = [FakeBoard(i) for i in indices]
            asyncio.run(group._scenario(time.monotonic(), None, board_events_only=True))
            reset |= {b.id for b in group.boards if b.resets}
        return reset

    alone = run(1)
    assert len(alone) == 6
    assert run(2) == alone and run(3) == alone


@pytest.mark.integration
def test_two_workers_report_every_board_online_and_nothing_lost(tmp_path, broker):
    report = tmp_path / "r.json"
    r = subprocess.run(
        ESP32EMU
        + ["--state", str(tmp_path / "s"), "fleet", "--devices", "6", "--workers", "2", "--broker", broker.url]
        + ["--interval", "1", "--keepalive", "5", "--duration", "5", "--report", str(report), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["devices"] == 6 and data["workers"] == 2
    assert data["online_at_end"] == 6 and data["all_online_s"] is not None
    assert data["telemetry_received"] >= 6 * 3 and data["telemetry_lost"] == 0
    assert data["lwt_seen"] == 0 and data["reconnects"] == 0
    assert data["commands_ok"] == data["commands_sent"] > 0
    assert data["loop_lag_ms"]["p99"] is not None
    assert data["rss_mb"] > data["rss_base_mb"] > 0 and data["cpu_s"] >= 0
    # Global ids, each board in exactly one worker: every device's own flash directory exists.
    assert sorted(p.name for p in (tmp_path / "s" / "boards").iterdir()) == [f"dev-{i:05d}" for i in range(1, 7)]


@pytest.mark.integration
def test_a_booted_group_runs_its_own_collector_and_gives_it_back(tmp_path, broker, observer, monkeypatch):
    """Boot objects frozen in checkpoints, automatic collection off once the
    boards have settled (telemetry goes on), and stop() restores both."""
    import gc

    from emulator.fleet import workers
    monkeypatch.setattr(workers, "SETTLE_S", 0.5)
    monkeypatch.setattr(workers, "FREEZE_EVERY", 2)
    obs = observer(broker)
    obs.subscribe("devices/+/telemetry")
    spec = GroupSpec((0, 1, 2), 3, broker.host, broker.port, False, 5, 1, 0, tmp_path, tmp_path, 50.0)
    group = BoardGroup(spec)
    group.build()
    seen = {}

    async def main() -> None:
        group.start(time.monotonic())
        try:
            deadline = time.monotonic() + 15
            while group.collector.collections == 0 and gc.isenabled():
                assert time.monotonic() < deadline, "the collector never took over"
                await asyncio.sleep(0.05)
            seen["frozen"] = gc.get_freeze_count()
            mark = len(obs.messages)
            while not {m.topic for m in obs.messages[mark:]} >= {f"devices/dev-0000{i}/telemetry" for i in (1, 2, 3)}:
                assert time.monotonic() < deadline, "telemetry stopped once the collector took over"
                await asyncio.sleep(0.05)
        finally:
            await group.stop()
            seen["after"] = (gc.isenabled(), gc.get_freeze_count())

    try:
        asyncio.run(main())
    finally:
        gc.enable()  # whatever happened, later tests get a collector
    assert seen["frozen"] > 0
    assert seen["after"] == (True, 0)


def _lower_nofile(limit: int):
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return lower


def test_too_many_boards_for_the_open_file_limit_exits_2_naming_it(tmp_path):
    r = subprocess.run(
        ESP32EMU + ["--state", str(tmp_path), "fleet", "--devices", "1000", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        env=ENV,
        preexec_fn=_lower_nofile(256),
    )
    assert r.returncode == 2, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "limit is 256" in lines[0] and "ulimit -n" in lines[0], lines[0]
    assert not (tmp_path / "broker").exists()  # refused before anything started
