"""SPEC §4 item 15: every command, bad input, duplicate ids and a flood of
1000 commands, sent by a paho-mqtt backend to one emulated board."""

from __future__ import annotations

import json

import pytest

from tests.boards import KA, both_backends, is_birth

pytestmark = pytest.mark.integration

DEV = "dev-cmd"
CMD = f"devices/{DEV}/cmd"
RESULT = f"devices/{DEV}/cmd/result"


@pytest.fixture
def online(emu, broker, observer):
    obs = observer(broker)
    obs.subscribe(f"devices/{DEV}/#")
    board = emu.add_board(DEV, broker.host, broker.port, keepalive=KA, interval=1, backoff={"base_ms": 200, "cap_ms": 2000})
    obs.wait_for(is_birth(DEV), 10)
    return board, obs


def send(obs, payload, qos=1):
    mark = len(obs.messages)
    obs.publish(CMD, payload if isinstance(payload, (bytes, str)) else json.dumps(payload), qos=qos)
    return mark


def result_for(obs, cmd_id, mark, timeout=5.0):
    return obs.wait_for(lambda m: m.topic == RESULT and m.json().get("id") == cmd_id, timeout, start=mark).json()


@both_backends
def test_each_op_answers(online):
    board, obs = online
    mark = send(obs, {"id": "p1", "op": "ping"})
    res = result_for(obs, "p1", mark)
    assert res["ok"] is True and isinstance(res["result"]["pong"], int)

    mark = send(obs, {"id": "r1", "op": "read"})
    res = result_for(obs, "r1", mark)
    assert res["ok"] and 20 < res["result"]["mcu"] < 80

    mark = send(obs, {"id": "g1", "op": "get_config"})
    cfg = result_for(obs, "g1", mark)["result"]
    assert cfg["id"] == DEV and cfg["keepalive"] == KA
    assert cfg["wifi"]["password"] == "***", "secrets must never be published"

    mark = send(obs, {"id": "l1", "op": "led", "args": {"on": True}})
    assert result_for(obs, "l1", mark) == {"id": "l1", "ok": True, "result": {"led": True}}
    assert board.pins[2] == 1

    mark = send(obs, {"id": "s1", "op": "stats"})
    stats = result_for(obs, "s1", mark)["result"]
    assert set(stats) == {"heap_free", "heap_alloc", "heap_max_free", "uptime_s", "reconnects", "rssi"}
    assert 0 < stats["heap_max_free"] <= stats["heap_free"]
    assert stats["heap_free"] > 0 and stats["reconnects"] == 0 and -100 < stats["rssi"] < 0

    mark = send(obs, {"id": "i1", "op": "set_interval", "args": {"seconds": 3}})
    assert result_for(obs, "i1", mark)["result"] == {"interval": 3}
    t1 = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 5, start=mark)
    t2 = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 6, start=obs.messages.index(t1) + 1)
    assert 2.5 <= t2.t - t1.t <= 3.6


@both_backends
def test_set_interval_wakes_the_sleeping_telemetry(emu, broker, observer):
    # Telemetry sleeps a whole interval; set_interval cancels that sleep, so
    # a 60 s schedule gives way to the new one at once (the next message
    # within about a second, not after the 60 s sleep), and the task lives on.
    obs = observer(broker)
    obs.subscribe(f"devices/{DEV}/#")
    emu.add_board(DEV, broker.host, broker.port, keepalive=KA, interval=60)
    obs.wait_for(is_birth(DEV), 10)
    first = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 5)  # the first one, right after the birth
    mark = send(obs, {"id": "w1", "op": "set_interval", "args": {"seconds": 1}})
    assert result_for(obs, "w1", mark)["result"] == {"interval": 1}
    woke = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 5, start=mark)
    assert woke.json()["seq"] == first.json()["seq"] + 1
    after = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 5, start=obs.messages.index(woke) + 1)
    assert 0.5 <= after.t - woke.t <= 1.6


@both_backends
def test_reboot_goes_offline_then_comes_back(online):
    board, obs = online
    mark = send(obs, {"id": "rb", "op": "reboot"})
    assert result_for(obs, "rb", mark)["result"] == {"rebooting": True}
    off = obs.wait_for(lambda m: m.topic.endswith("/status") and m.json()["online"] is False, 5, start=mark)
    assert off.json() == {"online": False, "reason": "reboot"}
    back = obs.wait_for(is_birth(DEV, boot=2), 15, start=mark).json()
    assert back["reset"] == "hard"


