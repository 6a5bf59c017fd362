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
#   ota         trial_s: int 10..3600 (a new release must get its birth
#               acknowledged within it), max_boots: int 1..10 (failed trial
#               boots before the previous version comes back); checked but
#               not kept in the returned config: ota.py reads config.json
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


# The checks as data, run in this order: `key kind lo hi [what]` per line.
# Kinds: int (an integer lo..hi; wdt_ms may also be 0, off), pin (a
# required integer lo..hi), float (an int or float lo..hi: `what`), bool,
# str (a string of at most hi bytes; lo 1: not empty), username (null or a
# str without NUL), password (null or a str; needs the username), topic (a
# str and the topic rules), ntp (true, false or a host of at most hi
# bytes), addr, atten. "a.b" is b in the object a, merged over its defaults
# when first met; a sensor rule is "type.b". Strings parsed when validate()
# runs, not tuples of names: their words are not interned as qstrs, which
# would stay in the heap after config.py is unloaded.
_RULES = """
wifi.ssid        str      0    32
wifi.password    str      0    64
broker.host      str      1    253
broker.port      int      1    65535
broker.tls       bool     0    0
broker.username  username 0    256
broker.password  password 0    256
prefix           topic    1    64
keepalive        int      2    65535
interval         float    0.1  86400   a number of seconds 0.1..86400
backoff.base_ms  int      100  3600000
backoff.cap_ms   int      1000 3600000
wdt_ms           int      1000 3600000
ntp              ntp      0    253
bme280.i2c       int      0    1
bme280.sda       pin      0    48
bme280.scl       pin      0    48
bme280.addr      addr     0    0
dht22.pin        pin      0    48
battery.pin      pin      0    48
battery.atten    atten    0    0
battery.divider  float    1    100     a divider ratio 1..100 (2 for a 1:2 divider)
ota.trial_s      int      10   3600
ota.max_boots    int      1    10
"""
# Each sensor type: its keys with their defaults (null: required), then the
# names of its readings.
_SENSORS = """
bme280   i2c=0 sda=21 scl=22 addr=118  t p h
dht22    pin=null                      t h
battery  pin=35 atten=11 divider=2.0   bat
mcu                                    mcu
"""
_SENSORS_MAX = const(16)
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


def _bad(key, msg, v):
    return ConfigError('config.json: "%s" must be %s (got %s)' % (key, msg, show(v)))


def _merge(key, v, into, warn):
    # The object v over the defaults in `into`, key by key.
    if not isinstance(v, dict):
        raise _bad(key, "an object", v)
    for k in v:
        if k in into:
            into[k] = v[k]
        else:
            warn('config.json: unknown key "%s.%s" ignored' % (key, k))


def _check(key, v, spec, into):
    # One rule (`spec`: the words of a line of _RULES) on the value v of
    # `key` in the merged object `into`. Returns v.
    kind = spec[1]
    lo = float(spec[2]) if "." in spec[2] else int(spec[2])
    hi = int(spec[3])
    if kind == "pin" and v is None:
        raise ConfigError('config.json: "%s" is required' % key)
    if kind == "int" or kind == "pin":
        if key == "backoff.cap_ms":
            lo = max(lo, into["base_ms"])  # a smaller window hot-loops against a refusing broker
        if not is_int(v) or not (lo <= v <= hi or (key == "wdt_ms" and v == 0)):
            msg = "an integer %d..%d" % (lo, hi)
            raise _bad(key, "0 (off) or " + msg if key == "wdt_ms" else msg, v)
        if key.endswith("scl") and v == into["sda"]:
            raise _bad(key, "a pin other than sda", v)
    elif kind == "float":
        # `not (lo <= v <= hi)` also refuses NaN; +-inf fail the range.
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (lo <= v <= hi):
            raise _bad(key, " ".join(spec[4:]), v)
    elif kind == "bool":
        if v is not True and v is not False:
            raise _bad(key, "true or false", v)
    elif kind == "ntp":
        if v is not True and v is not False and not (isinstance(v, str) and v and len(v.encode()) <= hi):
            raise _bad(key, "true, false or an NTP server host name of at most %d bytes" % hi, v)
    elif kind == "addr":
        if not is_int(v) or v not in (0x76, 0x77):
            raise _bad(key, "118 (0x76) or 119 (0x77)", v)
    elif kind == "atten":
        if isinstance(v, bool) or v not in (0, 2.5, 6, 11):
            raise _bad(key, "an ADC attenuation in dB: 0, 2.5, 6 or 11", v)
    elif v is not None or kind == "str" or kind == "topic":
        # Every string has a bound: whatever passes must fit CONNECT and topics.
        if not isinstance(v, str) or (lo and not v):
            raise _bad(key, "a non-empty string" if lo else "a string", v)
        if len(v.encode()) > hi:
            raise _bad(key, "a string of at most %d bytes" % hi, v)
        if kind == "username" and "\x00" in v:
            raise _bad(key, "a string without NUL (MQTT-1.5.3-2)", v)
        if kind == "password" and into["username"] is None:
            raise ConfigError(
                'config.json: "broker.password" needs "broker.username"'
                " (MQTT 3.1.1 sends no password without a user name)"
            )
        if kind == "topic" and ("+" in v or "#" in v or "\x00" in v or v[0] == "$" or "" in v.split("/")):
            raise _bad(key, "a topic prefix without '+', '#', '//', or a leading '$' or '/' or trailing '/'", v)
    return v


