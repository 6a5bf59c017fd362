"""config: defaults, merging, bad values naming the key, warnings, redaction."""

import io
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "firmware"))

import config  # noqa: E402
from commands import redacted  # noqa: E402
from config import ConfigError, defaults, load, validate  # noqa: E402

SPEC_EXAMPLE = {
    "id": "dev-00001",
    "wifi": {"ssid": "lab", "password": "secret"},
    "broker": {"host": "192.168.1.10", "port": 1883, "tls": False},
    "prefix": "devices",
    "keepalive": 30,
    "interval": 10,
    "backoff": {"base_ms": 500, "cap_ms": 30000},
    "wdt_ms": 0,
    "sensors": [],
}


class Warnings(list):
    def __call__(self, msg):
        self.append(msg)


def check(raw):
    warns = Warnings()
    return validate(raw, warns), warns


def test_empty_config_is_the_defaults():
    cfg, warns = check({})
    assert cfg == defaults() and warns == []
    assert cfg == {
        "id": None,
        "wifi": {"ssid": "", "password": ""},
        "broker": {"host": "127.0.0.1", "port": 1883, "tls": False, "username": None, "password": None},
        "prefix": "devices",
        "keepalive": 30,
        "interval": 10,
        "backoff": {"base_ms": 500, "cap_ms": 30000},
        "wdt_ms": 0,
        "ntp": True,
        "sensors": [],
    }


def test_spec_example_is_valid():
    cfg, warns = check(SPEC_EXAMPLE)
    assert warns == []
    assert cfg["id"] == "dev-00001"
    assert cfg["wifi"] == {"ssid": "lab", "password": "secret"}
    assert cfg["broker"] == {"host": "192.168.1.10", "port": 1883, "tls": False, "username": None, "password": None}


def test_nested_objects_merge_key_by_key():
    cfg, _ = check({"broker": {"port": 8883, "tls": True}, "backoff": {"cap_ms": 60000}})
    assert cfg["broker"] == {"host": "127.0.0.1", "port": 8883, "tls": True, "username": None, "password": None}
    assert cfg["backoff"] == {"base_ms": 500, "cap_ms": 60000}


def test_results_never_share_state_with_defaults_or_input():
    raw = {"sensors": [{"type": "bme280"}], "wifi": {"ssid": "x"}}
    cfg, _ = check(raw)
    cfg["broker"]["port"] = 1
    cfg["sensors"][0]["type"] = "changed"
    cfg["wifi"]["ssid"] = "y"
    assert defaults()["broker"]["port"] == 1883 and check({})[0]["broker"]["port"] == 1883
    assert raw == {"sensors": [{"type": "bme280"}], "wifi": {"ssid": "x"}}
    d = defaults()
    d["backoff"]["base_ms"] = 1
    assert check({})[0]["backoff"]["base_ms"] == 500


def test_unknown_keys_warn_once_each_and_are_dropped():
    cfg, warns = check({"foo": 1, "bar": {}, "broker": {"hots": "x", "port": 1884}, "wifi": {"pass": "x"}})
    assert sorted(warns) == sorted([
        'config.json: unknown key "foo" ignored',
        'config.json: unknown key "bar" ignored',
        'config.json: unknown key "broker.hots" ignored',
        'config.json: unknown key "wifi.pass" ignored',
    ])
    assert "foo" not in cfg and "hots" not in cfg["broker"] and cfg["broker"]["port"] == 1884
    assert cfg["broker"]["host"] == "127.0.0.1"


def test_message_format_from_the_brief():
    with pytest.raises(ConfigError) as info:
        check({"keepalive": "x"})
    assert str(info.value) == 'config.json: "keepalive" must be an integer 2..65535 (got "x")'


