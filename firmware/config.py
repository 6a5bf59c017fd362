# config.py - validate the board's `config.json` into a complete config dict:
# defaults for missing keys, one warning per unknown key, a ConfigError naming
# the key for a bad value (SPEC section 2, "Board configuration").
#
# Pure logic: reads a file only through the `open_` it is given, never logs
# (warnings go through the `warn` callable), never touches hardware.
# Imports only `json` and `micropython`; keeps no module-level mutable state
# (the defaults come fresh from defaults() on every call).
#
# Keys and bounds (all optional):
#   id          null (app derives one from the MAC) or 1..64 of [A-Za-z0-9_-]
#   wifi        ssid: str <= 32 bytes; password: str <= 64 bytes (802.11)
#   broker      host: 1..253 bytes (a DNS name); port: int 1..65535; tls: bool;
#               username: str <= 256 bytes or null; password: str <= 256
#               bytes or null (needs username, MQTT-3.1.2-22); no NUL in either
#   prefix      1..64 bytes, no '+', '#', NUL, no leading/trailing '/',
#               no empty level ('//'), not starting with '$' (broker-reserved)
#   keepalive   int 2..65535 seconds (0 would disable keepalive: refused)
#   interval    int or float 0.1..86400 seconds between telemetry messages
#   backoff     base_ms: int 100..3600000; cap_ms: int max(1000, base_ms)..3600000
#               (a smaller window hot-loops against a broker that refuses us)
#   wdt_ms      0 (no watchdog) or int 1000..3600000 (below 1 s the loop
#               cannot feed it through a slow TLS handshake or DNS lookup)
#   ntp         true (sync the clock with ntptime's default server), false
#               (never; telemetry "ts" is null), or a server host name (<= 253)
#   sensors     list of up to 16 objects, each {"type": ..., "prefix": "" (put before
#               its reading names), plus per type}:
#                 bme280  i2c: 0|1 (0), sda/scl: pins (21/22), addr: 118|119 (0x76)
#                 dht22   pin: required
#                 battery pin (35), atten: dB 0|2.5|6|11 (11), divider: 1..100 (2.0)
#                 mcu     nothing
#               no two entries may produce the same reading name; an empty
#               list means the MCU's own sensor alone

import json

from commands import is_int, show

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_ID_MAX = const(64)
_SSID_MAX = const(32)
_WIFI_PASSWORD_MAX = const(64)
_PREFIX_MAX = const(64)
_HOST_MAX = const(253)  # a DNS name
_CREDENTIAL_MAX = const(256)  # MQTT allows 65535; a board's heap does not
_BASE_MIN_MS = const(100)
_CAP_MIN_MS = const(1000)
_SENSORS_MAX = const(16)
_LIMIT_MS = const(3600000)  # one hour
_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"


class ConfigError(ValueError):
    """A bad config.json; the message names the key and is fit for the
    console as is."""


