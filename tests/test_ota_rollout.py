"""`esp32emu rollout` over emulated fleets (issue 18): a real Mosquitto, the
real release server (`emulator/ota/serve.py`), releases made by `release
build`, and CPython boards running the firmware's `ota` op.

- 200 boards in 4 waves end on the new version, the ones whose power is cut
  mid-download among them (the board starts its update again on the next
  boot) -- with a release of
  the two files that changed (main.py, device.py: files a release does not
  carry stay as they are), as the whole firmware 200 times costs this
  suite a minute; bench/ota_rollout.py rolls the whole firmware out to 1,000;
- a release that raises at import rolls back on its own and the rollout
  halts after its first wave, the other boards never asked;
- a badly signed release is refused by every board with nothing written.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from emulator.broker import certs
from emulator.ota.release import build, firmware_variant
from emulator.ota.rollout import Options, run_rollout
from emulator.ota.serve import ReleaseServer

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"
OLD, NEW = "0.1.0", "0.2.0"
OTA_CONFIG = {"trial_s": 15, "max_boots": 2}


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ota-pki")
    certs.ensure_release_key(root)  # a plain mqtt:// fleet: the release key pair is all it needs
    return root


@pytest.fixture(scope="module")
def releases(tmp_path_factory, pki) -> Path:
    """good/ (0.2.0), small/ (0.2.0: main.py and device.py only), crash/ (0.3.0: raises at import),
    badsig/ (0.2.0 signed by another key)."""
    root = tmp_path_factory.mktemp("releases")
    build(firmware_variant(FIRMWARE, root / "src-good", NEW), NEW, pki / "release.key", root / "good")
    small = root / "src-small"
    small.mkdir()
    for name in ("main.py", "device.py"):
        (small / name).write_bytes((root / "src-good" / name).read_bytes())
    build(small, NEW, pki / "release.key", root / "small")
    build(firmware_variant(FIRMWARE, root / "src-crash", "0.3.0", "raise"), "0.3.0", pki / "release.key", root / "crash")
    other = root / "other-key"
    certs.ensure_release_key(other)
    build(root / "src-good", NEW, other / "release.key", root / "badsig")
    return root


@pytest.fixture
def server(releases):
    with ReleaseServer(releases) as srv:
        yield srv


def fleet(boards, observer_factory, mosquitto, pki, n: int):
    """n booted boards with the release key, all online (their births seen)."""
    made = boards(n, ota=OTA_CONFIG)
    obs = observer_factory(mosquitto, subscribe="devices/#")
    for b in made:
        b.flash["release.pub"] = (pki / "release.pub").read_bytes()
        b.boot()
    obs.collect("devices/+/status", lambda m: m.json().get("online") is True, count=n, timeout=60)
    return made, obs


def one_board(boards, observer_factory, broker, pki: Path, **config):
    """One booted board with the release key in `pki`, online (its birth seen)."""
    (b,) = boards(1, broker=broker, **config)
    b.flash["release.pub"] = (pki / "release.pub").read_bytes()
    obs = observer_factory(broker, subscribe="devices/#")
    b.boot()
    obs.expect(b.topic("status"), {"online": True, "fw": OLD}, timeout=30)
    return b


def snapshot(flash: Path) -> dict[str, str]:
    """Every file on a board's flash but the update's request (`ota.json`: the `ota` command
    writes it before its reset; the board drops it once its result is published, a moment
    after the rollout has it), its download buffer (`ota.tmp`) and the emulated flash's
    commit of a file being written at this moment (`<name>.esp32emu-commit`, renamed over
    the file at once: the firmware, on the board's own loop, never sees it; this test's
    thread can)."""
    return {p.relative_to(flash).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(flash.rglob("*"))
            if p.is_file() and p.name not in ("ota.json", "ota.tmp") and not p.name.endswith(".esp32emu-commit")}


def rollout(mosquitto, url: str, pki: Path, tmp_path: Path, **kw) -> tuple[int, dict]:
    report = tmp_path / "rollout.json"
    opts = Options(broker=mosquitto.url, release=url, report=report, certs_dir=pki, timeout=90, plain=True,
                   discover_s=5, **kw)
    code = run_rollout(opts)
    return code, json.loads(report.read_text())


@pytest.mark.slow
def test_200_boards_in_four_waves_all_end_on_the_new_version(boards, observer_factory, mosquitto, pki, server,
                                                              tmp_path, capsys):
    made, obs = fleet(boards, observer_factory, mosquitto, pki, 200)
    cut = made[5:200:40]  # 5 boards (one in each later wave) lose power mid-download
    for b in cut:
        b.power_loss(during="download", after_bytes=5000)
    assert all(b.flash.get("device.py") is None for b in made)  # they run the image's 0.1.0
    code, report = rollout(mosquitto, server.url("small/manifest.json"), pki, tmp_path)
    assert code == 0, capsys.readouterr().out[-3000:]
    assert [w["devices"] for w in report["waves"]] == [2, 18, 80, 100]
    assert report["outcomes"] == {"committed": 200} and not report["halted"]
    for b in made:
        row = report["devices"][b.id]
        assert (row["from"], row["to"], row["outcome"]) == (OLD, NEW, "committed"), (b.id, row)
        assert row["boots"] == 1, (b.id, row)  # the update runs before the app: one app boot, the trial
    for b in cut:  # the cut happened (the board's own log), and the board got over it by itself
        assert any("power cut during a flash write" in msg for _, kind, msg in b.events() if kind == "power"), b.id
    # What the broker keeps says the same: every board's retained birth runs the new version.
    seen = {}
    for m in obs.messages:
        if m.topic.endswith("/status") and m.json().get("online") is True:
            seen[m.topic.split("/")[1]] = m.json()["fw"]
    assert all(seen[b.id] == NEW for b in made)
    assert server.stats.by_path["small/files/device.py"] >= 200 + len(cut)  # the cut ones fetched it again


def test_a_release_that_raises_at_import_rolls_back_and_the_rollout_halts(boards, observer_factory, mosquitto, pki,
                                                                           server, tmp_path):
    made, obs = fleet(boards, observer_factory, mosquitto, pki, 20)
    before = {b.id: snapshot(b.flash.path) for b in made[2:]}
    code, report = rollout(mosquitto, server.url("crash/manifest.json"), pki, tmp_path, waves=[10.0, 100.0])
    assert code == 1
    assert report["halted"] and report["halt_reason"].startswith("wave 1: 2 of 2 failed")
    assert len(report["waves"]) == 1
    for b in made[:2]:
        row = report["devices"][b.id]
        assert (row["outcome"], row["to"]) == ("rolled_back", OLD), row
        assert "RuntimeError" in row["error"] and "raises at import" in row["error"], row
        assert set(b.flash) >= {"config.json", "release.pub"} and not any(
            n.startswith(("ota_new/", "ota_old/")) or n in ("device.py", "main.py") for n in b.flash)
    for b in made[2:]:  # never asked: untouched
        assert report["devices"][b.id]["outcome"] == "not_started"
        assert snapshot(b.flash.path) == before[b.id]
    last = {}
    for m in obs.messages:
        if m.topic.endswith("/status") and m.json().get("online") is True:
            last[m.topic.split("/")[1]] = m.json()["fw"]
    assert all(last[b.id] == OLD for b in made)


def test_a_badly_signed_release_is_refused_by_every_board_with_nothing_written(boards, observer_factory, mosquitto,
                                                                               pki, server, tmp_path, capsys):
    made, obs = fleet(boards, observer_factory, mosquitto, pki, 10)
    before = {b.id: snapshot(b.flash.path) for b in made}
    code, report = rollout(mosquitto, server.url("badsig/manifest.json"), pki, tmp_path, waves=[100.0])
    assert code == 1
    assert "signature does not verify" in capsys.readouterr().err  # the host's warning, before any board judged
    assert report["outcomes"] == {"refused": 10}
    for b in made:
        assert report["devices"][b.id]["error"] == "manifest signature does not verify"
        assert snapshot(b.flash.path) == before[b.id]  # nothing written
    assert server.stats.by_path.get("badsig/files/device.py") is None  # no board downloaded a file


# -- bad input: one line, exit 2, nothing sent -------------------------------------------------------


@pytest.mark.parametrize("argv, expect", [
    (["--waves", "10%,5%"], "shares must increase"),
    (["--waves", "ten"], "not a percentage"),
    (["--max-failures", "150%"], "within 0..100%"),
    (["--release", "ftp://x/manifest.json"], "expected http(s)://"),
    (["--broker", "http://127.0.0.1:1"], "the scheme must be mqtt or mqtts"),
    (["--devices", "dev 1"], "--devices"),
])
def test_rollout_bad_input_is_one_line_and_exit_2(argv, expect, capsys):
    from emulator.cli import main

    base = {"--broker": "mqtt://127.0.0.1:1", "--release": "http://127.0.0.1:1/r/manifest.json"}
    args = dict(base)
    args.update(dict(zip(argv[::2], argv[1::2])))
    code = main(["rollout", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2 and expect in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_rollout_with_no_device_on_the_broker_says_so(mosquitto, server, pki, tmp_path, capsys):
    from emulator.cli import main

    code = main(["rollout", "--broker", mosquitto.url, "--release", server.url("good/manifest.json"),
                 "--certs", str(pki), "--prefix", "nobody-here", "--plain"])
    err = capsys.readouterr().err
    assert code == 2 and "no devices under nobody-here/+/status" in err, err


def test_the_live_table_shows_each_wave_and_the_latest_problems():
    from rich.console import Console

    from emulator.ota.rollout import Device, Release, Rollout, View, wave_sizes

    assert wave_sizes(1000, [1, 10, 50, 100]) == [10, 90, 400, 500]
    assert wave_sizes(3, [1, 10, 50, 100]) == [1, 1, 1]  # at least one a wave while any are left
    r = Rollout(Options(broker="mqtt://127.0.0.1:1", release="http://x/manifest.json"),
                Release("http://x/manifest.json", NEW, 12))
    r.devices = {"dev-00001": Device("dev-00001", wave=1, outcome="committed"),
                 "dev-00002": Device("dev-00002", wave=2, outcome="rolled_back", state="rolled_back",
                                     error="2 trial boots failed (last: RuntimeError: boom)", started=1.0, ended=2.0),
                 "dev-00003": Device("dev-00003", wave=2, state="downloading", retries=1)}
    console = Console(width=160, record=True)
    console.print(View(plain=False)._table(r))
    text = console.export_text()
    assert "rollout 0.2.0" in text and "RuntimeError: boom" in text and "dev-00002" in text
    rows = [line.replace("│", " ").split() for line in text.splitlines() if line.startswith("│")]
    assert rows[:2] == [["1", "1", "1", "0", "0", "0", "0", "0", "0"], ["2", "2", "0", "0", "1", "1", "1", "0", "0"]]


def test_a_plain_static_server_serves_releases_as_well(boards, observer_factory, mosquitto, pki, releases, tmp_path):
    """Python's own http.server (HTTP/1.0, no Range) in place of `release serve`."""
    import functools
    import http.server
    import threading

    made, _ = fleet(boards, observer_factory, mosquitto, pki, 1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(releases))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.log_message = lambda *a: None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/small/manifest.json"
        code, report = rollout(mosquitto, url, pki, tmp_path, waves=[100.0])
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0 and report["devices"][made[0].id]["outcome"] == "committed", report["devices"]


