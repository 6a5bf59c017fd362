"""The whole-fleet snapshot written on the loop a chunk at a time (issue 16):
the same bytes as encoding it in one go, the model as of its id with the
events after it queued for the client, one snapshot for the clients of the
next moment, nothing more written for clients that left, and a loop that a
page opening does not hold (measured against the one-go encoding on the same
model). The observer here is the real FleetObserver, its model filled by
the messages paho would hand it (no broker: thousands of devices in a
fraction of a second); the end-to-end streams run on a real Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from paho.mqtt.client import MQTTMessage
from websockets.sync.client import connect as ws_connect

from emulator.dashboard import events
from emulator.dashboard.events import Event, Snapshot, device_row, encode
from emulator.dashboard.hub import Hub
from emulator.observe.counting import FleetObserver
from tests.dashboard import TOKEN, Backend, publish_telemetry


def _deliver(obs: FleetObserver, topic: str, payload, retain: bool = False) -> None:
    msg = MQTTMessage(topic=topic.encode())
    msg.payload = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    msg.retain = retain
    obs._on_message(obs.client, None, msg)


def _fleet(n: int) -> FleetObserver:
    """An observer (never connected) whose model holds n devices with a
    birth and a telemetry message each; some ids and strings a page must
    never see as HTML, some unicode, one NaN reading."""
    obs = FleetObserver("127.0.0.1", 1)
    obs.keep(0, 0)
    for i in range(n):
        d = f"<script>alert({i})&" if i % 97 == 0 else f"dév-ü-{i:05d}" if i % 13 == 0 else f"dev-{i:05d}"
        _deliver(obs, f"devices/{d}/status", {"online": True, "fw": "1.2.3</script>&" if i % 7 == 0 else "1.2.3",
                                              "boot": i, "reset": "soft", "ip": "10.0.0.1"}, retain=True)
        _deliver(obs, f"devices/{d}/telemetry", {"seq": i, "ts": 1.7e9, "temp": 21.5, "label": "𝄞 ünï <b>"})
    _deliver(obs, "devices/dev-00001/telemetry", b'{"seq": 5, "temp": NaN}')
    return obs


def _old_snapshot(hub: Hub) -> Event:
    """The snapshot as the backend wrote it before: rows built under the
    observer's lock and the whole object encoded in one go."""
    wall = time.time()
    with hub.observer.lock:
        sid = hub.last_id
        rows = [device_row(d, v, wall) for d, v in hub.observer.devices.items()]
    return Event(sid, "snapshot", None, {"type": "snapshot", "id": sid, "at": wall, "devices": rows})


async def _written(snap: Snapshot) -> Snapshot:
    if snap.task is not None:
        await snap.task
    return snap


def test_a_snapshot_written_in_chunks_is_the_same_bytes_as_one_go():
    obs = _fleet(1000)
    hub = Hub(obs)
    try:
        async def main():
            snap = await _written(hub.snapshot(None))
            assert snap.task is not None  # 1,000 devices: written over several turns of the loop
            ref = Event(snap.id, "snapshot", None, {"type": "snapshot", "id": snap.id, "at": snap.wall, "devices": [
                device_row(d, v, snap.wall) for d, v in obs.devices.items()]})
            assert snap.json == ref.json and snap.sse == ref.sse
            assert "<" not in snap.json and '"nan"' in snap.json  # escaped, and the NaN reading as text
            some = frozenset(["dev-00001", "<script>alert(97)&", "dév-ü-00013", "never-seen"])
            part = await _written(hub.snapshot(some))
            assert part.json == encode({"type": "snapshot", "id": part.id, "at": part.wall, "devices": [
                device_row(d, obs.devices[d], part.wall) for d in some if d in obs.devices]})

        asyncio.run(main())
    finally:
        hub.detach()


async def _longest_block(work) -> float:
    """The longest the loop went without running a task that sleeps 1 ms at a time, while `work()` runs."""
    longest, done = 0.0, asyncio.Event()

    async def probe():
        nonlocal longest
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest, last = max(longest, now - last), now

    task = asyncio.create_task(probe())
    await asyncio.sleep(0.005)
    await work()
    await asyncio.sleep(0.005)
    done.set()
    await task
    return longest


def test_opening_a_whole_fleet_stream_does_not_hold_the_loop():
    """5,000 devices: the loop's longest stretch while a client opens a
    whole-fleet stream, against the snapshot written in one go on the same
    model (each side the best of two, against the machine's noise)."""
    obs = _fleet(5000)

    async def main():
        old, new = [], []
        for _ in range(2):
            hub = Hub(obs)  # a fresh one: no snapshot to reuse
            hub.bind(asyncio.get_running_loop())
            got = {}

            async def one_go():
                got["old"] = _old_snapshot(hub)

            async def open_stream():
                client, first = hub.open(None, None, "sse")
                assert first[0].json is None  # written after open() returned
                assert await client.ready()
                got["new"] = first[0]
                hub.close(client, "sse")

            old.append(await _longest_block(one_go))
            new.append(await _longest_block(open_stream))
            hub.detach()
            assert len(json.loads(got["new"].json)["devices"]) == len(json.loads(got["old"].json)["devices"]) == len(obs.devices) > 4900
        print(f"\nloop held while a 5,000-device snapshot is written: one go {min(old) * 1000:.1f} ms, "
              f"in chunks {min(new) * 1000:.1f} ms (runs: {[round(x * 1000, 1) for x in old]}, "
              f"{[round(x * 1000, 1) for x in new]})")
        assert min(new) < min(old) / 2, (old, new)

    asyncio.run(main())


