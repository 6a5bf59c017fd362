# commands.py under the MicroPython VM (run by tests/micropython/run.mjs).
# Plain asserts, no pytest: every error class, every op, results, the cache.

import json

from commands import MAX_PAYLOAD, OPS, CommandError, cache_get, cache_put, error_result, new_cache, ok_result, parse


def _cmd(obj):
    return json.dumps(obj).encode()


def _error(payload, **kw):
    try:
        parse(payload, **kw)
    except CommandError as e:
        assert isinstance(e, ValueError)
        return str(e), e.cmd_id
    raise AssertionError("no CommandError for %r" % (payload,))


BAD = (
    (b"\xff\xfe{}", "payload is not valid UTF-8", None),
    (b"\xc3", "payload is not valid UTF-8", None),
    (b'{"id": "a", "op": "ping"', "not valid JSON", None),
    (b"", "not valid JSON", None),
    (b"ping", "not valid JSON", None),
    (b"[1, 2]", "must be a JSON object, got a list", None),
    (b'"ping"', 'must be a JSON object, got "ping"', None),
    (b"null", "must be a JSON object, got null", None),
    (b'{"op": "ping"}', 'missing "id"', None),
    (b'{"id": 7, "op": "ping"}', '"id" must be a string, got 7', None),
    (b'{"id": true, "op": "ping"}', '"id" must be a string, got true', None),
    (b'{"id": "", "op": "ping"}', '"id" must not be empty', None),
    (_cmd({"id": "x" * 65, "op": "ping"}), '"id" is too long (65 chars, max 64)', None),
    (b'{"id": "c1"}', 'missing "op"', "c1"),
    (b'{"id": "c1", "op": 3}', '"op" must be a string, got 3', "c1"),
    (b'{"id": "c1", "op": "explode"}', 'unknown op "explode" (known: ping, read, set_interval, get_config, reboot, sleep, led, stats, ota)', "c1"),
    (b'{"id": "c1", "op": "ping", "args": []}', '"args" must be an object, got a list', "c1"),
    (b'{"id": "c1", "op": "ping", "args": null}', '"args" must be an object, got null', "c1"),
    (b'{"id": "c1", "op": "ping", "args": {"x": 1}}', 'unexpected arg "x" for op "ping" (takes no args)', "c1"),
    (b'{"id": "c1", "op": "stats", "args": {"b": 1, "a": 2}}', 'unexpected args "a", "b" for op "stats"', "c1"),
    (b'{"id": "c1", "op": "led", "args": {"on": true, "colour": 1}}', 'unexpected arg "colour" for op "led" (takes: on)', "c1"),
    (b'{"id": "c1", "op": "set_interval"}', 'op "set_interval" needs arg "seconds"', "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": 0}}', '"seconds" must be an integer 1..86400, got 0', "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": 86401}}', "got 86401", "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": 2.5}}', "got 2.5", "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": "10"}}', 'got "10"', "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": true}}', "got true", "c1"),
    (b'{"id": "c1", "op": "set_interval", "args": {"seconds": 1e999}}', "got inf", "c1"),
    (b'{"id": "c1", "op": "sleep"}', 'op "sleep" needs arg "seconds"', "c1"),
    (b'{"id": "c1", "op": "sleep", "args": {"seconds": false}}', "got false", "c1"),
    (b'{"id": "c1", "op": "led"}', 'op "led" needs arg "on"', "c1"),
    (b'{"id": "c1", "op": "led", "args": {"on": 1}}', '"on" must be true or false, got 1', "c1"),
    (b'{"id": "c1", "op": "led", "args": {"on": "true"}}', 'got "true"', "c1"),
)


def test_every_error_class():
    for payload, message, cmd_id in BAD:
        got, got_id = _error(payload)
        assert message in got, (payload, got)
        assert got_id == cmd_id, (payload, got_id)
        assert "\n" not in got


def test_oversize():
    assert _error(None, size=5000) == ("payload too large (5000 bytes, max 1024)", None)
    assert _error(None) == ("payload too large (max 1024 bytes)", None)
    base = _cmd({"id": "a", "op": "ping"})
    padded = base + b" " * (MAX_PAYLOAD - len(base))
    assert parse(padded)[1] == "ping"
    assert _error(padded + b" ")[0] == "payload too large (1025 bytes, max 1024)"
    assert _error(base, max_payload=10)[0].endswith("max 10)")
    assert _error(b"[" * 2000 + b"]" * 2000)[0] == "payload too large (4000 bytes, max 1024)"


