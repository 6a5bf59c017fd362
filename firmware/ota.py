# ota.py - the `ota` command: fetch a release's manifest, verify its
# signature with the board's release key (release.pub) BEFORE anything is
# written, download every file to ota_new/ (sha256 checked per file, resumed
# with `Range` after a dropped link), check the staged files again, then
# install through the journal (otaboot.py) and reboot into the trial boot.
#
# Loaded only when an `ota` command arrives (device.py), dropped again when
# it fails; a successful update ends in a reset. Progress and outcome go to
# <prefix>/<id>/ota (QoS 1, retained); the command's result says ok once
# every file is staged and verified.
import asyncio
import binascii
import hashlib
import json
import os
import sys

import machine

import commands
import otaboot
import otahttp

try:
    from micropython import const
except ImportError:  # CPython

    def const(x):
        return x


_MANIFEST_MAX = const(4096)
_TIMEOUT_MS = const(10000)  # every read of the download
_TRIES = const(5)  # per file: a dropped link resumes, a bad hash restarts
_BUF = const(1024)
_BUSY = ("downloading", "install", "trial", "rollback")
_RESERVED = ("config.json", "ota.json", "ota.tmp", "ota_new", "ota_old")
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"


class OtaError(Exception):
    pass


def start(dev, cmd_id, url):
    """Run the update in its own task: the command worker goes on (a second
    `ota` meanwhile gets "update in progress")."""
    busy = getattr(dev, "ota_busy", False)
    dev.ota_busy = True
    asyncio.create_task(_command(dev, cmd_id, url, busy))


async def _command(dev, cmd_id, url, busy):
    j = None
    try:
        if busy:
            raise OtaError("update in progress")
        m = await check(dev, url)
        j = m[0]
        await _download(dev, url, m)
        payload = commands.ok_result(cmd_id, {"from": j["from"], "version": j["version"]})
    except Exception as e:
        payload = commands.error_result(cmd_id, str(e) or type(e).__name__)
    commands.cache_put(dev.results, cmd_id, payload)
    for _ in range(1 + dev._busy.pop(cmd_id, 0)):
        await dev._send_result(payload)
    if j is None:  # refused: nothing was written
        if not busy:
            dev.ota_busy = False
            _unload()
        return
    if j["state"] != "install":
        otaboot.clear(otaboot.NEW)
        try:
            os.remove(otaboot.JOURNAL)
        except OSError:
            pass
        await say(dev, j, "failed", 0, json.loads(payload)["error"])
        dev.ota_busy = False
        _unload()
        return
    await say(dev, j, "installing", 100, None)
    otaboot.install(j)
    j["state"] = "trial"
    j["boots"] = 0
    otaboot.write(j)
    await dev._go_offline("ota")
    machine.reset()


def _unload():
    for name in ("ota", "otahttp", "p256", "otaboot"):
        sys.modules.pop(name, None)


async def say(dev, j, state, progress, error):
    try:
        await dev.client.publish(dev.t_status[:-6] + "ota", commands.dumps(
            {"version": j["version"], "from": j["from"], "state": state, "progress": progress, "error": error}), 1, True)
    except Exception:
        pass  # offline: the outcome is published once back (otaboot.run)


def parse(raw, running, abi):
    """The manifest's (version, plan): plan = [(name on the board, path
    under files/, size, sha256 hex)] choosing the .mpy variant when its abi
    is the board's. ValueError naming what is wrong."""
    try:
        m = json.loads(raw)
    except Exception:
        raise ValueError("manifest is not valid JSON")
    if not isinstance(m, dict):
        raise ValueError("manifest must be a JSON object")
    v = m.get("version")
    if not isinstance(v, str) or not _semver(v):
        raise ValueError("manifest version must be a semver string, got %s" % commands.show(v))
    if v == running:
        raise ValueError("already running %s" % v)
    files = m.get("files")
    if not isinstance(files, list) or not files or len(files) > 64:
        raise ValueError("manifest files must be a list of 1..64 objects")
    plan = []
    for f in files:
        if not isinstance(f, dict):
            raise ValueError("manifest files must be objects")
        path = f.get("path")
        if (not isinstance(path, str) or not path or len(path) > 64 or path[0] == "." or path in _RESERVED
                or path.endswith(".key") or path.endswith(".crt") or path.endswith(".pub")
                or [c for c in path if c not in _NAME_CHARS]):
            raise ValueError("manifest path %s not allowed" % commands.show(path))
        _entry(f, path)
        name, rpath = path, path
        mpy = f.get("mpy")
        if mpy is not None:
            _entry(mpy, path + ".mpy")
            a = mpy.get("abi")
            try:
                a = int(a)
            except (TypeError, ValueError):
                raise ValueError("manifest abi of %s must be an integer" % path)
            if path.endswith(".py") and path not in ("main.py", "boot.py") and (a & 0x3FF) == (abi & 0x3FF):
                name, rpath, f = path[:-3] + ".mpy", path + ".mpy", mpy
        for p in plan:
            if p[0] == name:
                raise ValueError("manifest names %s twice" % path)
        plan.append((name, rpath, f["size"], f["sha256"]))
    return v, plan


def _entry(f, path):
    size = f.get("size")
    sha = f.get("sha256")
    if not commands.is_int(size) or size < 0:
        raise ValueError("manifest size of %s must be an integer >= 0" % path)
    if not isinstance(sha, str) or len(sha) != 64 or [c for c in sha if c not in "0123456789abcdef"]:
        raise ValueError("manifest sha256 of %s must be 64 lowercase hex digits" % path)