def defaults():
    """A fresh, complete default config (safe to modify). A function, not a
    module-level dict: module globals are shared by every emulated board."""
    return {
        "id": None,  # the app derives one from the MAC
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


def _bad(key, what, v):
    return ConfigError('config.json: "%s" must be %s (got %s)' % (key, what, show(v)))


def _int(key, v, lo, hi):
    if not is_int(v) or v < lo or v > hi:
        raise _bad(key, "an integer %d..%d" % (lo, hi), v)
    return v


def _str(key, v, max_bytes, empty=True):
    # Every string has a bound: whatever passes must fit CONNECT and topics.
    if not isinstance(v, str) or (not empty and not v):
        raise _bad(key, "a string" if empty else "a non-empty string", v)
    if len(v.encode()) > max_bytes:
        raise _bad(key, "a string of at most %d bytes" % max_bytes, v)
    return v


def _bool(key, v):
    if v is not True and v is not False:
        raise _bad(key, "true or false", v)
    return v


def _check_id(v):
    if v is None:
        return None
    what = "null or 1..%d characters of A-Z a-z 0-9 _ -" % _ID_MAX
    if not isinstance(v, str) or not v or len(v) > _ID_MAX:
        raise _bad("id", what, v)
    for c in v:
        if c not in _ID_CHARS:
            raise _bad("id", what, v)
    return v


def _check_prefix(v):
    _str("prefix", v, _PREFIX_MAX, False)
    what = "a topic prefix without '+', '#', '//', or a leading '$' or '/' or trailing '/'"
    if "+" in v or "#" in v or "\x00" in v or "//" in v or v[0] in "$/" or v[-1] == "/":
        raise _bad("prefix", what, v)
    return v


def _check_interval(v):
    # `not (lo <= v <= hi)` also refuses NaN; +-inf fail the range.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.1 <= v <= 86400):
        raise _bad("interval", "a number of seconds 0.1..86400", v)
    return v


def _check_ntp(v):
    if v is True or v is False:
        return v
    if isinstance(v, str) and v and len(v.encode()) <= _HOST_MAX:
        return v
    raise _bad("ntp", "true, false or an NTP server host name of at most %d bytes" % _HOST_MAX, v)


def _sensor_defaults(kind):
    # Each sensor type's keys and their defaults (None: required).
    if kind == "bme280":
        return {"i2c": 0, "sda": 21, "scl": 22, "addr": 0x76}
    if kind == "dht22":
        return {"pin": None}
    if kind == "battery":
        return {"pin": 35, "atten": 11, "divider": 2.0}
    if kind == "mcu":
        return {}
    return None


def _sensor_readings(kind):
    if kind == "bme280":
        return ("t", "p", "h")
    if kind == "dht22":
        return ("t", "h")
    if kind == "battery":
        return ("bat",)
    return ("mcu",)


def _pin(key, v):
    if v is None:
        raise ConfigError('config.json: "%s" is required' % key)
    return _int(key, v, 0, 48)


def _check_sensor(i, s, warn):
    key = "sensors[%d]" % i
    if not isinstance(s, dict):
        raise _bad(key, "an object", s)
    kind = s.get("type")
    out = _sensor_defaults(kind) if isinstance(kind, str) else None
    if out is None:
        raise _bad(key + ".type", '"bme280", "dht22", "battery" or "mcu"', kind)
    out["type"] = kind
    out["prefix"] = ""
    for k in s:
        if k in out:
            out[k] = s[k]
        else:
            warn('config.json: unknown key "%s.%s" ignored' % (key, k))
    key += "."
    prefix = out["prefix"]
    if not isinstance(prefix, str) or len(prefix) > 16 or [c for c in prefix if c not in _ID_CHARS]:
        raise _bad(key + "prefix", "up to 16 characters of A-Z a-z 0-9 _ -", prefix)
    if kind == "bme280":
        _int(key + "i2c", out["i2c"], 0, 1)
        _pin(key + "sda", out["sda"])
        _pin(key + "scl", out["scl"])
        if out["sda"] == out["scl"]:
            raise _bad(key + "scl", "a pin other than sda", out["scl"])
        if not is_int(out["addr"]) or out["addr"] not in (0x76, 0x77):
            raise _bad(key + "addr", "118 (0x76) or 119 (0x77)", out["addr"])
    elif kind == "dht22":
        _pin(key + "pin", out["pin"])
    elif kind == "battery":
        _pin(key + "pin", out["pin"])
        atten = out["atten"]
        if isinstance(atten, bool) or atten not in (0, 2.5, 6, 11):
            raise _bad(key + "atten", "an ADC attenuation in dB: 0, 2.5, 6 or 11", atten)
        div = out["divider"]
        if isinstance(div, bool) or not isinstance(div, (int, float)) or not (1 <= div <= 100):
            raise _bad(key + "divider", "a divider ratio 1..100 (2 for a 1:2 divider)", div)
    return out


def _check_sensors(v, warn):
    # Bounded: the duplicate-name check below is quadratic.
    if not isinstance(v, list) or len(v) > _SENSORS_MAX:
        raise _bad("sensors", "a list of at most %d objects" % _SENSORS_MAX, v)
    out = []
    seen = []  # (reading, index) so far
    for i, s in enumerate(v):
        spec = _check_sensor(i, s, warn)
        for r in _sensor_readings(spec["type"]):
            name = spec["prefix"] + r
            for other, j in seen:
                if other == name:
                    raise ConfigError(
                        'config.json: "sensors[%d]" reads "%s" like "sensors[%d]": give one a "prefix"' % (i, name, j)
                    )
            seen.append((name, i))
        out.append(spec)
    return out


def _section(raw, base, name, warn):
    # Merge the nested object `name` over its defaults, key by key.
    out = base[name]
    if name not in raw:
        return out
    given = raw[name]
    if not isinstance(given, dict):
        raise _bad(name, "an object", given)
    for k in given:
        if k in out:
            out[k] = given[k]
        else:
            warn('config.json: unknown key "%s.%s" ignored' % (name, k))
    return out


def validate(raw, warn):
    """Check a parsed config.json (a dict) and return a complete config.

    Missing keys take the defaults() (nested objects merged key by key); each unknown
    key is reported once through warn(msg) and dropped; a bad value raises
    ConfigError naming the key path (e.g. "broker.port"). `raw` is not
    modified.
    """
    if not isinstance(raw, dict):
        raise ConfigError("config.json: must be a JSON object (got %s)" % show(raw))
    base = defaults()
    for k in raw:
        if k not in base:
            warn('config.json: unknown key "%s" ignored' % (k,))

    cfg = {}
    cfg["id"] = _check_id(raw.get("id"))

    wifi = _section(raw, base, "wifi", warn)
    _str("wifi.ssid", wifi["ssid"], _SSID_MAX)
    _str("wifi.password", wifi["password"], _WIFI_PASSWORD_MAX)
    cfg["wifi"] = wifi

    broker = _section(raw, base, "broker", warn)
    _str("broker.host", broker["host"], _HOST_MAX, False)
    _int("broker.port", broker["port"], 1, 65535)
    _bool("broker.tls", broker["tls"])
    user = broker["username"]
    if user is not None and "\x00" in _str("broker.username", user, _CREDENTIAL_MAX):
        raise _bad("broker.username", "a string without NUL (MQTT-1.5.3-2)", user)
    if broker["password"] is not None:
        _str("broker.password", broker["password"], _CREDENTIAL_MAX)
        if broker["username"] is None:
            raise ConfigError(
                'config.json: "broker.password" needs "broker.username"'
                " (MQTT 3.1.1 sends no password without a user name)"
            )
    cfg["broker"] = broker

    cfg["prefix"] = _check_prefix(raw.get("prefix", base["prefix"]))
    cfg["keepalive"] = _int("keepalive", raw.get("keepalive", base["keepalive"]), 2, 65535)
    cfg["interval"] = _check_interval(raw.get("interval", base["interval"]))

    backoff = _section(raw, base, "backoff", warn)
    lo = _int("backoff.base_ms", backoff["base_ms"], _BASE_MIN_MS, _LIMIT_MS)
    _int("backoff.cap_ms", backoff["cap_ms"], max(lo, _CAP_MIN_MS), _LIMIT_MS)
    cfg["backoff"] = backoff

    wdt = raw.get("wdt_ms", base["wdt_ms"])
    if not is_int(wdt) or not (wdt == 0 or 1000 <= wdt <= _LIMIT_MS):
        raise _bad("wdt_ms", "0 (off) or an integer 1000..%d" % _LIMIT_MS, wdt)
    cfg["wdt_ms"] = wdt

    cfg["ntp"] = _check_ntp(raw.get("ntp", base["ntp"]))
    cfg["sensors"] = _check_sensors(raw.get("sensors", []), warn)
    return cfg


def load(path, warn, open_=open):
    """Read, parse and validate the config file at `path`. Any failure is a
    ConfigError naming the file: the board stops with one console line."""
    try:
        with open_(path, "rb") as f:
            data = f.read()
    except OSError as e:
        # ENOENT is 2 on the ESP32 and CPython (44 in the WebAssembly VM);
        # `errno` is not imported to keep this module pure.
        if e.args and e.args[0] == 2:
            raise ConfigError("config.json not found (%s): the board needs one to boot" % path)
        raise ConfigError("config.json not found or unreadable (%s): %s" % (path, e))
    except MemoryError:
        raise ConfigError("config.json is too big to read (%s)" % path)
    if not isinstance(data, str):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeError:
            raise ConfigError("config.json is not valid UTF-8 (%s)" % path)
        except MemoryError:
            raise ConfigError("config.json is too big to read (%s)" % path)
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise ConfigError("config.json is not valid JSON: %s (%s)" % (e, path))
    except RuntimeError:  # CPython's RecursionError
        raise ConfigError("config.json is not valid JSON: nested too deeply (%s)" % path)
    except MemoryError:  # MicroPython parses without recursion, into the heap
        raise ConfigError("config.json is too big or nested too deeply to parse (%s)" % path)
    return validate(raw, warn)

