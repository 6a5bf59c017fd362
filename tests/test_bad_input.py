"""Hostile input at the command line and in scenario files (issue 13): every
bad value is refused up front with exit 2 and one `esp32emu: ...` line that
names it -- never a traceback, never a silent success -- and a scenario
event that fails while running stops the run with exit 1 and the reason."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator.cli import main
from emulator.run import scenario
from emulator.validation import UsageError, device_id_error, parse_broker_url

REPO = Path(__file__).resolve().parent.parent
ESP32EMU = [sys.executable, "-m", "emulator"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def run_main(argv: list[str], capsys) -> tuple[int, list[str], str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out = capsys.readouterr()
    return rc, out.err.splitlines(), out.out


# -- the command line ------------------------------------------------------------------

# (argv after `--state DIR`, a fragment of the one line). Every numeric option
# of every subcommand, the broker URL, device ids, --state and --report.
CLI_BAD = [
    (["run", "--duration", "-1"], "argument --duration: must be a positive number"),
    (["run", "--duration", "nan"], "argument --duration"),
    (["run", "--duration", "inf"], "argument --duration"),
    (["run", "--duration", "0"], "argument --duration"),
    (["run", "--keepalive", "1"], "argument --keepalive: must be an integer 2..65535"),
    (["run", "--keepalive", "70000"], "argument --keepalive"),
    (["run", "--keepalive", "1.5"], "argument --keepalive"),
    (["run", "--interval", "0"], "argument --interval: must be a number 0.1..86400"),
    (["run", "--interval", "nan"], "argument --interval"),
    (["run", "--interval", "1e999"], "argument --interval"),
    (["run", "--seed", "x"], "argument --seed"),
    (["run", "--heap", "lots", "--vm", "micropython"], "argument --heap"),
    (["run", "--id", "../../../escape"], "argument --id: '../../../escape' must be 1..64 characters"),
    (["run", "--id", "/tmp/abs"], "argument --id"),
    (["run", "--id", "bad id!"], "argument --id"),
    (["run", "--id", ""], "argument --id: '' must be"),
    (["run", "--id", "x" * 65], "argument --id"),
    (["run", "--id", "dev-1\n"], "argument --id"),
    (["run", "--id", "backend"], "reserved for the backend identity"),
    (["run", "--broker", "mqtt://[::1"], "--broker 'mqtt://[::1': Invalid IPv6 URL"),
    (["run", "--broker", "mqtt://[::1]:1883"], "IPv6 addresses are not supported"),
    (["run", "--broker", "mqtt://127.0.0.1:0"], "the port must be 1..65535, got 0"),
    (["run", "--broker", "mqtt://127.0.0.1:99999"], "the port must be 1..65535"),
    (["run", "--broker", "mqtt://127.0.0.1:"], "the port must be 1..65535"),
    (["run", "--broker", "mqtt://:secret@127.0.0.1:1883"], "--broker 'mqtt://:***@127.0.0.1:1883': a password needs a user name"),
    (["run", "--broker", "mqtt://@127.0.0.1:1883"], "no user name before '@'"),
    (["run", "--broker", "mqtt://" + "u" * 257 + "@h"], "the user name must be at most 256 bytes"),
    (["serial", "--broker", "mqtt://user:pass@127.0.0.1:1883"], "user:password@ is not supported by this command"),
    (["watch", "--broker", "mqtt://user:pass@127.0.0.1:1883"], "user:password@ is not supported by this command"),
    (["run", "--broker", "mqtt://127.0.0.1:1883/devices"], "a path ('/devices') is not supported"),
    (["run", "--broker", "mqtt://127.0.0.1:1883?x=1"], "a query or fragment is not supported"),
    (["run", "--broker", "mqtt://127.0.0.1:1883#top"], "a query or fragment is not supported"),
    (["run", "--broker", "mqtt://:1883"], "no host"),
    (["run", "--broker", "mqtt://bad host:1883"], "bad host"),
    (["run", "--broker", "http://127.0.0.1:1"], "the scheme must be mqtt or mqtts"),
    (["fleet", "--devices", "0"], "argument --devices: must be an integer 1..99999"),
    (["fleet", "--devices", "100000"], "argument --devices"),
    (["fleet", "--devices", "two"], "argument --devices"),
    (["fleet", "--devices", "2", "--duration", "-1"], "argument --duration"),
    (["fleet", "--devices", "2", "--duration", "nan"], "argument --duration"),
    (["fleet", "--devices", "2", "--workers", "0"], "argument --workers: must be an integer >= 1"),
    (["fleet", "--devices", "2", "--workers", "3"], "--workers (3) cannot exceed --devices (2)"),
    (["fleet", "--devices", "2", "--boot-rate", "nan"], "argument --boot-rate"),
    (["fleet", "--devices", "2", "--boot-rate", "0"], "argument --boot-rate"),
    (["fleet", "--devices", "2", "--interval", "-1"], "argument --interval"),
    (["fleet", "--devices", "2", "--keepalive", "0"], "argument --keepalive"),
    (["fleet", "--devices", "2", "--seed", "1.5"], "argument --seed"),
    (["fleet", "--devices", "2", "--heap", "-5k", "--vm", "micropython"], "argument --heap"),
    (["fleet", "--devices", "2", "--broker", "mqtt://h:0"], "the port must be 1..65535"),
    (["watch", "--duration", "nan"], "argument --duration"),
    (["watch", "--broker", "mqtt://h/x"], "a path ('/x') is not supported"),
    (["broker", "--port", "0"], "argument --port: must be an integer 1..65535"),
    (["broker", "--port", "65536"], "argument --port"),
    (["certs", "--devices", "-1"], "argument --devices: must be an integer 0..100000"),
    (["serial", "--flash-kib", "0"], "argument --flash-kib: must be an integer 16..16384"),
    (["serial", "--seed", "nan"], "argument --seed"),
    (["serial", "--duration", "-3"], "argument --duration"),
    (["serial", "--id", "a/b"], "argument --id"),
    (["serial", "--broker", "mqtt://127.0.0.1:0"], "the port must be 1..65535"),
    (["flash", "--port", "/dev/null", "--id", "../x"], "argument --id"),
    (["flash", "--port", "/dev/null", "--id", "dev-1", "--broker", "mqtt://u@h"], "user:password@"),
]


@pytest.mark.parametrize("argv,fragment", CLI_BAD, ids=[" ".join(a)[:60] for a, _ in CLI_BAD])
def test_bad_command_line_is_one_line_exit_2(tmp_path, capsys, argv, fragment):
    rc, err, out = run_main(["--state", str(tmp_path / "state"), *argv], capsys)
    assert rc == 2, (err, out)
    assert len(err) == 1 and err[0].startswith("esp32emu: "), err
    assert fragment in err[0], err
    assert "Traceback" not in out
    assert not (tmp_path / "state" / "boards").exists() and not (tmp_path / "state" / "broker").exists()


def test_state_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    for state, fragment in ((f, "it is a file, not a folder"), (f / "sub", f"{f} is a file, not a folder")):
        rc, err, _ = run_main(["--state", str(state), "run", "--duration", "1"], capsys)
        assert rc == 2 and len(err) == 1 and fragment in err[0], err
        rc, err, _ = run_main(["--state", str(state), "broker", "--port", "1"], capsys)
        assert rc == 2 and len(err) == 1 and fragment in err[0], err


def test_report_path_is_checked_before_the_run(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    state = tmp_path / "state"
    for report, fragment in (
        (tmp_path, "is a folder, not a file"),
        (f / "r.json", f"{f} is a file, not a folder"),
        (Path("/proc/esp32emu-report.json"), "cannot write it"),
    ):
        t0 = time.monotonic()
        rc, err, out = run_main(["--state", str(state), "fleet", "--devices", "2", "--duration", "30", "--report", str(report)], capsys)
        assert rc == 2 and len(err) == 1 and fragment in err[0], err
        assert time.monotonic() - t0 < 10 and out == ""  # refused before any board or broker started
    assert not (state / "broker").exists()


def test_good_report_path_is_not_left_behind_when_the_run_is_refused(tmp_path, capsys):
    report = tmp_path / "new" / "r.json"
    rc, err, _ = run_main(["--state", str(tmp_path / "s"), "fleet", "--devices", "2", "--workers", "3", "--report", str(report)], capsys)
    assert rc == 2 and "--workers" in err[0]
    rc, err, _ = run_main(["--state", str(tmp_path / "s"), "fleet", "--devices", "2", "--scenario", str(tmp_path / "none.toml"),
                           "--report", str(report)], capsys)
    assert rc == 2 and "cannot read" in err[0]
    assert not report.exists()


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["run", "--id", "../../../escape"], "argument --id"),
        (["fleet", "--devices", "3", "--duration", "nan"], "argument --duration"),
        (["run", "--broker", "mqtt://[::1"], "Invalid IPv6 URL"),
    ],
)
def test_bad_input_from_the_real_command(tmp_path, argv, fragment):
    r = subprocess.run(ESP32EMU + ["--state", str(tmp_path), *argv], capture_output=True, text=True, timeout=60, env=ENV, cwd=tmp_path)
    assert r.returncode == 2, r
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("esp32emu: ") and fragment in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not list(tmp_path.rglob("escape"))


GOOD_URLS = [
    ("mqtt://127.0.0.1:1883", ("mqtt", "127.0.0.1", 1883)),
    ("mqtt://127.0.0.1", ("mqtt", "127.0.0.1", 1883)),
    ("mqtts://localhost", ("mqtts", "localhost", 8883)),
    ("MQTT://Broker.Example:2000/", ("mqtt", "broker.example", 2000)),
    ("mqtt://alice:s%40cr%3At@127.0.0.1:1884", ("mqtt", "127.0.0.1", 1884, "alice", "s@cr:t")),
    ("mqtts://bob@localhost", ("mqtts", "localhost", 8883, "bob", None)),
]


@pytest.mark.parametrize("url,want", GOOD_URLS)
def test_good_broker_urls(url, want):
    u = parse_broker_url(url, credentials=True)
    assert (u.scheme, u.host, u.port, u.username, u.password)[: len(want)] == want
    assert "s@cr" not in str(u) and "s%40cr" not in str(u) and "s@cr" not in repr(u)  # never printed
    assert parse_broker_url(str(u), credentials=True).username == u.username


def test_broker_url_errors_are_usage_errors():
    with pytest.raises(UsageError):
        parse_broker_url("mqtt://127.0.0.1:0")


# -- device ids: one rule, the firmware's ------------------------------------------------

IDS = [
    "dev-00001", "a", "A_b-9", "x" * 64, "x" * 65, "", "bad id!", "../escape", "/abs", "a/b", "dev-1\n", "dev.1",
    "dév", "dev\x00", "-", "_", "+", "#", "backend", "Backend", "esp32-aabbccddeeff", " dev", "dev ", "١٢",
]


def _firmware_accepts(device_id) -> bool:
    sys.path.insert(0, str(REPO / "firmware"))
    try:
        import config as fw_config  # the firmware's own module, as tests/test_config.py imports it
    finally:
        sys.path.remove(str(REPO / "firmware"))
    try:
        fw_config.validate({"id": device_id}, lambda *a: None)
    except fw_config.ConfigError:
        return False
    return True


@pytest.mark.parametrize("device_id", IDS, ids=[repr(i) for i in IDS])
def test_device_id_rule_agrees_with_the_firmware(device_id):
    ours = device_id_error(device_id) is None
    if device_id == "backend":  # the firmware takes it; the PKI reserves it for the backend identity
        assert _firmware_accepts(device_id) and not ours
    else:
        assert ours == _firmware_accepts(device_id), device_id


def test_the_pki_uses_the_same_rule(tmp_path):
    from emulator.broker.certs import CertError, make_pki

    for bad in ("dev-1\n", "../x", "backend", ""):
        with pytest.raises(CertError) as e:
            make_pki(tmp_path / "pki", [bad])
        assert str(e.value) == device_id_error(bad)


# -- scenario files --------------------------------------------------------------------

EV = '[[event]]\nat = 1\naction = "reset"\n'

# (text, line named, fragment): everything that used to fail only while running,
# or with a traceback.
SCENARIO_BAD = [
    ('[groups]\neast = "group:east"\n' + EV, 2, "group 'east' refers to itself: east -> east"),
    ('[groups]\na = "group:b"\nb = "group:a"\n' + EV, 2, "refers to itself: a -> b -> a"),
    ('[groups]\na = "bogus:1"\n' + EV, 2, "group 'a': bad selector 'bogus:1'"),
    ('[groups]\na = "group:nope"\n' + EV, 2, "unknown group 'nope'"),
    ('[groups]\na = ["dev-00001", "../x"]\n' + EV, 2, "group 'a': device id '../x'"),
    ('[groups]\na = 5\n' + EV, 2, "must be a list of ids or a selector string"),
    ('[[event]]\nat = 1\naction = "link"\nprofile = "moon"\n', 4, "unknown link profile 'moon'"),
    ('[[event]]\nat = 1\naction = "link"\nprofile = {latency_ms = "x"}\n', 4, "'latency_ms' must be a number"),
    ('[[event]]\nat = 1\naction = "link"\nprofile = {latency_ms = nan}\n', 4, "'latency_ms' must be a finite number"),
    ('[[event]]\nat = 1\naction = "link"\nprofile = {jitter_ms = inf}\n', 4, "'jitter_ms' must be a finite number"),
    ('[[event]]\nat = 1\naction = "link"\nprofile = {bogus = 1}\n', 4, "unknown link profile key 'bogus'"),
    ('[[event]]\nat = 1\naction = "power_cycle"\noff_s = nan\n', 4, "'off_s' must be a positive number of seconds"),
    ('[[event]]\nat = 1\naction = "power_cycle"\noff_s = inf\n', 4, "'off_s'"),
    ('[[event]]\nat = nan\naction = "reset"\n', 2, "'at' must be a number of seconds"),
    ('[[event]]\nat = inf\naction = "reset"\n', 2, "'at'"),
    ('[[event]]\nat = 1e300\naction = "reset"\n', 2, "'at'"),
    ('[[event]]\nat = true\naction = "reset"\n', 2, "'at'"),
    ('[[event]]\nat = 1\naction = "blackhole"\nduration = nan\n', 4, "'duration' must be a positive number"),
    ('[[event]]\nat = 1\naction = "blackhole"\nduration = -inf\n', 4, "'duration'"),
    ("event = [5]\n", 1, "event 1 must be a table"),
    ('event = [{at = 1, action = "reset"}, "x"]\n', 1, "event 2 must be a table"),
    ('[[event]]\nat = 1\naction = "reset"\nselect = "first:²"\n', 4, "first needs a positive count"),
    ('[[event]]\nat = 1\naction = "reset"\nselect = "fraction:nan"\n', 4, "fraction"),
    ('[[event]]\nat = 1\naction = "reset"\nselect = "ids:dev-1,a b"\n', 4, "ids: device id 'a b'"),
    ('[[event]]\nat = 1\naction = "sensor_fault"\nsensor = ["bme280"]\nfault = "stuck"\n', 4, "sensor_fault needs sensor"),
]


@pytest.mark.parametrize("text,line,fragment", SCENARIO_BAD, ids=[b[2][:50] for b in SCENARIO_BAD])
def test_bad_scenarios_are_refused_at_load(tmp_path, text, line, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{line}: ") and fragment in msg and "\n" not in msg, msg


def test_non_utf8_scenario(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'# caf\xe9\n[[event]]\nat = 1\naction = "reset"\n')
    with pytest.raises(scenario.ScenarioError) as e:
        scenario.load(path)
    assert str(e.value) == f"{path}:1: not UTF-8 text (byte 0xe9 at offset 5)"


@pytest.mark.parametrize("command", [["run"], ["fleet", "--devices", "2"]])
@pytest.mark.parametrize(
    "text,fragment",
    [('[groups]\neast = "group:east"\n' + EV, "refers to itself"), ("event = [5]\n", "must be a table"),
     (b"\xff\xfe", "not UTF-8 text")],
    ids=["cycle", "event-not-table", "not-utf8"],
)
def test_bad_scenarios_through_the_cli(tmp_path, capsys, command, text, fragment):
    path = tmp_path / "bad.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc, err, out = run_main(["--state", str(tmp_path / "s"), *command, "--duration", "30", "--scenario", str(path)], capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"esp32emu: {path}:") and fragment in err[0], err
    assert not (tmp_path / "s" / "broker").exists()


def test_good_group_chains_still_select(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text('[groups]\nhalf = "fraction:0.5"\nh2 = "group:half"\nsome = ["dev-00001"]\n'
                    '[[event]]\nat = 0\naction = "reset"\nselect = "group:h2"\n')
    sc = scenario.load(path)
    assert sc.groups["h2"] == "group:half"


# -- a scenario event that fails while running stops the run ---------------------------

# The private broker is already running at 0.5 s: `start` fails there and then.
FAILS_AT_RUN = '[[event]]\nat = 0.5\ntarget = "broker"\naction = "start"\n'


@pytest.mark.integration
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--interval", "1"],
        ["fleet", "--devices", "2", "--workers", "1", "--quiet"],
        ["fleet", "--devices", "2", "--workers", "2", "--quiet"],
    ],
    ids=["run", "fleet-local", "fleet-workers"],
)
def test_a_failing_event_stops_the_run_with_exit_1(tmp_path, argv):
    path = tmp_path / "s.toml"
    path.write_text(FAILS_AT_RUN)
    t0 = time.monotonic()
    r = subprocess.run(
        ESP32EMU + ["--state", str(tmp_path / "state"), *argv, "--duration", "120", "--scenario", str(path)],
        capture_output=True, text=True, timeout=110, env=ENV, cwd=tmp_path,
    )
    assert r.returncode == 1, r
    assert time.monotonic() - t0 < 60  # stopped by the failure, not by --duration
    lines = [line for line in r.stderr.splitlines() if "scenario stopped" in line]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"esp32emu: {path}:1: scenario stopped: start failed: BrokerError: broker already running"), r.stderr
    assert "Traceback" not in r.stderr
    assert '"devices"' not in r.stdout  # no report from a run that failed


# -- credentials in the broker URL are honoured, not dropped -----------------------------


@pytest.mark.integration
def test_fleet_logs_in_with_the_urls_credentials(tmp_path, broker_factory):
    # allow_anonymous false. (No ':' in the password: mosquitto_passwd -U then fails to log it in.)
    broker = broker_factory(users={"alice": "s3@cr%t"})
    url = f"mqtt://alice:s3%40cr%25t@127.0.0.1:{broker.port}"
    report = tmp_path / "r.json"
    r = subprocess.run(
        ESP32EMU + ["--state", str(tmp_path / "s"), "fleet", "--devices", "2", "--broker", url, "--interval", "1",
                    "--keepalive", "5", "--duration", "5", "--quiet", "--report", str(report)],
        capture_output=True, text=True, timeout=90, env=ENV, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["online_at_end"] == 2 and data["telemetry_received"] >= 2  # boards and observer logged in
    assert data["broker"] == f"mqtt://alice@127.0.0.1:{broker.port}"  # the password is never printed
    assert "s3@cr" not in r.stdout + r.stderr and "s3%40" not in r.stdout + r.stderr


@pytest.mark.integration
def test_fleet_without_the_password_is_one_line_exit_1(tmp_path, broker_factory):
    broker = broker_factory(users={"alice": "secret"})
    r = subprocess.run(
        ESP32EMU + ["--state", str(tmp_path / "s"), "fleet", "--devices", "1", "--broker", f"mqtt://127.0.0.1:{broker.port}",
                    "--duration", "5", "--quiet"],
        capture_output=True, text=True, timeout=90, env=ENV, cwd=tmp_path,
    )
    assert r.returncode == 1, r
    first, *rest = r.stderr.splitlines()  # the first line names the firmware it boots
    assert first.startswith("esp32emu: booting firmware "), r.stderr
    assert len(rest) == 1 and rest[0].startswith("esp32emu: "), r.stderr
    assert "refused the observer: Not authorized" in rest[0], r.stderr  # the broker's reason, not a timeout


@pytest.mark.integration
def test_run_logs_in_with_the_urls_credentials(tmp_path, broker_factory):
    from tests.boards import is_birth
    from tests.helpers import Observer

    broker = broker_factory(users={"alice": "pw", "bob": "pw2"})
    obs = Observer(broker.host, broker.port, client_id="creds-observer")
    obs.client.username_pw_set("bob", "pw2")
    obs.connect()
    proc = subprocess.Popen(
        ESP32EMU + ["--state", str(tmp_path / "s"), "run", "--id", "cred-1", "--broker", f"mqtt://alice:pw@127.0.0.1:{broker.port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path,
    )
    try:
        obs.subscribe("devices/cred-1/status")
        obs.wait_for(is_birth("cred-1"), 30)
        assert "u'alice'" in broker.log_text()  # Mosquitto logs the user name of every CONNECT
    finally:
        proc.send_signal(subprocess.signal.SIGINT)
        proc.wait(30)
        obs.close()
    assert proc.returncode == 0, proc.stderr.read()