@both_backends
def test_sleep_goes_offline_and_wakes_from_deepsleep(online):
    board, obs = online
    mark = send(obs, {"id": "zz", "op": "sleep", "args": {"seconds": 2}})
    assert result_for(obs, "zz", mark)["ok"] is True
    off = obs.wait_for(lambda m: m.topic.endswith("/status") and m.json()["online"] is False, 5, start=mark)
    assert off.json() == {"online": False, "reason": "sleep"}
    back = obs.wait_for(is_birth(DEV, boot=2), 15, start=mark)
    assert back.json()["reset"] == "deepsleep"
    assert back.t - off.t >= 2.0


BAD = [
    (b"{not json", None, "not valid JSON"),
    (b"\xff\xfe", None, "UTF-8"),
    (b"[1, 2]", None, "JSON object"),
    ({"op": "ping"}, None, "id"),
    ({"id": 5, "op": "ping"}, None, "id"),
    ({"id": "b1", "op": "explode"}, "b1", "unknown op"),
    ({"id": "b2", "op": 7}, "b2", "op"),
    ({"id": "b3", "op": "set_interval", "args": {"seconds": 0}}, "b3", "seconds"),
    ({"id": "b4", "op": "set_interval", "args": {"seconds": "10"}}, "b4", "seconds"),
    ({"id": "b5", "op": "set_interval", "args": {"seconds": True}}, "b5", "seconds"),
    ({"id": "b6", "op": "led", "args": {"on": 1}}, "b6", "on"),
    ({"id": "b7", "op": "sleep", "args": {}}, "b7", "seconds"),
    ({"id": "b8", "op": "ping", "args": [1]}, "b8", "args"),
    ({"id": "b9", "op": "ping", "args": {"x": 1}}, "b9", "x"),
    (json.dumps({"id": "big", "op": "ping", "pad": "x" * 5000}).encode(), None, "too large"),
]


@both_backends
@pytest.mark.parametrize("payload,cmd_id,error", BAD, ids=[e for _, _, e in BAD])
def test_bad_input_gets_clear_error_and_device_keeps_publishing(online, payload, cmd_id, error):
    board, obs = online
    mark = send(obs, payload)
    res = obs.wait_for(lambda m: m.topic == RESULT, 5, start=mark).json()
    assert res["ok"] is False and res["id"] == cmd_id
    assert error.lower() in res["error"].lower(), res["error"]
    assert "\n" not in res["error"]
    seq = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 3, start=mark).json()["seq"]
    nxt = obs.wait_for(lambda m: m.topic.endswith("/telemetry") and m.json()["seq"] == seq + 1, 3, start=mark)
    assert nxt.json()["seq"] == seq + 1


@both_backends
def test_duplicate_id_is_not_executed_twice(online):
    board, obs = online
    mark = send(obs, {"id": "dup", "op": "stats"})
    first = result_for(obs, "dup", mark)
    mark2 = send(obs, {"id": "dup", "op": "stats"})
    again = result_for(obs, "dup", mark2)
    assert again == first, "the first result is sent again, not a fresh one"
    mark3 = send(obs, {"id": "dup-led", "op": "led", "args": {"on": True}})
    result_for(obs, "dup-led", mark3)
    board.pins[2] = 0  # somebody switched it off; a redelivery must not switch it on again
    mark4 = send(obs, {"id": "dup-led", "op": "led", "args": {"on": True}})
    result_for(obs, "dup-led", mark4)
    assert board.pins[2] == 0


class _PeakList(list):
    """A command queue that remembers its longest length."""

    peak = 0

    def append(self, item) -> None:
        super().append(item)
        self.peak = max(self.peak, len(self))


def _device(board):
    """The firmware's Device object of `board`'s current boot."""
    import gc

    found = [o for o in gc.get_objects() if type(o).__name__ == "Device" and getattr(o, "id", None) == board.id and hasattr(o, "_cmds")]
    assert len(found) == 1, found
    return found[0]


QUEUE_CAP = 16  # firmware/device.py _CMD_QUEUE


