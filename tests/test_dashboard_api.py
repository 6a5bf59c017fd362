"""The dashboard's REST side and its token (SPEC §6), against a real
Mosquitto and emulated boards, served by real uvicorn on a loopback port:
/api/devices, /api/devices/{id}, commands (200 / 504 / 400 / 404, never by
GET), /metrics, the page, device strings JSON-encoded, and the command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from emulator.firmware.config import default_config
from emulator.testing.handles import BoardHandle
from tests.dashboard import TOKEN, Backend

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def backend(broker):
    b = Backend(broker)
    yield b
    b.close()


def _board(emu, broker, device_id: str, **config) -> BoardHandle:
    cfg = default_config(device_id, broker.host, broker.port, interval=1, keepalive=2, **config)
    return BoardHandle(emu, device_id, cfg).boot()


def _online_with_telemetry(*ids):
    return lambda devices: all(d in devices and devices[d].online and devices[d].received >= 2 for d in ids)


def test_devices_device_and_commands_with_emulated_boards(emu, broker, backend):
    a, b = _board(emu, broker, "dev-00001"), _board(emu, broker, "dev-00002")
    backend.wait(_online_with_telemetry(a.id, b.id), 30, "both boards online with telemetry")

    r = backend.get("/api/devices")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    rows = {row["id"]: row for row in r.json()["devices"]}
    assert set(rows) == {"dev-00001", "dev-00002"}
    for row in rows.values():
        assert row["online"] is True and row["state"] == "online" and row["reason"] is None
        assert row["fw"] and isinstance(row["boot"], int) and row["reset"] == "power_on"
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+", row["ip"])
        assert isinstance(row["last"]["seq"], int) and row["received"] >= 2 and row["lost"] == 0
        assert row["age_s"] is not None and row["since"] is not None
        assert row["reconnects"] == 0 and row["wills"] == 0

    one = backend.get("/api/devices/dev-00001").json()
    assert one["id"] == "dev-00001" and len(one["telemetry"]) >= 2
    seqs = [t["payload"]["seq"] for t in one["telemetry"]]
    assert seqs == sorted(seqs)
    assert [p["state"] for p in one["presence"]][-1] == "online"
    assert backend.get("/api/devices/nobody").status_code == 404

    r = backend.command("dev-00001", {"op": "ping"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True and "pong" in body["result"] and body["rtt_ms"] >= 0 and body["device"] == "dev-00001"
    r = backend.command("dev-00002", {"op": "set_interval", "args": {"seconds": 0}, "id": "my-id-1"})
    assert r.status_code == 200 and r.json()["ok"] is False and r.json()["command"] == "my-id-1"  # the device's own error
    assert "seconds" in r.json()["error"]

    assert backend.command("nobody", {"op": "ping"}).status_code == 404
    for bad in (b"not json", [1, 2], {"args": {}}, {"op": ""}, {"op": "ping", "args": [1]},
                {"op": "ping", "timeout_s": 0}, {"op": "ping", "timeout_s": "1"}, {"op": "ping", "id": 5}):
        r = backend.command("dev-00001", bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]

    # the device gone (power loss, then its Will): no result in time -> 504
    b.power_loss()
    backend.wait(lambda d: d["dev-00002"].state == "will", b.will_deadline + 10, "dev-00002's Will")
    r = backend.command("dev-00002", {"op": "ping", "timeout_s": 1})
    assert r.status_code == 504 and "no result" in r.json()["error"]
    row = {x["id"]: x for x in backend.get("/api/devices").json()["devices"]}["dev-00002"]
    assert row["state"] == "will" and row["online"] is False and row["wills"] == 1
    presence = backend.get("/api/devices/dev-00002").json()["presence"]
    assert [p["state"] for p in presence][-2:] == ["online", "will"]

    text = backend.get("/metrics").text
    assert 'esp32emu_devices{state="online"} 1' in text and 'esp32emu_devices{state="will"} 1' in text
    count = int(re.search(r"^esp32emu_command_rtt_ms_count (\d+)$", text, re.M).group(1))
    assert count == 2  # the two answered commands
    assert re.search(r'^esp32emu_command_rtt_ms_bucket\{le="\+Inf"\} 2$', text, re.M)
    assert float(re.search(r"^esp32emu_telemetry_per_second (\S+)$", text, re.M).group(1)) > 0  # dev-00001 still sends


def test_the_token_and_commands_never_by_get(broker, backend, observer):
    obs = observer(broker)
    obs.subscribe("devices/+/cmd")
    obs.publish("devices/dev-9/status", {"online": True, "fw": "1.0.0", "boot": 1, "reset": "power_on", "ip": "10.0.0.9"},
                retain=True)
    backend.wait(lambda d: "dev-9" in d, 10, "dev-9 seen")
    base = backend.dashboard.base
    with httpx.Client(base_url=base, timeout=10) as anon:
        for method, path in [("GET", "/api/devices"), ("GET", "/api/devices/dev-9"), ("GET", "/api/events"),
                             ("POST", "/api/devices/dev-9/commands")]:
            assert anon.request(method, path, content=b'{"op": "ping"}').status_code == 401, path
            assert anon.request(method, path + "?token=wrong", content=b'{"op": "ping"}').status_code == 401, path
            assert anon.request(method, path, headers={"Authorization": "Bearer nope"},
                                content=b'{"op": "ping"}').status_code == 401, path
        assert anon.get(f"/api/devices?token={TOKEN}").status_code == 200
        assert anon.get("/api/devices", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        # a command by GET (a link, a prefetch) is refused even with the token
        r = anon.get(f"/api/devices/dev-9/commands?token={TOKEN}&op=reboot")
        assert r.status_code == 405 and r.headers["allow"] == "POST"
        page = anon.get("/")  # the page itself needs no token: it carries none of the data
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert anon.get("/metrics").status_code == 200
    # the GET published nothing: a marker sent after it is the first thing on .../cmd
    obs.publish("devices/marker/cmd", b"{}")
    first = obs.wait_for(lambda m: m.topic.endswith("/cmd"), 10)
    assert first.topic == "devices/marker/cmd"


def test_device_strings_are_json_never_html(broker, backend, observer):
    evil_id = "<script>alert(1)<"  # '/' cannot be in a topic level; '<', '>' and quotes can
    evil = '"><img src=x onerror=alert(1)>'
    obs = observer(broker)
    obs.publish(f"devices/{evil_id}/status", {"online": True, "fw": evil, "boot": 1, "reset": "<b>", "ip": evil},
                retain=True)
    obs.publish(f"devices/{evil_id}/telemetry", {"seq": 0, "ts": None, "t": evil}, qos=0)
    backend.wait(lambda d: evil_id in d and d[evil_id].received == 1, 10, "the hostile device seen")
    r = backend.get("/api/devices")
    assert "<" not in r.text and ">" not in r.text, r.text  # escaped as \u003c, \u003e
    (row,) = r.json()["devices"]
    assert row["id"] == evil_id and row["fw"] == evil and row["last"]["t"] == evil and row["reset"] == "<b>"
    sse = backend.sse()
    snap = sse.next()
    assert snap["event"] == "snapshot" and snap["data"]["devices"][0]["fw"] == evil
    sse.close()
    r = backend.command(evil_id, {"op": "ping", "timeout_s": 0.5})  # seen: published, no answer
    assert r.status_code == 504 and "<" not in r.text


def test_esp32emu_dashboard_command_line(tmp_path):
    """Without --broker it starts a private Mosquitto; without --token it makes
    one and prints it with the page's URL; Ctrl-C stops it cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "emulator", "--state", str(tmp_path / "s"), "dashboard", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    try:
        url = None
        lines = []
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"dashboard at (http://127\.0\.0\.1:\d+)/\?token=(\S+)", line)
            if m:
                url, token = m.groups()
                break
        assert url, "".join(lines)
        assert "private Mosquitto" in "".join(lines)
        assert httpx.get(url + "/", timeout=10).status_code == 200
        assert httpx.get(url + "/api/devices", timeout=10).status_code == 401
        r = httpx.get(url + "/api/devices", params={"token": token}, timeout=10)
        assert r.status_code == 200 and r.json()["devices"] == []
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err


