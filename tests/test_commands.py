"""commands: parsing and validation of cmd payloads, results, the result cache."""

import json
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import commands  # noqa: E402
from commands import (  # noqa: E402
    MAX_PAYLOAD, OPS, CommandError, cache_get, cache_put, error_result, new_cache, ok_result, parse,
)


def _cmd(**kw):
    return json.dumps(kw).encode()


# (payload, expected substring of the error, expected cmd_id on the error)
BAD = [
    (b"\xff\xfe{}", "not valid UTF-8", None),
    (b'{"id": "a", "op": "ping"', "not valid JSON", None),
    (b"", "not valid JSON", None),
    (b"ping", "not valid JSON", None),
    (b"[1, 2]", "must be a JSON object, got a list", None),
    (b'"ping"', 'must be a JSON object, got "ping"', None),
    (b"42", "must be a JSON object, got 42", None),
    (b"null", "must be a JSON object, got null", None),
    (_cmd(op="ping"), 'missing "id"', None),
    (_cmd(id=7, op="ping"), '"id" must be a string, got 7', None),
    (_cmd(id=None, op="ping"), '"id" must be a string, got null', None),
    (_cmd(id=True, op="ping"), '"id" must be a string, got true', None),
    (_cmd(id="", op="ping"), '"id" must not be empty', None),
    (_cmd(id="x" * 65, op="ping"), '"id" is too long (65 chars, max 64)', None),
    (_cmd(id="c1"), 'missing "op"', "c1"),
    (_cmd(id="c1", op=3), '"op" must be a string, got 3', "c1"),
    (_cmd(id="c1", op=["ping"]), '"op" must be a string, got a list', "c1"),
    (_cmd(id="c1", op="explode"), 'unknown op "explode" (known: ping, read, set_interval', "c1"),
    (_cmd(id="c1", op="PING"), 'unknown op "PING"', "c1"),
    (_cmd(id="c1", op="ping", args=[]), '"args" must be an object, got a list', "c1"),
    (_cmd(id="c1", op="ping", args=None), '"args" must be an object, got null', "c1"),
    (_cmd(id="c1", op="ping", args="x"), '"args" must be an object, got "x"', "c1"),
    (_cmd(id="c1", op="ping", args={"x": 1}), 'unexpected arg "x" for op "ping" (takes no args)', "c1"),
    (_cmd(id="c1", op="stats", args={"b": 1, "a": 2}), 'unexpected args "a", "b" for op "stats"', "c1"),
    (_cmd(id="c1", op="led", args={"on": True, "colour": "red"}),
     'unexpected arg "colour" for op "led" (takes: on)', "c1"),
    (_cmd(id="c1", op="set_interval"), 'op "set_interval" needs arg "seconds"', "c1"),
    (_cmd(id="c1", op="set_interval", args={}), 'op "set_interval" needs arg "seconds"', "c1"),
    (_cmd(id="c1", op="set_interval", args={"seconds": 0}), '"seconds" must be an integer 1..86400, got 0', "c1"),
    (_cmd(id="c1", op="set_interval", args={"seconds": 86401}), "got 86401", "c1"),
    (_cmd(id="c1", op="set_interval", args={"seconds": -5}), "got -5", "c1"),
    (_cmd(id="c1", op="set_interval", args={"seconds": 2.5}), "got 2.5", "c1"),
    (_cmd(id="c1", op="set_interval", args={"seconds": 10.0}), "got 10.0", "c1"),
    (_cmd(id="c1", op="set_interval", args={"seconds": "10"}), 'got "10"', "c1"),
    (_cmd(id="c1", op="set_interval", args={"seconds": True}), "got true", "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": NaN}}', "got nan", "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": 1e999}}', "got inf", "c1"),
    (_cmd(id="c1", op="sleep"), 'op "sleep" needs arg "seconds"', "c1"),
    (_cmd(id="c1", op="sleep", args={"seconds": 0}), '"seconds" must be an integer 1..86400, got 0', "c1"),
    (_cmd(id="c1", op="sleep", args={"seconds": False}), "got false", "c1"),
    (_cmd(id="c1", op="led"), 'op "led" needs arg "on"', "c1"),
    (_cmd(id="c1", op="led", args={"on": 1}), '"on" must be true or false, got 1', "c1"),
    (_cmd(id="c1", op="led", args={"on": "true"}), 'got "true"', "c1"),
    (_cmd(id="c1", op="led", args={"on": None}), "got null", "c1"),
    (b"[" * 5000 + b"]" * 5000, "payload too large (10000 bytes, max 1024)", None),
]


