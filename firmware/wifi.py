# WiFi station bring-up: activate the STA interface, associate, wait for an
# IP with a deadline, and say in words why it failed. Touches `network` only
# when a method is called, never at import.
import asyncio
import time

import network

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_STAT_IDLE = const(1000)
_STAT_CONNECTING = const(1001)
_STAT_GOT_IP = const(1010)
_POLL_MS = const(100)


def status_name(code):
    # The ESP32 status codes of network.WLAN.status(), in words.
    if code == 1000:
        return "idle"
    if code == 1001:
        return "connecting"
    if code == 1010:
        return "got ip"
    if code == 200:
        return "beacon timeout"
    if code == 201:
        return "no AP found"
    if code == 202:
        return "wrong password"
    if code == 203:
        return "association failed"
    if code == 204:
        return "handshake timeout"
    return "status %s" % code


class Wifi:
    def __init__(self, ssid, password):
        self._ssid = ssid
        self._password = password
        self._sta = None

    def _wlan(self):
        if self._sta is None:
            self._sta = network.WLAN(network.STA_IF)
        return self._sta

    def isconnected(self):
        return self._wlan().isconnected()

    async def connect(self, timeout_ms):
        # Returns None when connected, else a short reason. The driver retries
        # association by itself; a wrong password sticks at 202 until we
        # disconnect, so every failed attempt ends with disconnect().
        sta = self._wlan()
        if not sta.active():
            sta.active(True)
        if sta.isconnected():
            return None
        if sta.status() != _STAT_CONNECTING:
            sta.connect(self._ssid, self._password)
        start = time.ticks_ms()
        status = sta.status()
        while time.ticks_diff(time.ticks_ms(), start) < timeout_ms:
            if sta.isconnected():
                return None
            status = sta.status()
            if status not in (_STAT_IDLE, _STAT_CONNECTING, _STAT_GOT_IP):
                break
            await asyncio.sleep_ms(_POLL_MS)
        if sta.isconnected():
            return None
        sta.disconnect()
        if status in (_STAT_IDLE, _STAT_CONNECTING):
            return "no IP within %d ms" % timeout_ms
        return status_name(status)

    def ip(self):
        return self._wlan().ifconfig()[0]

    def rssi(self):
        try:
            return self._wlan().status("rssi")
        except Exception:
            return None
