"""The dashboard's streams (SPEC §6): SSE with one global event id,
`retry:`, `snapshot` first, `Last-Event-ID` replay from the ring (no gap, no
duplicate) and `resync` + `snapshot` past it or across a backend restart
without an event log, a plain replay across a restart with one (the log
read back: a truncated line, an unreadable file, bounded on disk),
the device filter, a stalled client dropped without delaying the others,
1,000 SSE clients at once, and the WebSocket channel (subscribe, events,
commands, the token). Real Mosquitto, real uvicorn on a loopback port."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from emulator.firmware.config import default_config
from emulator.testing.handles import BoardHandle
from tests.dashboard import TOKEN, Backend, many_sse, publish_telemetry, stalled_sse, stalled_ws

pytestmark = [pytest.mark.integration, pytest.mark.mosquitto]


@pytest.fixture
def backends(broker):
    made: list[Backend] = []

    def make(**options) -> Backend:
        made.append(Backend(broker, **options))
        return made[-1]

    yield make
    for b in made:
        b.close()


def _received(device: str, n: int):
    return lambda devices: device in devices and devices[device].received >= n


def _telemetry_seqs(events: list[dict]) -> list[int]:
    return [e["data"]["payload"]["seq"] for e in events if e["event"] == "telemetry"]


def test_snapshot_first_then_events_with_one_increasing_id(broker, backends, observer):
    backend = backends()
    obs = observer(broker)
    obs.publish("devices/d1/status", {"online": True, "fw": "1.2.3", "boot": 4, "reset": "soft", "ip": "10.0.0.1"},
                retain=True)
    backend.wait(lambda d: "d1" in d, 10)
    sse = backend.sse()
    assert sse.status == 200 and sse.response.headers["content-type"].startswith("text/event-stream")
    snap = sse.next()
    assert sse.retry and sse.retry > 0
    assert snap["event"] == "snapshot" and snap["id"] == snap["data"]["id"]
    (row,) = snap["data"]["devices"]
    assert row["id"] == "d1" and row["fw"] == "1.2.3" and row["boot"] == 4 and row["state"] == "online"
    publish_telemetry(obs, "d1", range(3), t=21.5)
    obs.publish("devices/d1/status", {"online": False})  # a Will
    events = sse.until(lambda e: e["event"] == "status")
    assert [e["event"] for e in events] == ["telemetry"] * 3 + ["status"]
    assert [e["id"] for e in events] == list(range(snap["id"] + 1, snap["id"] + 5))
    assert _telemetry_seqs(events) == [0, 1, 2] and events[0]["data"]["payload"]["t"] == 21.5
    assert events[-1]["data"]["view"]["state"] == "will" and events[-1]["data"]["device"] == "d1"
    sse.close()


def test_last_event_id_replays_without_gap_or_duplicate(broker, backends, observer):
    backend = backends(history=1000)
    obs = observer(broker)
    sse = backend.sse()
    snap = sse.next()
    publish_telemetry(obs, "d1", range(0, 50))
    first = sse.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 19)
    last_seen = first[-1]["id"]
    sse.close()  # the page loses its connection here
    publish_telemetry(obs, "d1", range(50, 100))  # ...and these go by while it is away
    backend.wait(_received("d1", 100), 20, "100 messages in the backend")
    again = backend.sse(last_event_id=last_seen)
    rest = again.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 99)
    assert rest[0]["event"] == "telemetry"  # a replay: no resync, no snapshot
    seqs = _telemetry_seqs(first) + _telemetry_seqs(rest)
    assert seqs == list(range(100))
    ids = [e["id"] for e in first + rest]
    assert ids == list(range(snap["id"] + 1, snap["id"] + 101))
    # and it goes on live after the replay
    publish_telemetry(obs, "d1", [100])
    assert again.next()["id"] == ids[-1] + 1
    again.close()


def test_resync_past_the_ring_and_after_a_backend_restart(broker, backends, observer):
    backend = backends(history=10)
    obs = observer(broker)
    sse = backend.sse()
    snap = sse.next()
    sse.close()
    witness = backend.sse()  # reads them all: they have gone through the ring
    publish_telemetry(obs, "d1", range(30))
    witness.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 29)
    witness.close()
    again = backend.sse(last_event_id=snap["id"])
    resync, snap2 = again.next(), again.next()
    assert resync["event"] == "resync" and "no longer in the replay buffer" in resync["data"]["reason"]
    assert snap2["event"] == "snapshot" and snap2["id"] == resync["id"] == snap["id"] + 30
    (row,) = snap2["data"]["devices"]
    assert row["received"] == 30 and row["last"]["seq"] == 29
    again.close()
    # the backend restarted without an event log (library use): its ids are
    # above every earlier one, and an earlier id gets resync
    backend.close()
    second = backends(history=10)
    fresh = second.sse(last_event_id=snap2["id"])
    resync = fresh.next()
    assert resync["event"] == "resync" and "earlier run" in resync["data"]["reason"]
    snap3 = fresh.next()
    assert snap3["event"] == "snapshot" and snap3["id"] > snap2["id"]
    fresh.close()


def _log_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().split("\n") if line]


def _ids_follow(events: list[dict], after: int) -> None:
    ids = [e["id"] for e in events]
    assert ids == list(range(after + 1, after + 1 + len(ids))), ids


def test_a_restart_with_an_event_log_replays_what_the_client_missed(broker, backends, observer, tmp_path):
    """Stop and start with the same event log (what `esp32emu dashboard`
    keeps in --state): a client back with its Last-Event-ID gets a plain
    replay (no resync, no snapshot), and the ids go on from the last one:
    no gap, no duplicate."""
    log = tmp_path / "dashboard" / "events.log"
    backend = backends(events_log=log)
    obs = observer(broker)
    sse = backend.sse()
    sse.next()  # the snapshot
    publish_telemetry(obs, "d1", range(6))
    seen = sse.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 5)
    assert _telemetry_seqs(seen) == list(range(6))
    mid = next(e["id"] for e in seen if e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 2)
    last = seen[-1]["id"]
    sse.close()
    backend.close()
    assert [e["id"] for e in _log_lines(log)][-6:] == [e["id"] for e in seen][-6:]
    second = backends(events_log=log)
    assert second.hub.last_id == last  # one id sequence across the restart
    again = second.sse(last_event_id=mid)
    replayed = [again.next() for _ in range(3)]
    assert [e["event"] for e in replayed] == ["telemetry"] * 3  # no resync, no snapshot
    assert _telemetry_seqs(replayed) == [3, 4, 5]
    _ids_follow(replayed, mid)
    publish_telemetry(obs, "d1", range(100, 103))
    fresh = again.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 102)
    assert _telemetry_seqs(fresh) == [100, 101, 102]
    _ids_follow(fresh, last)
    again.close()


def _logged_telemetry(backend, obs, n: int) -> list[dict]:
    """Telemetry seq 0..n-1 published and read back through an SSE stream of
    `backend` (which keeps an event log): the events as the client saw them."""
    sse = backend.sse()
    sse.next()  # the snapshot
    publish_telemetry(obs, "d1", range(n))
    seen = sse.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == n - 1)
    sse.close()
    return seen


def test_after_a_crash_that_lost_the_log_tail_no_id_names_two_events(broker, backends, observer, tmp_path, capsys):
    """The log is synced only on a clean stop. A machine crash can lose its
    tail: ids clients already saw. The next backend must not hand those ids
    to new events: it starts from the clock, above them, and a client whose
    id was in the lost tail gets what comes next (no resync)."""
    log = tmp_path / "events.log"
    obs = observer(broker)
    seen = _logged_telemetry(backends(events_log=log), obs, 5)
    # the crash: no clean stop, and the disk kept all but the last two lines
    crashed = tmp_path / "crashed" / "events.log"
    crashed.parent.mkdir()
    crashed.write_text("".join(line + "\n" for line in log.read_text().split("\n")[:-1][:-2]))
    capsys.readouterr()
    second = backends(events_log=crashed)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "events.log" in line]
    assert len(warnings) == 1 and "not closed cleanly" in warnings[0], warnings
    assert second.hub.first_id > seen[-1]["id"]
    again = second.sse(last_event_id=seen[-1]["id"])  # an id the crashed log lost
    publish_telemetry(obs, "d1", [50])
    (after,) = again.until(lambda e: e["event"] == "telemetry")
    assert after["data"]["payload"]["seq"] == 50 and after["id"] > seen[-1]["id"]
    again.close()


def test_a_clean_stop_marks_the_log_and_the_next_start_consumes_the_mark(broker, backends, observer, tmp_path):
    log = tmp_path / "events.log"
    backend = backends(events_log=log)
    seen = _logged_telemetry(backend, observer(broker), 2)
    backend.close()
    marker = log.with_name("events.log.closed")
    assert int(marker.read_text()) == seen[-1]["id"]
    second = backends(events_log=log)
    assert not marker.exists()  # a crash of this run must not look clean
    assert second.hub.first_id == seen[-1]["id"]


def test_a_truncated_last_line_of_the_event_log_is_skipped_with_one_warning(broker, backends, observer, tmp_path,
                                                                             capsys):
    log = tmp_path / "events.log"
    backend = backends(events_log=log)
    obs = observer(broker)
    seen = _logged_telemetry(backend, obs, 4)
    backend.close()
    with log.open("a") as f:  # a crash in the middle of a write
        f.write('{"type":"telemetry","id":%d,"device":"d1","payl' % (seen[-1]["id"] + 1))
    capsys.readouterr()
    second = backends(events_log=log)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "events.log" in line]
    assert len(warnings) == 1 and "skipped 1 line" in warnings[0], warnings
    assert second.hub.last_id == seen[-1]["id"]
    again = second.sse(last_event_id=seen[0]["id"])
    replayed = [again.next() for _ in range(len(seen) - 1)]
    assert [e["id"] for e in replayed] == [e["id"] for e in seen[1:]]
    publish_telemetry(obs, "d1", [10])
    (after,) = again.until(lambda e: e["event"] == "telemetry")
    assert after["id"] == seen[-1]["id"] + 1
    again.close()
    second.close()
    assert [e["id"] for e in _log_lines(log)][-2:] == [seen[-1]["id"], seen[-1]["id"] + 1]  # every line is an event


def test_an_unreadable_event_log_is_one_line_and_an_empty_ring(broker, backends, tmp_path, capsys):
    log = tmp_path / "events.log"
    log.write_bytes(b'{"type":"telemetry","id":5}\n\xff\xfe not text\n')
    backend = backends(events_log=log)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "events.log" in line]
    assert len(warnings) == 1 and "cannot be read" in warnings[0], warnings
    assert len(backend.hub.ring) == 0 and backend.hub.last_id > 10**12  # today's ids: start time in ms x 1000
    sse = backend.sse(last_event_id=5)
    assert sse.next()["event"] == "resync"
    sse.close()


def test_the_event_log_stays_bounded_on_disk(broker, backends, observer, tmp_path):
    """history=10: the log is compacted to the ring when it holds 20 lines;
    the restarted backend's ring is the last 10 events, and an id older
    than them gets resync."""
    log = tmp_path / "events.log"
    backend = backends(history=10, events_log=log)
    obs = observer(broker)
    sse = backend.sse()
    sse.next()
    seen: list[dict] = []
    for k in range(5):
        publish_telemetry(obs, "d1", range(10 * k, 10 * k + 10))
        seen += sse.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 10 * k + 9)
        assert len(_log_lines(log)) <= 20  # written before any client had the batch
    sse.close()
    backend.close()
    lines = _log_lines(log)
    assert 10 <= len(lines) <= 20 and lines[-1]["id"] == seen[-1]["id"]
    second = backends(history=10, events_log=log)
    assert [ev.id for ev in second.hub.ring] == [e["id"] for e in seen[-10:]]
    assert [e["id"] for e in _log_lines(log)] == [e["id"] for e in seen[-10:]]  # compacted at start
    old = second.sse(last_event_id=seen[0]["id"])
    resync = old.next()
    assert resync["event"] == "resync" and "no longer in the replay buffer" in resync["data"]["reason"]
    old.close()


def test_a_snapshot_and_what_follows_it_cover_every_event_once(broker, backends, observer):
    """Clients connecting while events flow (a whole-fleet snapshot is shared
    for a moment, the ring's events after it follow it): the snapshot's count
    plus the events after it is every message, once."""
    backend = backends()
    obs = observer(broker)
    first = backend.sse()
    first.next()
    for k in range(5):
        publish_telemetry(obs, "d1", range(10 * k, 10 * k + 10))
        sse = backend.sse()
        snap = sse.next()
        publish_telemetry(obs, "d1", [1000 + k])
        after = sse.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 1000 + k)
        rows = [r for r in snap["data"]["devices"] if r["id"] == "d1"]
        counted = rows[0]["received"] if rows else 0
        assert counted + len(after) == 10 * k + 10 + k + 1, (k, counted, len(after))
        assert [e["id"] for e in after] == list(range(snap["id"] + 1, snap["id"] + 1 + len(after)))
        sse.close()
    first.close()


def test_device_filter(broker, backends, observer):
    backend = backends()
    obs = observer(broker)
    publish_telemetry(obs, "a", [0])
    publish_telemetry(obs, "b", [0])
    backend.wait(lambda d: "a" in d and "b" in d, 10)
    sse = backend.sse("&device=b,c")
    snap = sse.next()
    assert [r["id"] for r in snap["data"]["devices"]] == ["b"]
    publish_telemetry(obs, "a", [1])
    publish_telemetry(obs, "b", [1])
    ev = sse.next()
    assert ev["data"]["device"] == "b" and ev["data"]["payload"]["seq"] == 1
    sse.close()


def test_a_stalled_client_is_dropped_and_delays_no_one(broker, backends, observer):
    """One client stops reading; the backend keeps taking MQTT, the reading
    client gets every event in order, the stalled one is dropped (its socket
    closed) once it is a bounded queue behind."""
    backend = backends(history=100, client_queue=1000)
    obs = observer(broker)
    stalled = stalled_sse(backend.port)
    healthy = backend.sse()
    healthy.next()  # snapshot
    n = 4000
    got: list[dict] = []
    lag: list[float] = []

    def read() -> None:
        try:
            while len(got) < n:
                got.append(healthy.next())
                lag.append(time.time() - got[-1]["data"]["payload"]["ts"])
        except EOFError:
            pass  # dropped too: the assertion below says so

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    blob = "x" * 500  # ~650 bytes an event: 4,000 of them are far more than the stalled socket's buffers
    for k in range(0, n, 100):  # at the pace the backend takes them in, as a fleet would send
        publish_telemetry(obs, "d1", range(k, k + 100), pad=blob)
        backend.wait(_received("d1", k + 100), 30, "the messages through MQTT")
    reader.join(60)
    assert len(got) == n and _telemetry_seqs(got) == list(range(n)), f"the reading client got {len(got)} of {n}"
    assert backend.hub.dropped_total["sse"] == 1
    # the stalled client's socket was closed by the backend: after what was buffered, EOF
    stalled.settimeout(10)
    while stalled.recv(65536):
        pass
    stalled.close()
    lag.sort()
    print(f"\nstalled client: healthy client's publish-to-read lag p50 {lag[len(lag) // 2] * 1000:.1f} ms, "
          f"p99 {lag[int(len(lag) * 0.99)] * 1000:.1f} ms over {n} events")
    healthy.close()


def test_a_stalled_websocket_is_dropped(broker, backends, observer):
    backend = backends(history=100, client_queue=1000)
    obs = observer(broker)
    stalled = stalled_ws(backend.port, {"type": "subscribe", "devices": "*"})
    witness = backend.sse()  # a reader: the hub has subscribed the WebSocket once this one is in
    witness.next()
    n = 4000
    for k in range(0, n, 100):  # the witness keeps up; the WebSocket reads nothing
        publish_telemetry(obs, "d1", range(k, k + 100), pad="x" * 500)
        witness.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == k + 99)
    assert backend.hub.dropped_total["ws"] == 1 and backend.hub.connected["ws"] == 0
    stalled.settimeout(10)
    while stalled.recv(65536):  # what was buffered, then the backend's close
        pass
    stalled.close()
    witness.close()


def test_1000_sse_clients_connect_at_once(broker, backends, observer):
    backend = backends()
    obs = observer(broker)
    n = 1000
    connected, fanout, distinct = asyncio.run(asyncio.wait_for(
        many_sse(backend.port, n, lambda: publish_telemetry(obs, "d1", [0])), 120))
    assert distinct == 1  # every client got the same event (one id)
    metrics = backend.get("/metrics").text
    print(f"\n{n} SSE clients: all connected with a snapshot in {connected:.2f} s; one event reached all in {fanout * 1000:.0f} ms")
    assert "esp32emu_clients_dropped_total{transport=\"sse\"} 0" in metrics


def _board(emu, broker, device_id: str) -> BoardHandle:
    return BoardHandle(emu, device_id, default_config(device_id, broker.host, broker.port, interval=1, keepalive=5)).boot()


def test_websocket_subscribe_events_and_commands(emu, broker, backends):
    backend = backends()
    a, b = _board(emu, broker, "dev-00001"), _board(emu, broker, "dev-00002")
    backend.wait(lambda d: all(x in d and d[x].online for x in (a.id, b.id)), 30, "both online")
    url = f"ws://127.0.0.1:{backend.port}/api/ws"
    with pytest.raises(InvalidStatus) as e:
        ws_connect(url, open_timeout=10).close()
    assert e.value.response.status_code == 401
    with ws_connect(f"{url}?token={TOKEN}", open_timeout=10) as ws:
        ws.send(json.dumps({"type": "subscribe", "devices": [a.id]}))
        snap = json.loads(ws.recv(10))
        assert snap["type"] == "snapshot" and [r["id"] for r in snap["devices"]] == [a.id]
        tele = json.loads(ws.recv(10))
        assert tele["type"] == "telemetry" and tele["device"] == a.id and tele["id"] > snap["id"]
        ws.send(json.dumps({"type": "command", "device": b.id, "op": "ping", "id": "ws-1"}))
        ws.send(json.dumps({"type": "command", "device": a.id, "op": "ping", "timeout_s": -1}))
        ws.send("not json")
        replies, errors = {}, []
        while len(replies) < 2 or not errors:
            msg = json.loads(ws.recv(15))
            if msg["type"] == "result" and "status" in msg:
                replies[msg["status"]] = msg
            elif msg["type"] == "error":
                errors.append(msg)
            else:
                assert msg["device"] == a.id  # the subscription: only a's events
        assert replies[200]["command"] == "ws-1" and replies[200]["ok"] is True and "pong" in replies[200]["result"]
        assert "timeout_s" in replies[400]["error"]
    # the Bearer header works for a WebSocket too (non-browser clients)
    with ws_connect(url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "subscribe", "devices": "*"}))
        assert {r["id"] for r in json.loads(ws.recv(10))["devices"]} == {a.id, b.id}


def test_heartbeat_comment(broker, backends, monkeypatch):
    from emulator.dashboard import app

    monkeypatch.setattr(app, "HEARTBEAT_S", 0.2)
    backend = backends()
    sse = backend.sse()
    sse.next()
    t0 = time.monotonic()
    line = sse.response.readline()  # nothing else is happening: a comment comes
    assert line == b": heartbeat\n" and time.monotonic() - t0 < 5
    sse.close()