@pytest.mark.parametrize("payload, message, cmd_id", BAD)
def test_bad_commands(payload, message, cmd_id):
    with pytest.raises(CommandError) as info:
        parse(payload)
    assert message in str(info.value)
    assert info.value.cmd_id == cmd_id
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_every_error_class_has_its_own_message():
    # Strip the echoed value: each row of BAD belongs to a distinct class.
    kinds = set()
    for payload, _, _ in BAD:
        try:
            parse(payload)
        except CommandError as e:
            kinds.add(str(e).split(", got")[0].split(" (")[0])
    assert len(kinds) >= 14


def test_oversize_payload_none_with_size():
    with pytest.raises(CommandError) as info:
        parse(None, size=5000)
    assert str(info.value) == "payload too large (5000 bytes, max 1024)"
    assert info.value.cmd_id is None


def test_oversize_payload_none_without_size():
    with pytest.raises(CommandError, match=r"payload too large \(max 1024 bytes\)"):
        parse(None)


def test_size_limit_is_inclusive_and_configurable():
    base = _cmd(id="a", op="ping", args={})
    pad = b" " * (MAX_PAYLOAD - len(base))
    assert parse(base + pad)[1] == "ping"
    with pytest.raises(CommandError, match="1025 bytes, max 1024"):
        parse(base + pad + b" ")
    with pytest.raises(CommandError, match="max 10\\)"):
        parse(base, max_payload=10)
    with pytest.raises(CommandError, match="2000 bytes"):
        parse(base, size=2000)  # size reported by the transport wins


def test_valid_command_for_every_op():
    expected = {
        "ping": {},
        "read": {},
        "set_interval": {"seconds": 60},
        "get_config": {},
        "reboot": {},
        "sleep": {"seconds": 86400},
        "led": {"on": False},
        "stats": {},
        "ota": {"url": "http://10.0.0.1:8000/releases/1.3.0/manifest.json"},
    }
    assert set(expected) == set(OPS)
    for op, args in expected.items():
        assert parse(_cmd(id="id-" + op, op=op, args=args)) == ("id-" + op, op, args)


def test_args_may_be_omitted_for_argless_ops():
    for op in ("ping", "read", "get_config", "reboot", "stats"):
        assert parse(_cmd(id="x", op=op)) == ("x", op, {})


def test_ota_needs_a_url():
    # its value is checked by ota.py (loaded only for an update): any JSON value passes here
    assert parse(_cmd(id="x", op="ota", args={"url": 5})) == ("x", "ota", {"url": 5})
    with pytest.raises(CommandError, match='op "ota" needs arg "url"'):
        parse(_cmd(id="x", op="ota"))


def test_range_edges():
    for s in (1, 86400):
        assert parse(_cmd(id="x", op="set_interval", args={"seconds": s}))[2] == {"seconds": s}
        assert parse(_cmd(id="x", op="sleep", args={"seconds": s}))[2] == {"seconds": s}
    assert parse(_cmd(id="x", op="led", args={"on": True}))[2] == {"on": True}


def test_id_edges_and_unicode():
    assert parse(_cmd(id="x" * 64, op="ping"))[0] == "x" * 64
    assert parse(_cmd(id="é" * 64, op="ping"))[0] == "é" * 64
    assert parse('{"id": "ü", "op": "ping"}'.encode())[0] == "ü"


def test_extra_top_level_keys_ignored():
    assert parse(_cmd(id="x", op="ping", ts=5, extra={"a": 1})) == ("x", "ping", {})


def test_accepts_bytearray_memoryview_and_str():
    raw = _cmd(id="x", op="read")
    for p in (bytearray(raw), memoryview(raw), raw.decode()):
        assert parse(p) == ("x", "read", {})


def test_normalized_args_are_a_new_dict():
    result = parse(_cmd(id="x", op="led", args={"on": True}))[2]
    result["on"] = False
    assert parse(_cmd(id="x", op="led", args={"on": True}))[2] == {"on": True}


def test_long_bad_values_are_shortened():
    with pytest.raises(CommandError) as info:
        parse(_cmd(id="x", op="z" * 500))
    assert len(str(info.value)) < 200