def test_dashboard_options_are_checked(tmp_path):
    for argv, why in [(["--token", "short"], "--token"), (["--history", "0"], "--history"),
                      (["--port", "70000"], "--port"), (["--prefix", "a/#"], "--prefix")]:
        r = subprocess.run([sys.executable, "-m", "emulator", "--state", str(tmp_path), "dashboard", *argv],
                           capture_output=True, text=True, env=ENV, timeout=30)
        assert r.returncode == 2 and why in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_json_of_a_status_event_is_one_line():
    from emulator.dashboard.hub import encode

    text = encode({"x": "a\nb\u2028<&>", "n": float("nan")})
    assert "\n" not in text and "<" not in text and json.loads(text) == {"x": "a\nb\u2028<&>", "n": "nan"}


def test_fleet_dashboard_shares_the_fleets_observer(tmp_path):
    """`fleet --dashboard`: the URL and token are printed, the page's stream
    shows the fleet's boards coming online, a command goes through, and at
    the end the fleet's report and the dashboard agree on who is online."""
    from tests.dashboard import SSE

    proc = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--state", str(tmp_path / "s"), "fleet", "--devices", "3", "--interval", "1",
         "--keepalive", "5", "--duration", "120", "--quiet", "--dashboard", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"dashboard at http://127\.0\.0\.1:(\d+)/\?token=(\S+)", line)
            if m:
                port, token = int(m.group(1)), m.group(2)
                break
        else:
            raise AssertionError("".join(lines))
        sse = SSE(port, f"/api/events?token={token}", timeout=30)
        online = {r["id"] for r in sse.next()["data"]["devices"] if r["online"]}
        while len(online) < 3:
            ev = sse.next()
            if ev["event"] == "status" and ev["data"]["view"]["online"]:
                online.add(ev["data"]["device"])
        sse.close()
        assert online == {"dev-00001", "dev-00002", "dev-00003"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                          timeout=30) as http:
            r = http.post("/api/devices/dev-00002/commands", json={"op": "ping"})
            assert r.status_code == 200 and r.json()["ok"] is True
            rows = http.get("/api/devices").json()["devices"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    assert report["online_at_end"] == sum(r["online"] for r in rows) == 3
    assert report["commands_sent"] >= 1  # the dashboard's ping went through the fleet's observer


def test_over_mqtts_as_the_backend_identity(broker_factory, emu, tmp_path):
    """Over mutual TLS with the ACL of `esp32emu broker --tls`: the backend,
    as certs/backend.crt, sees the board and its command round trip works."""
    from emulator.broker import certs
    from emulator.broker.mosquitto import TlsConfig

    pki = tmp_path / "pki"
    certs.make_pki(pki, ["dev-00001"])
    broker = broker_factory(tls=TlsConfig.from_pki(pki))
    backend = Backend(broker, certs=pki)
    try:
        cfg = default_config("dev-00001", "127.0.0.1", broker.port, interval=1, keepalive=5, broker={"tls": True})
        board = BoardHandle(emu, "dev-00001", cfg, certs=pki).boot()
        backend.wait(_online_with_telemetry("dev-00001"), 30, f"the TLS board online with telemetry\n{board.report()}")
        r = backend.command("dev-00001", {"op": "ping"})
        assert r.status_code == 200 and r.json()["ok"] is True, r.text
    finally:
        backend.close()
