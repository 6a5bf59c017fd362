# config.py under the MicroPython VM (run by tests/micropython/run.mjs).
# Plain asserts, no pytest: defaults, merge, errors naming the key,
# bool-vs-int, warnings, load(), redaction.

import json

from commands import redacted
from config import ConfigError, defaults, load, validate


def _check(raw):
    warns = []
    return validate(raw, warns.append), warns


def _error(raw):
    try:
        _check(raw)
    except ConfigError as e:
        assert isinstance(e, ValueError)
        return str(e)
    raise AssertionError("no ConfigError for %r" % (raw,))


def test_defaults():
    cfg, warns = _check({})
    assert warns == []
    assert cfg == defaults()
    assert cfg["id"] is None and cfg["prefix"] == "devices" and cfg["keepalive"] == 30
    assert cfg["broker"] == {"host": "127.0.0.1", "port": 1883, "tls": False, "username": None, "password": None}
    assert cfg["backoff"] == {"base_ms": 500, "cap_ms": 30000}
    assert cfg["wdt_ms"] == 0 and cfg["ntp"] is True and cfg["sensors"] == []
    cfg["broker"]["port"] = 1
    assert _check({})[0]["broker"]["port"] == 1883


def test_spec_example_and_merge():
    raw = json.loads(
        '{"id": "dev-00001", "wifi": {"ssid": "lab", "password": "secret"},'
        ' "broker": {"host": "192.168.1.10", "port": 1883, "tls": false},'
        ' "prefix": "devices", "keepalive": 30, "interval": 10,'
        ' "backoff": {"base_ms": 500, "cap_ms": 30000}, "wdt_ms": 0, "sensors": []}'
    )
    cfg, warns = _check(raw)
    assert warns == []
    assert cfg["id"] == "dev-00001" and cfg["broker"]["host"] == "192.168.1.10"
    assert cfg["broker"]["username"] is None
    cfg, _ = _check({"backoff": {"cap_ms": 60000}})
    assert cfg["backoff"] == {"base_ms": 500, "cap_ms": 60000}


def test_unknown_keys_warn():
    cfg, warns = _check({"foo": 1, "broker": {"hots": "x"}})
    assert sorted(warns) == ['config.json: unknown key "broker.hots" ignored', 'config.json: unknown key "foo" ignored']
    assert "foo" not in cfg and "hots" not in cfg["broker"]


def test_message_format():
    assert _error({"keepalive": "x"}) == 'config.json: "keepalive" must be an integer 2..65535 (got "x")'


def test_bool_is_not_int_and_int_is_not_bool():
    cases = (
        ({"keepalive": True}, '"keepalive"'),
        ({"broker": {"port": True}}, '"broker.port"'),
        ({"backoff": {"base_ms": True}}, '"backoff.base_ms"'),
        ({"backoff": {"cap_ms": False}}, '"backoff.cap_ms"'),
        ({"wdt_ms": False}, '"wdt_ms"'),
        ({"interval": True}, '"interval"'),
        ({"broker": {"tls": 1}}, '"broker.tls"'),
        ({"broker": {"tls": 0}}, '"broker.tls"'),
        ({"ntp": 1}, '"ntp"'),
    )
    for raw, key in cases:
        msg = _error(raw)
        assert msg.startswith("config.json: " + key + " "), msg


def test_every_key_named():
    cases = (
        ({"id": "a/b"}, '"id"'),
        ({"id": "x" * 65}, '"id"'),
        ({"id": ""}, '"id"'),
        ({"wifi": "x"}, '"wifi"'),
        ({"wifi": {"ssid": "x" * 33}}, '"wifi.ssid"'),
        ({"wifi": {"password": 1}}, '"wifi.password"'),
        ({"broker": {"host": ""}}, '"broker.host"'),
        ({"broker": {"port": 70000}}, '"broker.port"'),
        ({"broker": {"username": 1}}, '"broker.username"'),
        ({"broker": {"password": "p"}}, '"broker.password"'),
        ({"prefix": "a/+"}, '"prefix"'),
        ({"prefix": "/a"}, '"prefix"'),
        ({"keepalive": 1}, '"keepalive"'),
        ({"interval": 0.01}, '"interval"'),
        ({"backoff": {"base_ms": 0}}, '"backoff.base_ms"'),
        ({"backoff": {"base_ms": 1, "cap_ms": 1}}, '"backoff.base_ms"'),
        ({"backoff": {"base_ms": 100, "cap_ms": 999}}, '"backoff.cap_ms"'),
        ({"backoff": {"base_ms": 1000, "cap_ms": 999}}, '"backoff.cap_ms"'),
        ({"wdt_ms": 500}, '"wdt_ms"'),
        ({"ntp": ""}, '"ntp"'),
        ({"sensors": {}}, '"sensors"'),
        ({"sensors": [1]}, '"sensors[0]"'),
    )
    for raw, key in cases:
        msg = _error(raw)
        assert msg.startswith("config.json: " + key + " "), msg
    assert _error([]).startswith("config.json: must be a JSON object")