def validate(raw, warn):
    """Check a parsed config.json (a dict) and return a complete config.

    Missing keys take the defaults() (nested objects merged key by key); each unknown
    key is reported once through warn(msg) and dropped; a bad value raises
    ConfigError naming the key path (e.g. "broker.port"). `raw` is not
    modified.
    """
    if not isinstance(raw, dict):
        raise ConfigError("config.json: must be a JSON object (got %s)" % show(raw))
    cfg = defaults()
    # Checked here, kept out of the config the device holds: only an
    # update reads them (ota.py, from config.json).
    checked_only = {"ota": {"trial_s": 60, "max_boots": 3}}
    for k in raw:
        if k not in cfg and k not in checked_only:
            warn('config.json: unknown key "%s" ignored' % (k,))

    v = raw.get("id")
    if v is not None:
        if not isinstance(v, str) or not v or len(v) > 64 or [c for c in v if c not in _ID_CHARS]:
            raise _bad("id", "null or 1..64 characters of A-Z a-z 0-9 _ -", v)
    cfg["id"] = v

    merged = []
    for line in _RULES.split("\n"):
        spec = line.split()
        if not spec or spec[0].split(".")[0] in ("bme280", "dht22", "battery"):
            continue
        path = spec[0].split(".")
        if len(path) == 1:
            cfg[path[0]] = _check(path[0], raw.get(path[0], cfg[path[0]]), spec, cfg)
            continue
        into = cfg[path[0]] if path[0] in cfg else checked_only[path[0]]
        if path[0] not in merged:
            merged.append(path[0])
            if path[0] in raw:
                _merge(path[0], raw[path[0]], into, warn)
        _check(spec[0], into[path[1]], spec, into)

    # Bounded: the duplicate-name check below is quadratic.
    sensors = raw.get("sensors", [])
    if not isinstance(sensors, list) or len(sensors) > _SENSORS_MAX:
        raise _bad("sensors", "a list of at most %d objects" % _SENSORS_MAX, sensors)
    seen = []  # (reading, index) so far
    for i, s in enumerate(sensors):
        key = "sensors[%d]" % i
        if not isinstance(s, dict):
            raise _bad(key, "an object", s)
        kind = s.get("type")
        words = None
        for line in _SENSORS.split("\n"):
            if line.split(" ")[0] == kind:
                words = line.split()
        if not kind or words is None:
            raise _bad(key + "." + "type", '"bme280", "dht22", "battery" or "mcu"', kind)
        out = {}  # type: dict
        for w in words[1:]:
            if "=" in w:
                k, d = w.split("=")
                out[k] = None if d == "null" else float(d) if "." in d else int(d)
        out["type"] = kind
        out["prefix"] = ""
        _merge(key, s, out, warn)
        prefix = out["prefix"]
        if not isinstance(prefix, str) or len(prefix) > 16 or [c for c in prefix if c not in _ID_CHARS]:
            raise _bad(key + "." + "prefix", "up to 16 characters of A-Z a-z 0-9 _ -", prefix)
        for line in _RULES.split("\n"):
            spec = line.split()
            if spec and spec[0].split(".")[0] == kind:
                name = spec[0].split(".")[1]
                _check(key + "." + name, out[name], spec, out)
        for r in words[1:]:
            if "=" in r:
                continue
            name = prefix + r
            for other, j in seen:
                if other == name:
                    raise ConfigError(
                        'config.json: "sensors[%d]" reads "%s" like "sensors[%d]": give one a "prefix"' % (i, name, j)
                    )
            seen.append((name, i))
        cfg["sensors"].append(out)
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

