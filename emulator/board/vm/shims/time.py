# The ESP32's `time`: the unix port's built-in (ticks, sleeps) extended so
# that time(), gmtime(), localtime() and mktime() count from the ESP32 epoch
# 2000-01-01 and follow the board's RTC, which the host keeps across resets
# (set by ntptime or machine.RTC, back at 2000-01-01 after power loss).
# `utime` is the built-in: a .py named like an extensible built-in
# shadows it, and `import utime` still reaches the original.
from utime import *  # noqa: F401,F403
import utime

import _vmhost

_UNIX_2000 = 946684800


def time():
    return int(utime.time() + _vmhost.rtc_delta)


def time_ns():
    return int((utime.time_ns() // 1000 + _vmhost.rtc_delta * 1000000) * 1000)


def gmtime(secs=None):
    return utime.gmtime((time() if secs is None else secs) + _UNIX_2000)


localtime = gmtime


def mktime(t):
    return utime.mktime(t) - _UNIX_2000