# (raw config, key path that the message must name, a fragment of the reason)
BAD = [
    ({"id": ""}, '"id"', "1..64"),
    ({"id": "a/b"}, '"id"', "A-Z"),
    ({"id": "a+b"}, '"id"', "A-Z"),
    ({"id": "a#"}, '"id"', "A-Z"),
    ({"id": "dev 1"}, '"id"', "A-Z"),
    ({"id": "é"}, '"id"', "A-Z"),
    ({"id": "x" * 65}, '"id"', "1..64"),
    ({"id": 5}, '"id"', "got 5"),
    ({"wifi": "lab"}, '"wifi"', "an object"),
    ({"wifi": None}, '"wifi"', "got null"),
    ({"wifi": {"ssid": 5}}, '"wifi.ssid"', "a string"),
    ({"wifi": {"ssid": "x" * 33}}, '"wifi.ssid"', "32 bytes"),
    ({"wifi": {"ssid": "é" * 17}}, '"wifi.ssid"', "32 bytes"),
    ({"wifi": {"password": None}}, '"wifi.password"', "a string"),
    ({"wifi": {"password": "x" * 65}}, '"wifi.password"', "64 bytes"),
    ({"broker": []}, '"broker"', "an object"),
    ({"broker": {"host": ""}}, '"broker.host"', "non-empty string"),
    ({"broker": {"host": 10}}, '"broker.host"', "got 10"),
    ({"broker": {"port": 0}}, '"broker.port"', "1..65535"),
    ({"broker": {"port": 65536}}, '"broker.port"', "1..65535"),
    ({"broker": {"port": "1883"}}, '"broker.port"', 'got "1883"'),
    ({"broker": {"port": True}}, '"broker.port"', "got true"),
    ({"broker": {"port": 1883.0}}, '"broker.port"', "got 1883.0"),
    ({"broker": {"tls": 1}}, '"broker.tls"', "true or false"),
    ({"broker": {"tls": "yes"}}, '"broker.tls"', "true or false"),
    ({"broker": {"username": 5}}, '"broker.username"', "a string"),
    ({"broker": {"username": "u", "password": 5}}, '"broker.password"', "a string"),
    # Every string has a length bound, so whatever passes fits CONNECT and
    # the topics (issue 12 D6: a 70,000-character value stopped boot with a
    # traceback); the message names the limit.
    ({"broker": {"host": "h" * 254}}, '"broker.host"', "at most 253 bytes"),
    ({"broker": {"username": "u" * 257}}, '"broker.username"', "at most 256 bytes"),
    ({"broker": {"username": "u" * 70000}}, '"broker.username"', "at most 256 bytes"),
    ({"broker": {"username": "é" * 129}}, '"broker.username"', "at most 256 bytes"),
    ({"broker": {"username": "a\x00b"}}, '"broker.username"', "without NUL"),
    ({"broker": {"username": "u", "password": "p" * 257}}, '"broker.password"', "at most 256 bytes"),
    ({"broker": {"password": "p"}}, '"broker.password"', 'needs "broker.username"'),
    ({"prefix": ""}, '"prefix"', "non-empty"),
    ({"prefix": None}, '"prefix"', "got null"),
    ({"prefix": "a/+/b"}, '"prefix"', "'+'"),
    ({"prefix": "a/#"}, '"prefix"', "'#'"),
    ({"prefix": "/devices"}, '"prefix"', "leading"),
    ({"prefix": "devices/"}, '"prefix"', "trailing"),
    ({"prefix": "a//b"}, '"prefix"', "'//'"),
    ({"prefix": "$SYS"}, '"prefix"', "'$'"),
    ({"prefix": "p" * 65}, '"prefix"', "at most 64 bytes"),
    ({"prefix": "p" * 70000}, '"prefix"', "at most 64 bytes"),
    ({"prefix": "é" * 33}, '"prefix"', "at most 64 bytes"),
    ({"keepalive": 0}, '"keepalive"', "2..65535"),
    ({"keepalive": 1}, '"keepalive"', "2..65535"),
    ({"keepalive": 65536}, '"keepalive"', "2..65535"),
    ({"keepalive": True}, '"keepalive"', "got true"),
    ({"keepalive": 30.0}, '"keepalive"', "got 30.0"),
    ({"interval": 0}, '"interval"', "0.1..86400"),
    ({"interval": 0.05}, '"interval"', "0.1..86400"),
    ({"interval": 86400.5}, '"interval"', "0.1..86400"),
    ({"interval": "10"}, '"interval"', 'got "10"'),
    ({"interval": True}, '"interval"', "got true"),
    ({"interval": float("nan")}, '"interval"', "got nan"),
    ({"interval": float("inf")}, '"interval"', "got inf"),
    ({"backoff": 5}, '"backoff"', "an object"),
    ({"backoff": {"base_ms": 0}}, '"backoff.base_ms"', "100..3600000"),
    # issue 12 D7: {"base_ms": 1, "cap_ms": 1} made ~940 attempts a second.
    ({"backoff": {"base_ms": 1, "cap_ms": 1}}, '"backoff.base_ms"', "100..3600000"),
    ({"backoff": {"base_ms": 99}}, '"backoff.base_ms"', "100..3600000"),
    ({"backoff": {"base_ms": 100, "cap_ms": 999}}, '"backoff.cap_ms"', "1000..3600000"),
    ({"backoff": {"base_ms": True}}, '"backoff.base_ms"', "got true"),
    ({"backoff": {"base_ms": 500.0}}, '"backoff.base_ms"', "got 500.0"),
    ({"backoff": {"cap_ms": 999}}, '"backoff.cap_ms"', "1000..3600000"),
    ({"backoff": {"base_ms": 1500, "cap_ms": 1499}}, '"backoff.cap_ms"', "1500..3600000"),
    ({"backoff": {"base_ms": 1000, "cap_ms": 999}}, '"backoff.cap_ms"', "1000..3600000"),
    ({"backoff": {"cap_ms": 3600001}}, '"backoff.cap_ms"', "1000..3600000"),
    ({"wdt_ms": 999}, '"wdt_ms"', "0 (off) or an integer 1000..3600000"),
    ({"wdt_ms": 1}, '"wdt_ms"', "1000..3600000"),
    ({"wdt_ms": 3600001}, '"wdt_ms"', "1000..3600000"),
    ({"wdt_ms": -1}, '"wdt_ms"', "got -1"),
    ({"wdt_ms": False}, '"wdt_ms"', "got false"),
    ({"wdt_ms": 0.0}, '"wdt_ms"', "got 0.0"),
    ({"wdt_ms": None}, '"wdt_ms"', "got null"),
    ({"ota": {"trial_s": 9}}, '"ota.trial_s"', "10..3600"),
    ({"ota": {"max_boots": 0}}, '"ota.max_boots"', "1..10"),
    ({"ota": 3}, '"ota"', "an object"),
    ({"ntp": ""}, '"ntp"', "true, false or an NTP server"),
    ({"ntp": 1}, '"ntp"', "got 1"),
    ({"ntp": "n" * 254}, '"ntp"', "at most 253 bytes"),
    ({"sensors": {}}, '"sensors"', "a list of at most 16 objects (got an object)"),
    ({"sensors": None}, '"sensors"', "got null"),
    ({"sensors": [{"type": "mcu", "prefix": "m%d" % i} for i in range(17)]}, '"sensors"', "a list of at most 16 objects (got a list)"),
    ({"sensors": [{"type": "bme280"}, "dht22"]}, '"sensors[1]"', 'got "dht22"'),
    ({"sensors": [{}]}, '"sensors[0].type"', '"bme280", "dht22", "battery" or "mcu" (got null)'),
    ({"sensors": [{"type": "sht31"}]}, '"sensors[0].type"', 'got "sht31"'),
    ({"sensors": [{"type": "mcu"}, {"type": "bme280", "addr": 0x78}]}, '"sensors[1].addr"', "118 (0x76) or 119 (0x77) (got 120)"),
    ({"sensors": [{"type": "bme280", "addr": "0x76"}]}, '"sensors[0].addr"', 'got "0x76"'),
    ({"sensors": [{"type": "bme280", "i2c": 2}]}, '"sensors[0].i2c"', "0..1"),
    ({"sensors": [{"type": "bme280", "sda": 49}]}, '"sensors[0].sda"', "0..48"),
    ({"sensors": [{"type": "bme280", "scl": 21}]}, '"sensors[0].scl"', "a pin other than sda"),
    ({"sensors": [{"type": "dht22"}]}, '"sensors[0].pin"', "is required"),
    ({"sensors": [{"type": "dht22", "pin": True}]}, '"sensors[0].pin"', "got true"),
    ({"sensors": [{"type": "battery", "pin": -1}]}, '"sensors[0].pin"', "0..48"),
    ({"sensors": [{"type": "battery", "atten": 12}]}, '"sensors[0].atten"', "0, 2.5, 6 or 11"),
    ({"sensors": [{"type": "battery", "divider": 0.5}]}, '"sensors[0].divider"', "1..100"),
    ({"sensors": [{"type": "battery", "divider": "2"}]}, '"sensors[0].divider"', 'got "2"'),
    ({"sensors": [{"type": "mcu", "prefix": "a b"}]}, '"sensors[0].prefix"', "A-Z a-z 0-9"),
    ({"sensors": [{"type": "bme280"}, {"type": "dht22", "pin": 4}]}, '"sensors[1]"', 'reads "t" like "sensors[0]"'),
    ({"sensors": [{"type": "mcu"}, {"type": "mcu"}]}, '"sensors[1]"', "prefix"),
]