def test_the_snapshot_is_the_model_as_of_its_id_and_what_follows_is_queued():
    obs = _fleet(600)
    hub = Hub(obs)

    async def main():
        hub.bind(asyncio.get_running_loop())
        client, first = hub.open(None, None, "sse")
        other, first2 = hub.open(None, None, "ws")  # the next moment: the same snapshot, written once
        snap = first[0]
        assert first2[0] is snap and snap.json is None and client.after == other.after == snap.id
        _deliver(obs, "devices/dev-00001/telemetry", {"seq": 6})  # while it is being written
        assert await client.ready() and await other.ready()
        (row,) = [r for r in json.loads(snap.json)["devices"] if r["id"] == "dev-00001"]
        assert row["received"] == 2 and row["last"]["seq"] == 5  # as of its id, not after
        events = await client.next(10)
        assert [(e.id, e.type, e.device) for e in events] == [(snap.id + 1, "telemetry", "dev-00001")]
        again, first3 = hub.open(None, None, "sse")  # the snapshot written: handed out as it is
        assert first3[0] is snap and again.snapshot is None
        for c, kind in ((client, "sse"), (other, "ws"), (again, "sse")):
            hub.close(c, kind)

    try:
        asyncio.run(main())
    finally:
        hub.detach()


def test_clients_that_leave_or_are_dropped_while_it_is_written_cost_nothing_more():
    obs = _fleet(600)
    hub = Hub(obs, client_queue=2)

    async def main():
        hub.bind(asyncio.get_running_loop())
        a, first = hub.open(None, None, "sse")
        b, _ = hub.open(None, None, "sse")
        snap = first[0]
        hub.close(a, "sse")  # left before it was written: b still waits for it
        assert not snap.abandoned and not snap.task.done()
        hub.close(b, "sse")  # the last one: the writing stops
        assert snap.abandoned and snap.task.cancelling()
        c, first = hub.open(None, None, "sse")  # not handed the abandoned one
        assert first[0] is not snap and first[0].json is None
        for seq in range(3):  # more than c may have waiting: dropped while its snapshot is written
            _deliver(obs, "devices/dev-00002/telemetry", {"seq": 10 + seq})
        assert await c.ready() is False and c.dropped and c.queue == []
        assert first[0].abandoned  # no one else waited: not written further
        await asyncio.gather(snap.task, first[0].task, return_exceptions=True)
        assert snap.json is None and first[0].json is None
        hub.close(c, "sse")

    try:
        asyncio.run(main())
    finally:
        hub.detach()


@pytest.mark.integration
@pytest.mark.mosquitto
def test_streams_wait_for_a_snapshot_written_in_chunks(broker, observer, monkeypatch):
    """Over real SSE and WebSocket on a real Mosquitto, with a snapshot
    written two devices at a time: `retry:`, the snapshot, then the events
    after its id, none lost or repeated."""
    monkeypatch.setattr(events, "SNAPSHOT_CHUNK", 2)
    backend = Backend(broker)
    try:
        obs = observer(broker)
        for d in ("a", "b", "c", "d", "e"):
            publish_telemetry(obs, d, [0])
        backend.wait(lambda devs: len(devs) == 5, 10, "5 devices")
        sse = backend.sse()
        snap = sse.next()
        assert sse.retry and snap["event"] == "snapshot" and len(snap["data"]["devices"]) == 5
        publish_telemetry(obs, "c", [1, 2])
        after = sse.until(lambda e: e["event"] == "telemetry" and e["data"]["payload"]["seq"] == 2)
        assert [e["id"] for e in after] == [snap["id"] + 1, snap["id"] + 2]
        with ws_connect(f"ws://127.0.0.1:{backend.port}/api/ws?token={TOKEN}", open_timeout=10) as ws:
            ws.send(json.dumps({"type": "subscribe", "devices": ["a", "b", "c", "zz"]}))
            wsnap = json.loads(ws.recv(10))
            assert wsnap["type"] == "snapshot" and sorted(r["id"] for r in wsnap["devices"]) == ["a", "b", "c"]
            assert [r["received"] for r in wsnap["devices"] if r["id"] == "c"] == [3]
            publish_telemetry(obs, "c", [3])
            tele = json.loads(ws.recv(10))
            assert tele["type"] == "telemetry" and tele["id"] == wsnap["id"] + 1 and tele["payload"]["seq"] == 3
        sse.close()
    finally:
        backend.close()
