"""Scenario actions for OTA faults (issue 18): `power_loss` during download or
install (the flash fake's power cuts), and the release server's `drop`,
`corrupt` and `rate` -- parsed strictly, refused where they cannot run, and
run against a board that must still end on a complete new version."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from emulator.broker import certs
from emulator.ota.release import build, firmware_variant
from emulator.ota.rollout import Options, run_rollout
from emulator.ota.serve import ReleaseServer
from emulator.run import scenario
from emulator.validation import UsageError

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
NEW = "0.2.0"

def test_release_events_need_a_release_server_and_power_loss_a_cpython_board(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[event]]\nat = 0\naction = "power_loss"\nduring = "install"\n\n'
                    '[[event]]\nat = 1\ntarget = "release"\naction = "corrupt"\nafter = 9\n')
    with pytest.raises(UsageError, match=r"s.toml:6: release events need a release server"):
        scenario.load_scenario(path, private_broker=True)
    assert scenario.load_scenario(path, private_broker=True, release_server=True).uses_release
    with pytest.raises(UsageError, match=r"s.toml:1: action 'power_loss' is not supported on the micropython backend"):
        scenario.load_scenario(path, private_broker=True, backend="micropython", release_server=True)


def test_release_events_set_the_servers_faults(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('[[event]]\nat = 0\ntarget = "release"\naction = "drop"\nfiles = "*.py"\nafter = 10\ntimes = 3\n\n'
                    '[[event]]\nat = 0\ntarget = "release"\naction = "rate"\nafter = 4096\n\n'
                    '[[event]]\nat = 0.01\ntarget = "release"\naction = "clear"\n')
    with ReleaseServer(tmp_path) as srv:
        tl = scenario.Timeline(scenario.load(path), [], release=srv)
        seen = []
        srv.faults.clear = lambda inner=srv.faults.clear: (seen.append([(r.kind, r.pattern, r.at, r.times)
                                                                          for r in srv.faults.rules]), inner())
        asyncio.run(tl.run())
    assert seen == [[("drop", "*.py", 10, 3), ("rate", "files/*", 4096, 0)]]
    assert srv.faults.rules == []


@pytest.mark.integration
@pytest.mark.mosquitto
def test_a_board_through_a_dropped_link_a_flipped_byte_and_a_power_cut_mid_install_ends_on_the_new_version(
        tmp_path, board, mosquitto, observer_factory):
    certs.ensure_release_key(tmp_path / "pki")
    build(firmware_variant(FIRMWARE, tmp_path / "src", NEW), NEW, tmp_path / "pki" / "release.key", tmp_path / "rel" / "r")
    board.config["ota"] = {"trial_s": 15, "max_boots": 2}
    board.flash["release.pub"] = (tmp_path / "pki" / "release.pub").read_bytes()
    obs = observer_factory(mosquitto)
    board.boot()
    obs.expect(board.topic("status"), {"online": True}, timeout=20)
    sc = tmp_path / "faults.toml"
    sc.write_text('[[event]]\nat = 0\naction = "power_loss"\nduring = "install"\nafter_ops = 2\n\n'
                  '[[event]]\nat = 0\ntarget = "release"\naction = "drop"\nfiles = "device.py"\nafter = 3000\n\n'
                  '[[event]]\nat = 0\ntarget = "release"\naction = "corrupt"\nfiles = "config.py"\nafter = 100\n')
    with ReleaseServer(tmp_path / "rel") as srv:
        tl = scenario.Timeline(scenario.load(sc), [board.board], release=srv)
        board.emu.run(tl.run())
        code = run_rollout(Options(broker=mosquitto.url, release=srv.url("r/manifest.json"), waves=[100.0],
                                   report=tmp_path / "r.json", certs_dir=tmp_path / "pki", timeout=60, plain=True))
        stats = srv.stats.as_dict()
    row = json.loads((tmp_path / "r.json").read_text())["devices"][board.id]
    assert code == 0 and (row["outcome"], row["to"]) == ("committed", NEW), row
    assert row["retries"] == 0  # the journal finished the install at boot: nothing to resend
    assert stats["drops"] == 1 and stats["corruptions"] == 1 and stats["partial"] >= 1  # resumed with Range
    assert any("power cut during a flash write" in msg for _, kind, msg in board.events() if kind == "power")
    assert json.loads(board.flash["device.py"].decode().split("FW_VERSION = ", 1)[1].split("\n")[0]) == NEW
    assert not [n for n in board.flash if n.startswith(("ota_new/", "ota_old/"))]  # staging and backup gone