def _semver(v):
    core = v
    for sep in ("+", "-"):
        i = core.find(sep)
        if i >= 0:
            if i == len(core) - 1:
                return False
            core = core[:i]
    parts = core.split(".")
    return len(parts) == 3 and not [p for p in parts if not p or [c for c in p if c not in "0123456789"]]


async def _fetch_small(url, limit, buf, what):
    out = bytearray()

    def sink(mv):
        if len(out) + len(mv) > limit:
            raise OtaError("%s too big (max %d bytes)" % (what, limit))
        out.extend(mv)

    for i in range(2):
        try:
            await otahttp.get(url, 0, buf, sink, _TIMEOUT_MS)
            return bytes(out)
        except OtaError:
            raise
        except Exception as e:
            err = e
            out[:] = b""
    raise OtaError("%s fetch failed: %s" % (what, str(err) or type(err).__name__))


async def check(dev, url):
    """Everything before the first write: url, release key, manifest and
    its signature, version, free flash. Returns (journal, plan, buf)."""
    otahttp.split_url(url)
    j = otaboot.read()
    if j is not None and j["state"] in _BUSY:
        raise OtaError("update in progress")
    try:
        with open("release.pub") as f:
            pem = f.read()
    except OSError:
        raise OtaError("no release key on this board")
    import p256

    point = p256.public_key(pem)
    buf = bytearray(_BUF)
    raw = await _fetch_small(url, _MANIFEST_MAX, buf, "manifest")
    sig = await _fetch_small(url + ".sig", 64, buf, "manifest signature")
    ok = p256.verify(point, hashlib.sha256(raw).digest(), sig)
    del sys.modules["p256"]
    if not ok:
        raise OtaError("manifest signature does not verify")
    from device import FW_VERSION

    version, plan = parse(raw, FW_VERSION, getattr(sys.implementation, "_mpy", 0))
    st = os.statvfs("/")
    need = 2
    for p in plan:
        need += (p[2] + st[0] - 1) // st[0] + 1
    if need > st[4]:
        raise OtaError("not enough free flash: the release needs %d KiB, %d KiB free"
                       % (need * st[0] // 1024, st[4] * st[0] // 1024))
    o = dev.cfg.get("ota") or {}
    j = {"state": "downloading", "version": version, "from": FW_VERSION,
         "trial_s": o.get("trial_s", 60), "max_boots": o.get("max_boots", 3)}
    return j, plan, buf


async def _download(dev, url, m):
    j, plan, buf = m
    otaboot.write(j)  # from here on a power loss ends in `failed` (otaboot.recover)
    otaboot.clear(otaboot.NEW)
    os.mkdir(otaboot.NEW)
    base = url[:url.rfind("/") + 1] + "files/"
    total = 1
    for p in plan:
        total += p[2]
    done = [0, 0]  # bytes of the files done, last progress (10 % steps)
    await say(dev, j, "downloading", 0, None)
    for name, rpath, size, sha in plan:
        await _fetch(dev, j, base + rpath, otaboot.NEW + "/" + name, size, sha, buf, done, total)
    await say(dev, j, "verifying", 100, None)
    for name, rpath, size, sha in plan:  # what the flash holds, read back
        h = hashlib.sha256()
        with open(otaboot.NEW + "/" + name, "rb") as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(memoryview(buf)[:n])
        if binascii.hexlify(h.digest()).decode() != sha:
            raise OtaError("staged %s does not match its sha256" % name)
    otaboot.clear(otaboot.OLD)
    os.mkdir(otaboot.OLD)
    names = []
    for p in plan:
        names.append(p[0])
        n = p[0]
        twin = n[:-3] + ".mpy" if n.endswith(".py") else n[:-4] + ".py" if n.endswith(".mpy") else None
        if twin is not None and twin not in names:
            names.append(twin)  # a stale twin would shadow (.py) or come back (.mpy)
    j["names"] = names
    j["had"] = [n for n in names if otaboot.exists(n)]
    j["state"] = "install"
    otaboot.write(j)  # from here on a power loss ends in the new version's trial


async def _fetch(dev, j, url, dest, size, sha, buf, done, total):
    # st: the open file, its running sha256, bytes in it (the sink's state)
    st = [open(dest, "wb"), hashlib.sha256(), 0]

    def sink(mv):
        if st[2] + len(mv) > size:
            raise OtaError("%s is bigger than its manifest size" % url[url.rfind("/") + 1:])
        st[0].write(mv)
        st[1].update(mv)
        st[2] += len(mv)
        pct = (done[0] + st[2]) * 100 // total
        if pct >= done[1] + 10:
            done[1] = pct  # said by the loop below, between reads

    tries = 0
    said = done[1]
    try:
        while True:
            try:
                await otahttp.get(url, st[2], buf, sink, _TIMEOUT_MS)
                if st[2] == size and binascii.hexlify(st[1].digest()).decode() == sha:
                    done[0] += size
                    return
                if st[2] == size:  # all there but wrong: start again
                    err = "sha256 mismatch"
                    st[0].close()
                    st[0] = open(dest, "wb")
                    st[1] = hashlib.sha256()
                    st[2] = 0
                else:
                    err = "ended at %d of %d bytes" % (st[2], size)
            except OtaError:
                raise
            except Exception as e:  # a dropped link: resume from st[2] with Range
                err = str(e) or type(e).__name__
            tries += 1
            if tries >= _TRIES:
                raise OtaError("download of %s failed after %d tries: %s" % (url[url.rfind("/") + 1:], tries, err))
            if done[1] != said:
                said = done[1]
                await say(dev, j, "downloading", said, None)
            await asyncio.sleep_ms(200 * tries)
    finally:
        st[0].close()
        if done[1] != said:
            await say(dev, j, "downloading", done[1], None)
