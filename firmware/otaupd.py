# otaupd.py - the update itself, run before the app on the boot after an
# `ota` command (main.py -> otaboot.recover()), with the whole heap and no
# MQTT: join WiFi, fetch the manifest and verify its signature (otachk.py)
# before anything else is written, download every file to ota_new/ (sha256
# per file, resumed with `Range` after a dropped link), read the staged
# files back, install them through the journal and reset into the trial
# boot. A refusal or failure leaves the running version as it was and the
# reason in the journal, published once online (otarun.py).
import asyncio
import binascii
import hashlib
import json
import os
import time

import machine
import network

import otaboot
import otachk
import otahttp

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_TIMEOUT_MS = const(10000)  # every read of the download
_TRIES = const(5)  # per file: a dropped link resumes, a bad hash restarts
_WIFI_MS = const(20000)
_BOOT_TRIES = const(3)  # boots that started the update (power lost meanwhile)


def run(j):
    """Update, then reset into the trial boot; the journal with the
    outcome (`refused` or `failed`) when the running version stays."""
    j["tries"] = j.get("tries", 0) + 1
    staged = j["state"] != "requested"
    if j["tries"] > _BOOT_TRIES:
        return _outcome(j, "failed" if staged else "refused", "power lost during the update %d times" % _BOOT_TRIES)
    otaboot.write(j)  # this boot's try counts before anything can fail
    otaboot.clear(otaboot.NEW)
    try:
        _wifi(j["url"])
        j["state"] = "requested"
        j = asyncio.run(_update(j))
    except Exception as e:
        return _outcome(j, "failed" if j["state"] != "requested" else "refused", str(e) or type(e).__name__)
    otaboot.install(j)
    j["state"] = "trial"
    j["boots"] = 0
    otaboot.write(j)
    machine.reset()


def _outcome(j, state, error):
    otaboot.clear(otaboot.NEW)
    otaboot.clear(otaboot.OLD)
    j["state"] = state
    j["error"] = error
    otaboot.write(j)
    return j


def _wifi(url):
    with open("config.json") as f:
        c = json.loads(f.read())
    w = c.get("wifi") or {}
    sta = network.WLAN(network.STA_IF)
    sta.active(True)
    if not sta.isconnected():
        sta.connect(w.get("ssid", ""), w.get("password", ""))
    t = time.ticks_ms()
    while not sta.isconnected():
        if time.ticks_diff(time.ticks_ms(), t) > _WIFI_MS:
            raise ValueError("wifi: not connected within %d s" % (_WIFI_MS // 1000))
        time.sleep_ms(100)
    ntp = c.get("ntp", True)
    if not (url.startswith("https://") and ntp):
        return
    import tlsctx

    if not tlsctx.clock_ok():
        # https: mbedTLS checks the certificates' dates against the RTC
        # (otahttp.py refuses with a clear reason if it is still unset)
        try:
            import ntptime

            if isinstance(ntp, str):
                ntptime.host = ntp
            ntptime.settime()
        except Exception:
            pass


async def _update(j):
    url = j["url"]
    j["version"], plan = await otachk.check(url, j["from"])
    j["state"] = "downloading"
    otaboot.write(j)  # verified: from here on ota_new/ fills
    os.mkdir(otaboot.NEW)
    base = url[:url.rfind("/") + 1] + "files/"
    buf = bytearray(1024)
    for name, rpath, size, sha in plan:
        await _fetch(base + rpath, otaboot.NEW + "/" + name, size, sha, buf)
    for name, rpath, size, sha in plan:  # what the flash holds, read back
        h = hashlib.sha256()
        with open(otaboot.NEW + "/" + name, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
        if binascii.hexlify(h.digest()).decode() != sha:
            raise ValueError("staged %s does not match its sha256" % name)
    otaboot.clear(otaboot.OLD)
    os.mkdir(otaboot.OLD)
    names = []
    for p in plan:
        n = p[0]
        names.append(n)
        # the twin (.py of a .mpy, .mpy of a .py) goes too: a stale .py
        # would shadow the new .mpy, a stale .mpy would come back later
        twin = n[:-3] + ".mpy" if n.endswith(".py") else n[:-4] + ".py" if n.endswith(".mpy") else None
        if twin is not None and twin not in names:
            names.append(twin)
    j["names"] = names
    j["had"] = [n for n in names if otaboot.exists(n)]
    j["state"] = "install"
    otaboot.write(j)  # from here on a power loss ends in the new version's trial
    return j


async def _fetch(url, dest, size, sha, buf):
    # st: the open file, its running sha256, bytes in it (the sink's state)
    st = [open(dest, "wb"), hashlib.sha256(), 0]
    name = url[url.rfind("/") + 1:]

    def sink(mv):
        if st[2] + len(mv) > size:
            raise ValueError("%s is bigger than its manifest size" % name)
        st[0].write(mv)
        st[1].update(mv)
        st[2] += len(mv)

    tries = 0
    try:
        while True:
            try:
                await otahttp.get(url, st[2], buf, sink, _TIMEOUT_MS)
                if st[2] == size and binascii.hexlify(st[1].digest()).decode() == sha:
                    return
                if st[2] == size:  # all there but wrong: start again
                    err = "sha256 mismatch"
                    st[0].close()
                    st[0] = open(dest, "wb")
                    st[1] = hashlib.sha256()
                    st[2] = 0
                else:
                    err = "ended at %d of %d bytes" % (st[2], size)
            except ValueError:
                raise
            except Exception as e:  # a dropped link: resume from st[2] with Range
                err = str(e) or type(e).__name__
            tries += 1
            if tries >= _TRIES:
                raise ValueError("download of %s failed after %d tries: %s" % (name, tries, err))
            await asyncio.sleep_ms(200 * tries)
    finally:
        st[0].close()