# A QoS 0 flood reaches the board at wire speed (3000 are answered within
# about 0.3 s), so it takes more of them to span several telemetry periods.
@pytest.mark.parametrize("qos, flood", [(0, 20000), (1, 3000)])
def test_flood_of_commands_is_answered_busy_beyond_the_queue_and_telemetry_flows(emu, broker_factory, observer, qos, flood):
    """SPEC §4 item 15 (issue 12 D1): a flood of thousands of commands. The board keeps
    at most 16 waiting, answers each of the others at once with ok: false
    "busy: ...", keeps publishing telemetry while results are still pending,
    and sends exactly one result per command. (The broker queues without
    limit, so every message it gets reaches the board and the backend.)"""
    broker = broker_factory(extra_config=["max_queued_messages 0"])
    dev = f"dev-flood{qos}"
    cmd, result = f"devices/{dev}/cmd", f"devices/{dev}/cmd/result"
    obs = observer(broker)
    obs.subscribe(f"devices/{dev}/#")
    # Telemetry 5 times a second, so some falls inside even a quick flood.
    board = emu.add_board(dev, broker.host, broker.port, keepalive=KA, interval=0.2, backoff={"base_ms": 200, "cap_ms": 2000})
    obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 10)
    device = _device(board)
    assert not device._cmds
    queue = device._cmds = _PeakList()
    mark = len(obs.messages)
    for i in range(flood):
        obs.client.publish(cmd, json.dumps({"id": f"f{i}", "op": "ping"}), qos=qos)
    want = {f"f{i}" for i in range(flood)}
    results: dict[str, list[dict]] = {}
    telemetry_while_pending = []

    def all_answered(m) -> bool:
        if m.topic == result:
            body = m.json()
            results.setdefault(body["id"], []).append(body)
            want.discard(body["id"])
        elif m.topic.endswith("/telemetry") and results and want:
            telemetry_while_pending.append(m.json()["seq"])
        return not want

    obs.wait_for(all_answered, 120, start=mark)
    assert telemetry_while_pending, "no telemetry between the first and the last result"
    assert telemetry_while_pending == sorted(set(telemetry_while_pending))
    ok = [r[0] for r in results.values() if r[0]["ok"]]
    busy = [r[0] for r in results.values() if not r[0]["ok"]]
    assert all(r["error"] == f"busy: {QUEUE_CAP} commands queued" for r in busy), busy[:3]
    # At QoS 0 the flood arrives at wire speed and overruns the queue. At QoS 1
    # Mosquitto's inflight window (20) and the reader's hold at 8 queued pace
    # it, so a board that keeps up answers every one ok: "busy" there depends
    # on the machine's speed and is not asserted (the cap is, below).
    assert ok and (busy or qos == 1), (len(ok), len(busy))
    assert all(set(r["result"]) == {"pong"} for r in ok)
    assert queue.peak <= QUEUE_CAP, queue.peak
    # Exactly one result each: wait for the next telemetry after the last
    # result, then count (a late duplicate would be here by then).
    after = len(obs.messages)
    obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 5, start=after)
    ids = [m.json()["id"] for m in obs.messages[mark:] if m.topic == result]
    assert len(ids) == flood == len(set(ids))
    # Still up and still taking commands once the flood has passed.
    assert board.halted is False
    mark = len(obs.messages)
    obs.publish(cmd, {"id": "after-flood", "op": "ping"})
    assert obs.wait_for(lambda m: m.topic == result and m.json()["id"] == "after-flood", 5, start=mark).json()["ok"] is True


@both_backends
def test_flood_of_1000_commands(online):
    """SPEC section 4 item 15 on both backends: 1000 QoS 1 commands in a burst. Every
    id gets exactly one result (ok, or "busy" beyond the bounded queue), and the
    board stays up and keeps publishing."""
    board, obs = online
    mark = len(obs.messages)
    for i in range(1000):
        obs.client.publish(CMD, json.dumps({"id": f"f{i}", "op": "ping"}), qos=1)
    want = {f"f{i}" for i in range(1000)}

    def all_answered(m) -> bool:
        if m.topic == RESULT:
            body = m.json()
            assert body["ok"] is True or body["error"] == f"busy: {QUEUE_CAP} commands queued", body
            want.discard(body["id"])
        return not want

    obs.wait_for(all_answered, 60, start=mark)
    before = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 5, start=len(obs.messages)).json()["seq"]
    obs.wait_for(lambda m: m.topic.endswith("/telemetry") and m.json()["seq"] > before, 5)
    results = [m.json()["id"] for m in obs.messages[mark:] if m.topic == RESULT]
    assert len(results) == 1000 == len(set(results))
    assert board.halted is False
    # and still takes commands, with a heap that has room (100 KiB on the VM)
    mark = send(obs, {"id": "after-flood", "op": "stats"})
    stats = result_for(obs, "after-flood", mark, 10)["result"]
    assert 0 < stats["heap_max_free"] <= stats["heap_free"]