def test_release_serve_cli_answers_ranges(releases, tmp_path):
    import subprocess
    import sys
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "emulator", "release", "serve", str(releases), "--port", "0",
                             "--duration", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "PYTHONPATH": str(FIRMWARE.parent)})
    try:
        first = proc.stdout.readline()  # "esp32emu: serving DIR at http://127.0.0.1:PORT/"
        assert first.startswith("esp32emu: serving ") and " at http://127.0.0.1:" in first, first
        base = first.rsplit(" at ", 1)[1].strip()
        want = (releases / "good" / "files" / "device.py").read_bytes()
        req = urllib.request.Request(base + "good/files/device.py", headers={"Range": "bytes=10-19"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert (r.status, r.read()) == (206, want[10:20])
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_a_board_booted_by_esp32emu_serial_takes_the_update(mosquitto, observer_factory, tmp_path, releases):
    """The pty board mpremote drives, started as a user does (no PKI: the state folder's release key)."""
    import os
    import signal
    import subprocess
    import sys

    state = tmp_path / "state"
    obs = observer_factory(mosquitto, subscribe="devices/#")
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "serial", "--broker", mosquitto.url, "--id", "dev-00007",
                             "--state", str(state), "--duration", "120"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(FIRMWARE.parent)})
    try:
        obs.expect("devices/dev-00007/status", {"online": True, "fw": OLD}, timeout=30)
        src = firmware_variant(FIRMWARE, tmp_path / "src", NEW)
        build(src, NEW, state / "release" / "release.key", tmp_path / "rel" / "r")
        with ReleaseServer(tmp_path / "rel") as srv:
            code, report = rollout(mosquitto, srv.url("r/manifest.json"), tmp_path / "no-pki", tmp_path,
                                   waves=[100.0], devices=["dev-00007"])
        assert code == 0 and report["devices"]["dev-00007"]["outcome"] == "committed", report
        obs.expect("devices/dev-00007/status", {"online": True, "fw": NEW}, timeout=10, since=0)
        flash = state / "serial" / "dev-00007" / "flash"
        assert f'FW_VERSION = "{NEW}"' in (flash / "device.py").read_text()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.slow
