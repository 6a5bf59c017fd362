"""The emulated `network.WLAN` station against an emulated access point:
the ESP32 driver's status codes, its own reconnects, and `status('rssi')`.
No broker: the firmware here is a status watcher written for the test."""

from __future__ import annotations

from emulator.board.fakes.networkfake import AccessPoint
from tests.test_emulator_board import boot_board, image

# Prints every status change; reports once a status has held for HOLD_MS.
WATCHER = """\
import asyncio, network, time
HOLD_MS = 1500
sta = network.WLAN(network.STA_IF)
print("active", sta.active())
try:
    sta.connect("esp32emu", "emulated")
except OSError as e:
    print("inactive", repr(str(e)))
sta.active(True)
print("idle", sta.status())

async def main():
    sta.connect("esp32emu", "emulated")
    last, since, held = None, time.ticks_ms(), False
    while True:
        s = sta.status()
        if s != last:
            print("status", s)
            if s == network.STAT_GOT_IP:
                print("connected", (sta.isconnected(), sta.ifconfig()[0], sta.status("rssi")))
            last, since, held = s, time.ticks_ms(), False
        elif not held and time.ticks_diff(time.ticks_ms(), since) >= HOLD_MS:
            print("held", s)
            held = True
            if s == network.STAT_WRONG_PASSWORD:
                sta.disconnect()
                print("disconnected", sta.status())
        await asyncio.sleep_ms(10)

asyncio.run(main())
"""


def statuses(con, start: int = 0) -> list[int]:
    return [int(ln.split()[1]) for ln in con.snapshot()[start:] if ln.startswith("status ")]


def test_wlan_connects_loses_the_ap_and_reconnects_on_its_own(emu, tmp_path):
    ap = AccessPoint()
    board, con = boot_board(emu, image(tmp_path, {"main.py": WATCHER}), ap=ap)
    assert con.value("active") is False
    assert con.value("inactive") == "Wifi Not Started"
    assert con.value("idle") == 1000
    up = con.wait("^status 1010$")
    assert statuses(con)[:2] == [1001, 1010]
    connected, ip, rssi = con.value("connected")
    assert connected is True and ip == board.ip
    assert -100 < rssi < -20
    # The AP goes away: beacon timeout, then the driver's own retries find no AP.
    emu.call(ap.set_up, False)
    lost = con.wait("^status 200$", start=up)
    con.wait("^status 201$", 3, start=lost)
    assert set(statuses(con, lost)) <= {200, 1001, 201}
    # It comes back: the station reassociates without the firmware calling connect().
    mark = len(con.snapshot())
    emu.call(ap.set_up, True)
    con.wait("^status 1010$", 3, start=mark)
    assert emu.call(lambda: board.radio.connected) is True


def test_wrong_password_sticks_at_202_until_disconnect(emu, tmp_path):
    board, con = boot_board(emu, image(tmp_path, {"main.py": WATCHER}), ap=AccessPoint(password="another"))
    first = con.wait("^status 202$")
    held = con.wait("^held ", 3, start=first)
    assert con.lines[held] == "held 202"
    assert statuses(con) == [1001, 202], "202 must not flap while the driver is stuck"
    assert con.value("disconnected", start=held) == 1000
    assert not any(ln.startswith("connected ") for ln in con.snapshot())


def test_no_ap_found_when_the_ssid_is_absent_and_rssi_needs_a_connection(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import network, time
            sta = network.WLAN(network.STA_IF)
            sta.active(True)
            try:
                sta.status("rssi")
                print("rssi", repr("value"))
            except OSError:
                print("rssi", repr("OSError"))
            sta.connect("nowhere", "emulated")
            while sta.status() == network.STAT_CONNECTING:
                time.sleep_ms(10)
            print("result", (sta.status(), sta.isconnected(), sta.ifconfig()[0]))
            """
        },
    )
    board, con = boot_board(emu, img)
    assert con.value("rssi") == "OSError"
    assert con.value("result") == (201, False, "0.0.0.0")