_jsonish = st.text(alphabet='{}[]":,.-+0123456789eE idopargsnultrufalsNI\\', max_size=1100)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1200) | _jsonish.map(str.encode))
def test_arbitrary_bytes_only_raise_command_error(data):
    try:
        cmd_id, op, args = parse(data)
    except CommandError as e:
        assert e.cmd_id is None or isinstance(e.cmd_id, str)
        error_result(e.cmd_id, str(e))  # the error can always be reported
    else:
        assert op in OPS and isinstance(args, dict)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "id": _json | st.text(max_size=70),
            "op": _json | st.sampled_from(OPS),
            "args": _json
            | st.fixed_dictionaries(
                {},
                optional={"seconds": _json | st.integers(-5, 90000), "on": _json | st.booleans()},
            ),
        },
    )
)
def test_arbitrary_json_objects_only_raise_command_error(msg):
    try:
        cmd_id, op, args = parse(json.dumps(msg).encode(), max_payload=1 << 20)
    except CommandError as e:
        if isinstance(msg.get("id"), str) and 0 < len(msg["id"]) <= 64:
            assert e.cmd_id == msg["id"]
        else:
            assert e.cmd_id is None
    else:
        assert cmd_id == msg["id"] and op == msg["op"] and op in OPS


def test_ok_result():
    out = ok_result("c1", {"pong": 1700000000})
    assert isinstance(out, bytes)
    assert out == b'{"id":"c1","ok":true,"result":{"pong":1700000000}}'
    assert json.loads(ok_result("c2")) == {"id": "c2", "ok": True, "result": {}}


def test_error_result():
    assert json.loads(error_result("c1", "boom")) == {"id": "c1", "ok": False, "error": "boom"}
    out = error_result(None, 'unknown op "x"')
    assert json.loads(out) == {"id": None, "ok": False, "error": 'unknown op "x"'}
    assert out == b'{"id":null,"ok":false,"error":"unknown op \\"x\\""}'
    e = CommandError("bad", "c9")
    assert json.loads(error_result(e.cmd_id, e)) == {"id": "c9", "ok": False, "error": "bad"}


def _ids(cache):
    return {cache[i] for i in range(1, len(cache), 2) if cache[i] is not None}


def test_result_cache_remembers_and_evicts_fifo():
    cache = new_cache(3)
    for i in range(3):
        cache_put(cache, "c%d" % i, b"r%d" % i)
    assert [cache_get(cache, "c%d" % i) for i in range(3)] == [b"r0", b"r1", b"r2"]
    cache_put(cache, "c3", b"r3")
    assert cache_get(cache, "c0") is None
    assert cache_get(cache, "c3") == b"r3" and len(_ids(cache)) == 3
    cache_get(cache, "c1")  # a read does not refresh (FIFO, not LRU)
    cache_put(cache, "c4", b"r4")
    assert cache_get(cache, "c1") is None and _ids(cache) == {"c2", "c3", "c4"}


def test_result_cache_overwrite_keeps_position():
    cache = new_cache(2)
    cache_put(cache, "a", b"1")
    cache_put(cache, "b", b"2")
    cache_put(cache, "a", b"1b")
    assert cache_get(cache, "a") == b"1b" and len(_ids(cache)) == 2
    cache_put(cache, "c", b"3")
    assert cache_get(cache, "a") is None and cache_get(cache, "b") == b"2"


def test_result_cache_is_bounded():
    cache = new_cache()
    for i in range(10_000):
        cache_put(cache, str(i), b"x")
    # 16 by default: as many as the device's command queue (firmware/device.py _CMD_QUEUE)
    assert len(_ids(cache)) == 16 and len(cache) == 33
    assert cache_get(cache, "9999") == b"x" and cache_get(cache, "9983") is None and cache_get(cache, "9984") == b"x"


def test_result_cache_ignores_none_id_and_rejects_bad_size():
    cache = new_cache(2)
    cache_put(cache, None, b"x")
    assert len(_ids(cache)) == 0 and cache_get(cache, None) is None
    for size in (0, -1, True, 2.0):
        with pytest.raises(ValueError):
            new_cache(size)


def test_no_module_level_mutable_state():
    for name in dir(commands):
        if name.startswith("__"):
            continue
        assert not isinstance(getattr(commands, name), (list, dict, set, bytearray)), name