@pytest.mark.parametrize("raw, key, reason", BAD)
def test_bad_values_name_the_key(raw, key, reason):
    with pytest.raises(ConfigError) as info:
        check(raw)
    msg = str(info.value)
    assert msg.startswith("config.json: " + key + " "), msg
    assert reason in msg, msg
    assert "\n" not in msg
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("raw", [None, [], "x", 5, True])
def test_config_must_be_an_object(raw):
    with pytest.raises(ConfigError, match="config.json: must be a JSON object"):
        check(raw)


GOOD = [
    ({"id": None}, "id", None),
    ({"id": "A_b-9"}, "id", "A_b-9"),
    ({"id": "x" * 64}, "id", "x" * 64),
    ({"wifi": {"ssid": "x" * 32}}, "wifi", {"ssid": "x" * 32, "password": ""}),
    ({"broker": {"port": 65535}}, "broker", {"host": "127.0.0.1", "port": 65535, "tls": False, "username": None, "password": None}),
    ({"broker": {"username": "u", "password": "p"}}, "broker", {"host": "127.0.0.1", "port": 1883, "tls": False, "username": "u", "password": "p"}),
    ({"broker": {"username": "u"}}, "broker", {"host": "127.0.0.1", "port": 1883, "tls": False, "username": "u", "password": None}),
    ({"prefix": "lab/floor1/devices"}, "prefix", "lab/floor1/devices"),
    ({"prefix": "p" * 64}, "prefix", "p" * 64),
    ({"broker": {"host": "h" * 253, "username": "é" * 128, "password": "\x00" * 256}}, "broker",
     {"host": "h" * 253, "port": 1883, "tls": False, "username": "é" * 128, "password": "\x00" * 256}),
    ({"ntp": "n" * 253}, "ntp", "n" * 253),
    ({"keepalive": 2}, "keepalive", 2),
    ({"keepalive": 65535}, "keepalive", 65535),
    ({"interval": 0.1}, "interval", 0.1),
    ({"interval": 86400}, "interval", 86400),
    ({"interval": 2.5}, "interval", 2.5),
    ({"backoff": {"base_ms": 100, "cap_ms": 1000}}, "backoff", {"base_ms": 100, "cap_ms": 1000}),
    ({"backoff": {"base_ms": 2000, "cap_ms": 2000}}, "backoff", {"base_ms": 2000, "cap_ms": 2000}),
    ({"backoff": {"base_ms": 3600000, "cap_ms": 3600000}}, "backoff", {"base_ms": 3600000, "cap_ms": 3600000}),
    ({"wdt_ms": 1000}, "wdt_ms", 1000),
    ({"wdt_ms": 3600000}, "wdt_ms", 3600000),
    ({"ntp": False}, "ntp", False),
    ({"ntp": "192.168.1.1"}, "ntp", "192.168.1.1"),
    (
        {"sensors": [{"type": "bme280", "addr": 119}, {"type": "mcu"}]},
        "sensors",
        [{"type": "bme280", "prefix": "", "i2c": 0, "sda": 21, "scl": 22, "addr": 119}, {"type": "mcu", "prefix": ""}],
    ),
    (
        {"sensors": [{"type": "dht22", "pin": 4, "prefix": "in_"}, {"type": "battery", "atten": 2.5, "divider": 3}]},
        "sensors",
        [{"type": "dht22", "prefix": "in_", "pin": 4}, {"type": "battery", "prefix": "", "pin": 35, "atten": 2.5, "divider": 3}],
    ),
    ({"sensors": [{"type": "bme280"}, {"type": "dht22", "pin": 4, "prefix": "dht_"}]}, "sensors",
     [{"type": "bme280", "prefix": "", "i2c": 0, "sda": 21, "scl": 22, "addr": 118}, {"type": "dht22", "prefix": "dht_", "pin": 4}]),
]


