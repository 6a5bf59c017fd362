"""`esp32emu conformance`'s command line: bad input is exit 2 with one line,
a broker that is not there gives a failing table at once (exit 1, a report
that says why), never a traceback or a wait. The behaviours themselves are
pinned per broker in tests/test_conformance_brokers.py."""

from __future__ import annotations

import json
import time

import pytest

from emulator.broker.mosquitto import free_port
from emulator.cli import main
from emulator.conformance.checks import BEHAVIOURS, Row
from emulator.conformance.run import Result, table


@pytest.mark.parametrize("argv, said", [
    (["--broker", "http://127.0.0.1:1883"], "the scheme must be mqtt or mqtts"),
    (["--broker", "mqtt://127.0.0.1:1883", "--keepalive", "1"], "--keepalive"),
    (["--broker", "mqtt://127.0.0.1:1883", "--keepalive", "x"], "--keepalive"),
    (["--broker", "mqtts://127.0.0.1:8883", "--certs", "{tmp}/none"], "mqtts:// needs the dev PKI"),
    (["--broker", "mqtt://127.0.0.1:1883", "--tls", "--certs", "{tmp}/none"], "mqtts:// needs the dev PKI"),
    ([], "--broker"),
])
def test_bad_input_is_one_line_and_exit_2(argv, said, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = main(["conformance", *argv])
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert said in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_nothing_listening_fails_every_row_at_once_with_the_reason(tmp_path, capsys):
    report = tmp_path / "r.json"
    t0 = time.monotonic()
    code = main(["conformance", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--keepalive", "2",
                 "--report", str(report)])
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    assert code == 1
    assert took < 10, took
    data = json.loads(report.read_text())
    assert data["passed"] is False
    assert [r["key"] for r in data["rows"]] == [key for key, _ in BEHAVIOURS]
    assert {r["status"] for r in data["rows"]} == {"fail"}
    assert all("connection refused" in r["detail"] for r in data["rows"])
    assert out.splitlines()[-1].startswith("FAIL: mqtt://127.0.0.1:") and "12 failed" in out


def test_table_columns_and_verdict():
    rows = [Row("connect_will", "pass", "birth 0.3 s after power-on", "≤ 20 s", "ok"),
            Row("will_keepalive", "fail", "none in 13 s", "3..10 s", "no Will"),
            Row("qos1_session", "n.a.", detail="clean session")]
    text = table(Result("mqtt://h:1", 2, rows, 1.0))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["behaviour", "result"]
    assert lines[2].startswith("CONNECT with Will accepted") and " pass " in lines[2]
    assert "fail" in lines[3] and lines[3].endswith("no Will")
    assert lines[-1] == "FAIL: mqtt://h:1, KA=2 s, 3 behaviours, 1 failed, 1.0 s"
    assert table(Result("mqtt://h:1", 2, [rows[0], rows[2]], 1.0)).splitlines()[-1].startswith("PASS")