def test_flood_of_one_id_runs_it_once_and_answers_every_copy(online):
    """300 copies of one id back to back: one execution; every copy gets one
    result, the first result again or "busy" (the redeliveries a running
    command collects are bounded like the queue)."""
    board, obs = online
    before = board.pin_writes.get(2, 0)
    mark = len(obs.messages)
    payload = json.dumps({"id": "same", "op": "led", "args": {"on": True}})
    for _ in range(300):
        obs.client.publish(CMD, payload, qos=1)
    got = []
    obs.wait_for(lambda m: m.topic == RESULT and m.json()["id"] == "same" and got.append(m.json()) is None and len(got) == 300, 30, start=mark)
    first = {"id": "same", "ok": True, "result": {"led": True}}
    busy = {"id": "same", "ok": False, "error": f"busy: {QUEUE_CAP} commands queued"}
    assert all(r in (first, busy) for r in got), [r for r in got if r not in (first, busy)][:3]
    assert got.count(first) >= 1
    assert board.pin_writes.get(2, 0) - before == 1
    after = len(obs.messages)
    obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 5, start=after)
    assert sum(1 for m in obs.messages[mark:] if m.topic == RESULT) == 300


def test_arbitrary_bytes_on_the_command_topic(online):
    """Fuzz: 300 seeded random payloads (binary, broken JSON, JSON of every
    shape). Each gets exactly one result; the board keeps publishing."""
    import random

    board, obs = online
    rng = random.Random(1234)
    shapes = [
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))),
        lambda: json.dumps(rng.choice([None, 1, "x", [], {}, {"id": rng.random()}, {"id": "a" * rng.randrange(60, 70), "op": "ping"}])).encode(),
        lambda: json.dumps({"id": f"z{rng.randrange(10**6)}", "op": rng.choice(["ping", "led", "sleepy", 3]), "args": rng.choice([{}, {"on": 1}, {"seconds": -1}, [], None])}).encode(),
        lambda: b'{"id": "' + bytes(rng.getrandbits(8) for _ in range(8)) + b'", "op": "ping"}',
    ]
    payloads = [rng.choice(shapes)() for _ in range(300)]
    payloads = [p for p in payloads if b'"op": "sleep"' not in p]
    mark = len(obs.messages)
    for p in payloads:
        obs.client.publish(CMD, p, qos=1)
    results = []

    def got_all(m) -> bool:
        if m.topic == RESULT:
            results.append(m.json())
        return len(results) >= len(payloads)

    obs.wait_for(got_all, 30, start=mark)
    assert all(isinstance(r["ok"], bool) for r in results)
    assert all(r["ok"] or ("error" in r and "\n" not in r["error"]) for r in results)
    seq = obs.wait_for(lambda m: m.topic.endswith("/telemetry"), 3, start=len(obs.messages)).json()["seq"]
    obs.wait_for(lambda m: m.topic.endswith("/telemetry") and m.json()["seq"] > seq, 3)
    assert board.halted is False and not any("Traceback" in line for line in board.console_tail)


@both_backends
def test_duplicate_arriving_while_the_first_runs_gets_the_first_result(online):
    """Three copies of one id back to back: three identical results, one execution."""
    board, obs = online
    before = board.pin_writes.get(2, 0)
    mark = len(obs.messages)
    payload = json.dumps({"id": "triple", "op": "led", "args": {"on": True}})
    for _ in range(3):
        obs.client.publish(CMD, payload, qos=1)
    got = []
    obs.wait_for(lambda m: m.topic == RESULT and m.json()["id"] == "triple" and got.append(m.json()) is None and len(got) == 3, 10, start=mark)
    assert got[0] == got[1] == got[2] == {"id": "triple", "ok": True, "result": {"led": True}}
    assert board.pin_writes.get(2, 0) - before == 1
