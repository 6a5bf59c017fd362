# Helpers shared by the validators of commands.py and config.py: type checks
# that behave the same on CPython and MicroPython, a short JSON-like
# rendering of a bad value for one-line error messages, and the redacted
# copy of a config that get_config publishes. Pure; no state.
try:
    from micropython import const
except ImportError:

    def const(x):
        return x


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


def _copy(v):
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def redacted(cfg):
    # A deep copy of a validated config safe to print or publish (get_config):
    # every set password becomes "***"; unset ones (null or "") stay as they
    # are, so an operator can see that none is configured. Lives here, not in
    # config.py, because config.py is unloaded after boot to free the heap.
    out = _copy(cfg)
    for section in ("wifi", "broker"):
        sec = out.get(section)
        if isinstance(sec, dict) and sec.get("password"):
            sec["password"] = "***"
    return out
