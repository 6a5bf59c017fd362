# commands.py - parse and validate command payloads from `<prefix>/<id>/cmd`,
# remember recent results (QoS 1 redelivery), build result payloads.
#
# Pure logic: no I/O, no MQTT, does not execute commands (device.py does).
# Imports only `json` and `micropython`; keeps no module-level mutable state.
# Its helpers is_int/show also serve config.py's validators.
# Never lets bad input escape as anything but CommandError: a malformed
# command must not crash the board (SPEC section 2).
#
# Wire format (SPEC section 2):
#   cmd:    {"id": "<string>", "op": "<name>", "args": {...}}
#   result: {"id": "<string>", "ok": true, "result": {...}}
#           {"id": <string or null>, "ok": false, "error": "<human readable>"}
# Top-level keys other than id/op/args are ignored (room for later fields).

import json

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


# -- helpers shared with config.py's validators (type checks that behave the
# same on CPython and MicroPython, a short JSON-like rendering of a bad value
# for one-line errors) and the redacted copy of a config that get_config
# publishes: here, not in config.py, because config.py is unloaded after boot.

_SHOW_MAX = const(40)  # longest echo of a bad value in an error message


def is_int(v):
    # bool is an int subclass in CPython: true must not pass as 1.
    return isinstance(v, int) and not isinstance(v, bool)


def show(v):
    # JSON-like and the same on CPython and MicroPython (repr() differs for
    # non-ASCII), shortened to _SHOW_MAX characters.
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, str):
        if len(v) > _SHOW_MAX:
            v = v[:_SHOW_MAX] + "..."
        return '"' + v + '"'
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return str(v)


def redacted(cfg):
    # A copy of a validated config safe to print or publish (get_config):
    # every set password becomes "***"; unset ones (null or "") stay as they
    # are, so an operator can see that none is configured. The sections with
    # a password are copied, the rest is shared (the copy is only read).
    out = dict(cfg)
    for section in ("wifi", "broker"):
        sec = out[section] = dict(out[section])
        if sec.get("password"):
            sec["password"] = "***"
    return out


MAX_PAYLOAD = const(1024)  # bytes; bigger commands are refused unread
MAX_ID_LEN = const(64)  # characters
_MAX_SECONDS = const(86400)

OPS = ("ping", "read", "set_interval", "get_config", "reboot", "sleep", "led", "stats", "ota")

# Each op's argument spec, in the order of OPS: ((name, kind, lo, hi), ...);
# every listed arg is required. kind "int" = JSON integer lo..hi, "bool" =
# true/false, "" = any value (ota.py checks its url: loaded only then).
_SECONDS = (("seconds", "int", 1, _MAX_SECONDS),)
_ARG_SPECS = ((), (), _SECONDS, (), (), _SECONDS, (("on", "bool", 0, 0),), (), (("url", "", 0, 0),))


class CommandError(ValueError):
    """A command that cannot be run. str(e) is a one-line human-readable
    reason; `cmd_id` is the command's id when it could be read, else None."""

    def __init__(self, message, cmd_id=None):
        super().__init__(message)
        self.cmd_id = cmd_id


def dumps(obj):
    """Compact JSON as bytes: what the device publishes."""
    return json.dumps(obj, separators=(",", ":")).encode()


