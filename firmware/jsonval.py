# Helpers shared by the validators of commands.py and config.py: type checks
# that behave the same on CPython and MicroPython, and a short JSON-like
# rendering of a bad value for one-line error messages. Pure; no state.
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