def test_a_board_on_the_real_interpreter_takes_the_mpy_variants(boards, observer_factory, mosquitto, pki, tmp_path):
    """`release build --mpy` on a VM board (100 KiB heap): its `_mpy & 0x3ff` is the manifest's abi, so it
    downloads the .mpy of each module (boot.py and main.py stay sources) and commits."""
    build(firmware_variant(FIRMWARE, tmp_path / "src", NEW), NEW, pki / "release.key", tmp_path / "rel" / "r", mpy=True)
    b = one_board(boards, observer_factory, mosquitto, pki, vm="micropython", ota=OTA_CONFIG)
    with ReleaseServer(tmp_path / "rel") as srv:
        code, report = rollout(mosquitto, srv.url("r/manifest.json"), pki, tmp_path, waves=[100.0])
        got = srv.stats.as_dict()["by_path"]
    assert code == 0 and report["devices"][b.id]["outcome"] == "committed", report["devices"]
    assert got.get("r/files/device.py.mpy") == 1 and "r/files/device.py" not in got, got
    assert got.get("r/files/main.py") == 1 and "r/files/main.py.mpy" not in got, got


def test_rollout_over_mutual_tls_with_the_backend_certificate(boards, observer_factory, mosquitto_tls, esp32emu_pki,
                                                              releases, tmp_path):
    """mqtts://: the rollout logs in as the PKI's `backend` (fleet-wide rights in the ACL)."""
    certs.ensure_release_key(esp32emu_pki)
    build(firmware_variant(FIRMWARE, tmp_path / "src", NEW), NEW, esp32emu_pki / "release.key", tmp_path / "rel" / "r")
    b = one_board(boards, observer_factory, mosquitto_tls, esp32emu_pki, ota=OTA_CONFIG)
    with ReleaseServer(tmp_path / "rel") as srv:
        code, report = rollout(mosquitto_tls, srv.url("r/manifest.json"), esp32emu_pki, tmp_path, waves=[100.0])
    assert report["broker"].startswith("mqtts://")
    assert code == 0 and report["devices"][b.id]["outcome"] == "committed", report["devices"]


@pytest.mark.slow
def test_a_release_that_hangs_at_import_is_rolled_back_by_the_watchdog(boards, observer_factory, mosquitto, pki,
                                                                       tmp_path):
    """The trial boot's watchdog (ota.trial_s, at least 10 s) resets a release that never comes up."""
    build(firmware_variant(FIRMWARE, tmp_path / "src", "0.4.0", "hang"), "0.4.0", pki / "release.key",
          tmp_path / "rel" / "hang")
    b = one_board(boards, observer_factory, mosquitto, pki, ota={"trial_s": 10, "max_boots": 1})
    with ReleaseServer(tmp_path / "rel") as srv:
        code, report = rollout(mosquitto, srv.url("hang/manifest.json"), pki, tmp_path, waves=[100.0])
    row = report["devices"][b.id]
    assert code == 1 and (row["outcome"], row["to"]) == ("rolled_back", OLD), row
    assert row["error"].startswith("1 trial boots failed"), row
    assert ("reset", "cause 3") in [(k, m) for _, k, m in b.events()], b.report()  # 3: WDT_RESET, the hung trial