def test_good_edges():
    cfg, _ = _check({"id": "A_b-9", "interval": 0.1, "keepalive": 2, "wdt_ms": 1000, "ntp": "pool.ntp.org",
                     "broker": {"port": 65535, "tls": True, "username": "u", "password": "p"}})
    assert cfg["id"] == "A_b-9" and cfg["interval"] == 0.1 and cfg["wdt_ms"] == 1000
    assert cfg["broker"]["tls"] is True and cfg["ntp"] == "pool.ntp.org"
    cfg, _ = _check({"prefix": "p" * 64, "backoff": {"base_ms": 100, "cap_ms": 1000},
                     "broker": {"host": "h" * 253, "username": "\u00e9" * 128, "password": "p" * 256}})
    assert len(cfg["prefix"]) == 64 and cfg["backoff"] == {"base_ms": 100, "cap_ms": 1000}
    assert len(cfg["broker"]["username"]) == 128


def test_string_limits_name_the_key_and_limit():
    # issue 12 D6: a 70,000-character prefix or user name passed and then
    # failed boot with a traceback.
    cases = (
        ({"prefix": "p" * 65}, 'config.json: "prefix" must be a string of at most 64 bytes (got "'),
        ({"prefix": "p" * 7000}, 'config.json: "prefix" must be a string of at most 64 bytes (got "'),
        ({"prefix": "\u00e9" * 33}, 'config.json: "prefix" must be a string of at most 64 bytes'),
        ({"broker": {"host": "h" * 254}}, 'config.json: "broker.host" must be a string of at most 253 bytes'),
        ({"broker": {"username": "u" * 7000}}, 'config.json: "broker.username" must be a string of at most 256 bytes'),
        ({"broker": {"username": "a\x00"}}, 'config.json: "broker.username" must be a string without NUL'),
        ({"broker": {"username": "u", "password": "p" * 257}}, 'config.json: "broker.password" must be a string of at most 256 bytes'),
        ({"ntp": "n" * 254}, 'config.json: "ntp" must be true, false or an NTP server host name of at most 253 bytes'),
    )
    for raw, start in cases:
        msg = _error(raw)
        assert msg.startswith(start), msg
        assert len(msg) < 200, len(msg)


class _File:
    def __init__(self, data):
        self.data = data

    def read(self):
        return self.data

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _opener(files):
    def open_(path, mode="r"):
        if path not in files:
            raise OSError(2)
        return _File(files[path])

    return open_


def test_load():
    warns = []
    cfg = load("/config.json", warns.append, _opener({"/config.json": b'{"id": "a", "x": 1}'}))
    assert cfg["id"] == "a" and warns == ['config.json: unknown key "x" ignored']
    for files, start in (
        ({}, "config.json not found (/config.json)"),
        ({"/config.json": b"{"}, "config.json is not valid JSON: "),
        ({"/config.json": b'{"id": "\xff"}'}, "config.json is not valid UTF-8"),
    ):
        try:
            load("/config.json", warns.append, _opener(files))
        except ConfigError as e:
            assert str(e).startswith(start), str(e)
        else:
            raise AssertionError(start)


def test_load_deep_or_huge_is_one_config_error():
    # issue 12 D5. MicroPython's json.loads keeps its nesting on the heap,
    # not the C stack: deep input parses or fails with MemoryError, never a
    # crash; either way one ConfigError (the file, or the key) comes out.
    n = 5000
    for data in (b'{"sensors": ' + b"[" * n + b"]" * n + b"}", b'{"sensors": ' + b'{"a":' * n + b"1" + b"}" * n + b"}"):
        try:
            load("/config.json", [].append, _opener({"/config.json": data}))
        except ConfigError as e:
            msg = str(e)
            assert msg.startswith('config.json: "sensors') or msg.endswith("(/config.json)"), msg
        else:
            raise AssertionError("accepted")

    class Huge(_File):
        def read(self):
            raise MemoryError("memory allocation failed, allocating 200001 bytes")

    try:
        load("/config.json", [].append, lambda path, mode: Huge(None))
    except ConfigError as e:
        assert str(e) == "config.json is too big to read (/config.json)", str(e)
    else:
        raise AssertionError("accepted")


def test_load_real_file():
    with open("/tmp_config.json", "w") as f:
        f.write('{"keepalive": 5}')
    assert load("/tmp_config.json", [].append)["keepalive"] == 5
    try:
        load("/nope.json", [].append)
    except ConfigError as e:
        assert str(e).startswith("config.json not found"), str(e)
    else:
        raise AssertionError("missing file accepted")


def test_redacted():
    cfg, _ = _check({"wifi": {"ssid": "lab", "password": "wifisecret"},
                     "broker": {"username": "u", "password": "brokersecret"}})
    safe = redacted(cfg)
    text = json.dumps(safe)
    assert "wifisecret" not in text and "brokersecret" not in text
    assert safe["wifi"]["password"] == "***" and safe["broker"]["password"] == "***"
    assert cfg["wifi"]["password"] == "wifisecret"
    plain = redacted(_check({})[0])
    assert plain["wifi"]["password"] == "" and plain["broker"]["password"] is None