@pytest.mark.parametrize("raw, key, value", GOOD)
def test_good_values(raw, key, value):
    cfg, warns = check(raw)
    assert cfg[key] == value and warns == []


def test_every_key_is_checked():
    # each top-level key of defaults() has at least one bad-value case
    named = {key.strip('"').split(".")[0].split("[")[0] for _, key, _ in BAD}
    assert named == set(defaults()) | {"ota"}  # "ota" is checked, not kept (ota.py reads config.json)


def test_ota_section_is_checked_not_kept():
    warns = Warnings()
    cfg = validate({"ota": {"trial_s": 30, "max_boots": 1}}, warns)
    assert "ota" not in cfg and warns == []
    validate({"ota": {"trial": 30}}, warns)
    assert warns == ['config.json: unknown key "ota.trial" ignored']


class FakeFile(io.BytesIO):
    pass


def opener(files):
    def open_(path, mode="r"):
        assert mode == "rb"
        if path not in files:
            raise OSError(2, "ENOENT")
        return FakeFile(files[path])

    return open_


def test_load_reads_and_validates():
    warns = Warnings()
    cfg = load("config.json", warns, opener({"config.json": json.dumps(SPEC_EXAMPLE).encode()}))
    assert cfg["id"] == "dev-00001" and warns == []


