"""The board's `network` module: a WLAN station that goes through the ESP32
driver's states (IDLE -> CONNECTING -> GOT_IP, or a failure code), against
an emulated access point that tests and scenarios can take away.

Like the real driver it keeps retrying association on its own after a loss
until `disconnect()` is called."""

from __future__ import annotations

import asyncio

from emulator.board.fakes import BoundClass

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


class AccessPoint:
    """The emulated WiFi network a board sees. `up=False` is WiFi loss."""

    def __init__(self, ssid: str = "esp32emu", password: str = "emulated"):
        self.ssid = ssid
        self.password = password
        self.up = True
        self.listeners: list = []

    def set_up(self, up: bool) -> None:
        self.up = up
        for fn in list(self.listeners):
            fn()


class Radio:
    """The station's state for one boot of one board."""

    def __init__(self, board):
        self.board = board
        self.active = False
        self.status = STAT_IDLE
        self.target: tuple[str, str] | None = None
        self._pending: asyncio.TimerHandle | None = None
        board.ap.listeners.append(self._ap_changed)

    def close(self) -> None:
        if self._ap_changed in self.board.ap.listeners:
            self.board.ap.listeners.remove(self._ap_changed)
        self._cancel()

    def _cancel(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None

    def connect(self, ssid: str, password: str) -> None:
        self.target = (ssid, password)
        self._attempt()

    def _attempt(self) -> None:
        self._cancel()
        self.status = STAT_CONNECTING
        delay = self.board.rng.uniform(0.05, 0.3)
        self._pending = self.board.loop.call_later(delay, self._associate)

    def _associate(self) -> None:
        self._pending = None
        ap = self.board.ap
        if self.target is None:
            return
        ssid, password = self.target
        if not ap.up or ssid != ap.ssid:
            self.status = STAT_NO_AP_FOUND
        elif password != ap.password:
            self.status = STAT_WRONG_PASSWORD
            return  # stuck at 202 until disconnect(), as on the real driver
        else:
            self.status = STAT_GOT_IP
            self.board.log_event("wifi", "got ip %s" % self.board.ip)
            return
        # The driver keeps retrying on its own.
        self._pending = self.board.loop.call_later(1.0, self._attempt)

    def disconnect(self) -> None:
        self.target = None
        self._cancel()
        self.status = STAT_IDLE

    def _ap_changed(self) -> None:
        if not self.board.ap.up and self.status == STAT_GOT_IP:
            self.status = STAT_BEACON_TIMEOUT
            self.board.log_event("wifi", "lost (beacon timeout)")
            self.board.link.wifi_lost()
            self._pending = self.board.loop.call_later(1.0, self._attempt)
        elif self.board.ap.up and self.target is not None and self.status != STAT_GOT_IP:
            self._attempt()

    @property
    def connected(self) -> bool:
        return self.active and self.status == STAT_GOT_IP


class NetworkModule:
    __name__ = "network"
    STA_IF = STA_IF
    AP_IF = AP_IF
    STAT_IDLE = STAT_IDLE
    STAT_CONNECTING = STAT_CONNECTING
    STAT_GOT_IP = STAT_GOT_IP
    STAT_BEACON_TIMEOUT = STAT_BEACON_TIMEOUT
    STAT_NO_AP_FOUND = STAT_NO_AP_FOUND
    STAT_WRONG_PASSWORD = STAT_WRONG_PASSWORD
    STAT_ASSOC_FAIL = STAT_ASSOC_FAIL
    STAT_HANDSHAKE_TIMEOUT = STAT_HANDSHAKE_TIMEOUT

    def __init__(self, board):
        self._board = board
        self._hostname = board.id
        self.WLAN = BoundClass(WLAN, board)

    def hostname(self, name: str | None = None):
        if name is None:
            return self._hostname
        self._hostname = name
        return None

    def country(self, code: str | None = None):
        return "XX" if code is None else None


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2

    def __init__(self, board, interface: int = STA_IF):
        if interface != STA_IF:
            raise ValueError("only the STA interface is emulated")
        self._board = board
        self._radio = self._board.radio

    def active(self, is_active=None):
        if is_active is None:
            return self._radio.active
        self._radio.active = bool(is_active)
        if not is_active:
            self._radio.disconnect()
        return None

    def connect(self, ssid=None, key=None, *, bssid=None):
        if not self._radio.active:
            raise OSError("Wifi Not Started")
        self._radio.connect(ssid or "", key or "")

    def disconnect(self):
        self._radio.disconnect()

    def isconnected(self) -> bool:
        # Radio.connected inlined: every board asks once a second (_chores)
        r = self._radio
        return r.active and r.status == STAT_GOT_IP

    def status(self, param=None):
        if param is None:
            return self._radio.status
        if param == "rssi":
            if not self._radio.connected:
                raise OSError("STA must be connected")
            return self._board.rssi()
        raise ValueError("unknown status param")

    def ifconfig(self, cfg=None):
        if cfg is not None:
            return None
        if not self._radio.connected:
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return (self._board.ip, "255.255.0.0", self._board.gateway, self._board.gateway)

    def ipconfig(self, key):
        if key == "addr4":
            ip = self.ifconfig()[0]
            return (ip, "255.255.0.0")
        raise ValueError("unknown config param")

    def config(self, *args, **kwargs):
        if args:
            if args[0] == "mac":
                return self._board.mac
            if args[0] in ("hostname", "dhcp_hostname"):
                return self._board.id
            if args[0] == "essid":
                return self._radio.target[0] if self._radio.target else ""
            raise ValueError("unknown config param")
        return None

    def scan(self):
        if not self._board.ap.up:
            return []
        return [(self._board.ap.ssid.encode(), b"\x24\x0a\xc4\x00\x00\x01", 6, self._board.rssi(), 3, False)]