def parse(payload, size=None, max_payload=MAX_PAYLOAD):
    """Validate one command payload.

    payload: bytes (or bytearray/memoryview/str), or None when the transport
    dropped an oversize message (then `size` says how big it was).
    Returns (cmd_id, op, args) with args normalized (only the op's args, with
    their validated values). Raises CommandError for anything else.
    """
    if payload is None:
        if size is None:
            raise CommandError("payload too large (max %d bytes)" % max_payload)
        raise CommandError("payload too large (%d bytes, max %d)" % (size, max_payload))
    n = len(payload)
    if size is not None and size > n:
        n = size
    if n > max_payload:
        raise CommandError("payload too large (%d bytes, max %d)" % (n, max_payload))

    if isinstance(payload, str):
        text = payload
    else:
        if not isinstance(payload, (bytes, bytearray)):
            payload = bytes(payload)
        try:
            text = payload.decode("utf-8")
        except UnicodeError:
            raise CommandError("payload is not valid UTF-8")
    try:
        msg = json.loads(text)
    except ValueError:
        raise CommandError("payload is not valid JSON")
    except (RuntimeError, MemoryError):  # CPython RecursionError on deep nesting
        raise CommandError("payload is not valid JSON (nested too deeply)")
    if not isinstance(msg, dict):
        raise CommandError("payload must be a JSON object, got " + show(msg))

    # id first, so every later error can echo it.
    if "id" not in msg:
        raise CommandError('missing "id" (a string naming this command)')
    cmd_id = msg["id"]
    if not isinstance(cmd_id, str):
        raise CommandError('"id" must be a string, got ' + show(cmd_id))
    if not cmd_id:
        raise CommandError('"id" must not be empty')
    if len(cmd_id) > MAX_ID_LEN:
        raise CommandError('"id" is too long (%d chars, max %d)' % (len(cmd_id), MAX_ID_LEN))

    if "op" not in msg:
        raise CommandError('missing "op" (one of: ' + ", ".join(OPS) + ")", cmd_id)
    op = msg["op"]
    if not isinstance(op, str):
        raise CommandError('"op" must be a string, got ' + show(op), cmd_id)
    if op not in OPS:
        raise CommandError("unknown op " + show(op) + " (known: " + ", ".join(OPS) + ")", cmd_id)

    args = msg.get("args")
    if args is None and "args" not in msg:
        args = {}
    if not isinstance(args, dict):
        raise CommandError('"args" must be an object, got ' + show(args), cmd_id)

    spec = _ARG_SPECS[OPS.index(op)]
    extra = []
    for key in args:
        known = False
        for item in spec:
            if item[0] == key:
                known = True
                break
        if not known:
            extra.append(show(key) if isinstance(key, str) else '"' + str(key) + '"')
    if extra:
        if spec:
            takes = "takes: " + ", ".join([item[0] for item in spec])
        else:
            takes = "takes no args"
        extra.sort()
        raise CommandError(
            "unexpected arg%s %s for op \"%s\" (%s)"
            % ("s" if len(extra) > 1 else "", ", ".join(extra), op, takes),
            cmd_id,
        )
    out = {}
    for name, kind, lo, hi in spec:
        if name not in args:
            raise CommandError('op "%s" needs arg "%s"' % (op, name), cmd_id)
        v = args[name]
        if kind == "int":
            if not is_int(v) or v < lo or v > hi:
                raise CommandError(
                    '"%s" must be an integer %d..%d, got %s' % (name, lo, hi, show(v)), cmd_id
                )
        elif kind == "bool":
            if v is not True and v is not False:
                raise CommandError('"%s" must be true or false, got %s' % (name, show(v)), cmd_id)
        out[name] = v
    return cmd_id, op, out


def ok_result(cmd_id, result=None):
    """Result payload (bytes) for a command that ran."""
    if result is None:
        result = {}
    return dumps({"id": cmd_id, "ok": True, "result": result})


def error_result(cmd_id, message):
    """Result payload (bytes) for a command that was refused or failed;
    cmd_id None becomes JSON null."""
    return dumps({"id": cmd_id, "ok": False, "error": str(message)})


# The result cache: the result payloads of the last `size` command ids, so a
# QoS 1 redelivery of the same id gets the first result again instead of
# running twice. FIFO eviction, bounded by `size` entries. One flat list, no
# class and no dict (heap): [next slot, id0, payload0, id1, payload1, ...];
# a lookup scans the ids. 16 by default, as many as the command queue holds:
# only a command whose PUBACK never reached the broker is redelivered, and
# each cached result costs ~120 B of heap on the 64-bit VM (32 cost 3.9 KiB).


def new_cache(size=16):
    if not is_int(size) or size < 1:
        raise ValueError("result cache size must be an integer >= 1")
    return [1] + [None] * (2 * size)


def cache_get(cache, cmd_id):
    """The remembered payload for cmd_id, or None."""
    if cmd_id is not None:
        for i in range(1, len(cache), 2):
            if cache[i] == cmd_id:
                return cache[i + 1]
    return None


def cache_put(cache, cmd_id, payload):
    """Remember payload for cmd_id (None ids are not remembered)."""
    if cmd_id is None:
        return
    for i in range(1, len(cache), 2):
        if cache[i] == cmd_id:
            cache[i + 1] = payload
            return
    i = cache[0]
    cache[i] = cmd_id
    cache[i + 1] = payload
    cache[0] = i + 2 if i + 2 < len(cache) else 1