def test_load_real_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"id": "a", "extra": 1}))
    warns = Warnings()
    assert load(str(p), warns)["id"] == "a"
    assert warns == ['config.json: unknown key "extra" ignored']
    with pytest.raises(ConfigError, match="config.json not found"):
        load(str(tmp_path / "missing.json"), warns)


def test_load_missing_file():
    with pytest.raises(ConfigError, match=r"config.json not found \(/config.json\)"):
        load("/config.json", Warnings(), opener({}))


def test_load_unreadable_file():
    def open_(path, mode):
        raise OSError(13, "EACCES")

    with pytest.raises(ConfigError, match=r"config.json not found or unreadable \(config.json\): .*13"):
        load("config.json", Warnings(), open_)


@pytest.mark.parametrize("data", [b"{", b"", b'{"id": "a",}x', b"[" * 5000])
def test_load_invalid_json(data):
    with pytest.raises(ConfigError, match=r"config.json is not valid JSON: .*\(config.json\)$"):
        load("config.json", Warnings(), opener({"config.json": data}))


@pytest.mark.parametrize("n", [2000, 100_000])
@pytest.mark.parametrize("shape", ["list", "dict"])
def test_load_deeply_nested_json_is_one_config_error_naming_the_file(n, shape):
    """issue 12 D5: CPython's parser raises RecursionError; it is a
    ConfigError naming the file, like any other parse failure."""
    inner = "[" * n + "]" * n if shape == "list" else '{"a":' * n + "1" + "}" * n
    data = ('{"sensors": %s}' % inner).encode()
    with pytest.raises(ConfigError) as info:
        load("/config.json", Warnings(), opener({"/config.json": data}))
    msg = str(info.value)
    assert msg == "config.json is not valid JSON: nested too deeply (/config.json)"


def test_load_out_of_memory_is_a_config_error_naming_the_file():
    """On a board, a config.json too big for the heap fails in read() or
    json.loads() with MemoryError (MicroPython parses nesting without
    recursion, into the heap): one ConfigError naming the file."""

    class Huge(io.BytesIO):
        def read(self, *a):
            raise MemoryError("memory allocation failed, allocating 200001 bytes")

    with pytest.raises(ConfigError, match=r"^config.json is too big to read \(/config.json\)$"):
        load("/config.json", Warnings(), lambda path, mode: Huge())


def test_load_invalid_utf8():
    with pytest.raises(ConfigError, match="config.json is not valid UTF-8"):
        load("config.json", Warnings(), opener({"config.json": b'{"id": "\xff"}'}))


def test_load_text_mode_file():
    def open_(path, mode):
        return io.StringIO('{"keepalive": 5}')

    assert load("config.json", Warnings(), open_)["keepalive"] == 5


def test_load_bad_value_names_key():
    with pytest.raises(ConfigError, match='"broker.port"'):
        load("c", Warnings(), opener({"c": b'{"broker": {"port": "x"}}'}))


def test_redacted_hides_passwords():
    cfg, _ = check({"wifi": {"ssid": "lab", "password": "wifisecret"},
                    "broker": {"username": "u", "password": "brokersecret"}})
    safe = redacted(cfg)
    assert safe["wifi"] == {"ssid": "lab", "password": "***"}
    assert safe["broker"]["password"] == "***" and safe["broker"]["username"] == "u"
    text = json.dumps(safe)
    assert "wifisecret" not in text and "brokersecret" not in text
    # the original is untouched
    assert cfg["wifi"]["password"] == "wifisecret" and cfg["broker"]["password"] == "brokersecret"
    # everything else is equal
    safe["wifi"]["password"], safe["broker"]["password"] = "wifisecret", "brokersecret"
    assert safe == cfg


def test_redacted_keeps_unset_passwords_visible():
    safe = redacted(check({})[0])
    assert safe["wifi"]["password"] == "" and safe["broker"]["password"] is None


def test_no_module_level_mutable_state():
    for name in dir(config):
        if name.startswith("__"):
            continue
        assert not isinstance(getattr(config, name), (list, dict, set, bytearray)), name


def test_unknown_sensor_key_warns_and_is_dropped():
    cfg, warns = check({"sensors": [{"type": "mcu"}, {"type": "battery", "pins": 34}]})
    assert warns == ['config.json: unknown key "sensors[1].pins" ignored']
    assert cfg["sensors"][1] == {"type": "battery", "prefix": "", "pin": 35, "atten": 11, "divider": 2.0}
