# The ESP32's `network` for a board on the real interpreter: the station
# interface; association, status codes and the access point are the host's
# (emulator/board/fakes/networkfake.py Radio). The sockets themselves are the
# unix port's real ones, through the host's link proxy.
import _vmhost as _h

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_BEACON_TIMEOUT = 200
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204


def hostname(name=None):
    return None if name is not None else "esp32"


def country(code=None):
    return None if code is not None else "XX"


class WLAN:
    IF_STA = 0
    IF_AP = 1

    def __init__(self, interface=STA_IF):
        if interface != STA_IF:
            raise ValueError("only the STA interface is emulated")

    def active(self, is_active=None):
        if is_active is None:
            return _h.call("wlan", "active")
        _h.call("wlan", "active", bool(is_active))

    def connect(self, ssid=None, key=None, bssid=None):
        _h.call("wlan", "connect", ssid or "", key or "")

    def disconnect(self):
        _h.call("wlan", "disconnect")

    def isconnected(self):
        return _h.call("wlan", "isconnected")

    def status(self, param=None):
        if param is None:
            return _h.call("wlan", "status")
        return _h.call("wlan", "status", param)

    def ifconfig(self, cfg=None):
        if cfg is not None:
            return None
        return tuple(_h.call("wlan", "ifconfig"))

    def ipconfig(self, key):
        if key == "addr4":
            return (self.ifconfig()[0], "255.255.0.0")
        raise ValueError("unknown config param")

    def config(self, *args, **kwargs):
        if args and args[0] == "mac":
            return _h.mac
        if args:
            return _h.call("wlan", "config", args[0])
        return None