def test_deep_nesting_is_not_a_crash():
    for payload in (b"[" * 1000 + b"]" * 1000, b"[" * 3000, b'{"a":' * 500):
        got, got_id = _error(payload, max_payload=4096)
        assert "JSON" in got and got_id is None, got


def test_every_op():
    cases = (
        ("ping", {}),
        ("read", {}),
        ("set_interval", {"seconds": 60}),
        ("get_config", {}),
        ("reboot", {}),
        ("sleep", {"seconds": 86400}),
        ("led", {"on": False}),
        ("stats", {}),
        ("ota", {"url": "http://10.0.0.1/r/manifest.json"}),
    )
    assert tuple(op for op, _ in cases) == OPS
    for op, args in cases:
        got = parse(_cmd({"id": "id-" + op, "op": op, "args": args}))
        assert got == ("id-" + op, op, args), got
    for op in ("ping", "read", "get_config", "reboot", "stats"):
        assert parse(_cmd({"id": "x", "op": op})) == ("x", op, {})
    assert parse(_cmd({"id": "x", "op": "set_interval", "args": {"seconds": 1}}))[2] == {"seconds": 1}
    assert parse(_cmd({"id": "x", "op": "led", "args": {"on": True}}))[2] == {"on": True}


def test_payload_types_and_unicode_id():
    raw = _cmd({"id": "x", "op": "read"})
    for p in (raw, bytearray(raw), memoryview(raw), raw.decode()):
        assert parse(p) == ("x", "read", {})
    assert parse('{"id": "\u00fc\u00e9", "op": "ping"}'.encode())[0] == "\u00fc\u00e9"
    assert parse(_cmd({"id": "x", "op": "ping", "extra": 1})) == ("x", "ping", {})


def test_non_string_arg_keys():
    # MicroPython's json.loads accepts {1: 2}; that must still be a clean error
    try:
        msg = json.loads('{"a": {1: 2}}')
    except ValueError:
        return  # this json refuses non-string keys: nothing to check
    assert msg
    got, got_id = _error(b'{"id": "c1", "op": "ping", "args": {1: 2}}')
    assert got.startswith('unexpected arg "1"'), got
    assert got_id == "c1"


def test_junk_never_escapes_as_another_exception():
    # deterministic fuzz: byte soup and JSON-ish soup
    state = 1
    alphabet = b'{}[]":,.-+0123456789eE idopargsnultrufalsNI\\\xff\xc3'
    for i in range(1500):
        n = i % 90
        buf = bytearray(n)
        for j in range(n):
            state = (state * 1103515245 + 12345) & 0x7FFFFFFF
            buf[j] = alphabet[(state >> 8) % len(alphabet)] if i % 2 else (state >> 8) & 0xFF
        try:
            parse(bytes(buf))
        except CommandError as e:
            assert e.cmd_id is None or isinstance(e.cmd_id, str)
            error_result(e.cmd_id, e)


def test_results():
    # MicroPython dicts do not keep insertion order: compare parsed JSON
    out = ok_result("c1", {"pong": 5})
    assert isinstance(out, bytes)
    assert b" " not in out, out  # compact separators work here
    assert json.loads(out) == {"id": "c1", "ok": True, "result": {"pong": 5}}
    assert json.loads(ok_result("c2")) == {"id": "c2", "ok": True, "result": {}}
    e = CommandError("bad thing", "c9")
    assert json.loads(error_result(e.cmd_id, e)) == {"id": "c9", "ok": False, "error": "bad thing"}
    assert json.loads(error_result(None, "x")) == {"id": None, "ok": False, "error": "x"}
    assert isinstance(error_result(None, "x"), bytes)


def test_result_cache():
    cache = new_cache(3)
    for i in range(3):
        cache_put(cache, "c%d" % i, b"r%d" % i)
    assert cache_get(cache, "c0") == b"r0" and cache_get(cache, "c2") == b"r2"
    cache_put(cache, "c3", b"r3")
    assert cache_get(cache, "c0") is None and cache_get(cache, "c3") == b"r3"
    cache_put(cache, "c1", b"new")  # overwrite keeps its place in the queue
    cache_put(cache, "c4", b"r4")
    assert cache_get(cache, "c1") is None and cache_get(cache, "c2") == b"r2"
    cache_put(cache, None, b"x")
    assert cache_get(cache, None) is None
    big = new_cache()
    for i in range(1000):
        cache_put(big, str(i), b"x")
    # 16 by default (the device's command queue)
    assert len(big) == 33 and cache_get(big, "999") == b"x" and cache_get(big, "983") is None and cache_get(big, "984") == b"x"
    for size in (0, True):
        try:
            new_cache(size)
        except ValueError:
            pass
        else:
            raise AssertionError("size %r accepted" % (size,))
