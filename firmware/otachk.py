# otachk.py - an update's checks before anything of it is written: the
# url, the board's release key, the manifest and its signature (ECDSA
# P-256, p256.py), the manifest's content, the version, free flash.
# Used by otaupd.py on the boot that runs the update.
import hashlib
import json
import os
import sys

import commands
import otahttp
import p256

_RESERVED = ("config.json", "ota.json", "ota.tmp", "ota_new", "ota_old")
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"


async def check(url, running):
    """(version, plan) of the release at `url`, or ValueError saying why
    not (nothing written either way)."""
    otahttp.split_url(url)
    try:
        with open("release.pub") as f:
            pem = f.read()
    except OSError:
        raise ValueError("no release key on this board")
    key = p256.public_key(pem)
    # The manifest is never held whole (the heap may have no block that
    # big): hashed as it streams in, its "files" entries kept one by one.
    h = hashlib.sha256()
    st = [0, 0, 0, 0, None, bytearray(), bytearray(), []]

    def sink(mv):
        h.update(mv)
        _feed(st, mv)

    await _fetch(url, sink, "manifest")
    sig = bytearray()

    def sink_sig(mv):
        if len(sig) + len(mv) > 64:
            raise ValueError("manifest signature is not 64 bytes")
        sig.extend(mv)

    await _fetch(url + ".sig", sink_sig, "manifest signature")
    ok = p256.verify(key, h.digest(), sig)
    if not ok:
        raise ValueError("manifest signature does not verify")
    version, plan = parse(st, running, getattr(sys.implementation, "_mpy", 0))
    del st
    s = os.statvfs("/")
    need = 2  # blocks: the journal, the folders
    for p in plan:
        need += (p[2] + s[0] - 1) // s[0]
    if need > s[4]:
        raise ValueError("not enough free flash: the release needs %d KiB, %d KiB free"
                         % (need * s[0] // 1024, s[4] * s[0] // 1024))
    return version, plan


async def _fetch(url, sink, what):
    rd = bytearray(512)
    err = None
    for _ in range(2):
        try:
            await otahttp.get(url, 0, rd, sink, 10000)
            return
        except ValueError:
            raise
        except Exception as e:
            err = e
    raise ValueError("%s fetch failed: %s" % (what, str(err) or type(err).__name__))


def _feed(st, mv):
    # The manifest's bytes as they come: st = [depth, in a string, after a
    # backslash, inside "files", the entry being read (bytearray, or None),
    # everything outside "files" (with "files":[]), the last key read at
    # depth 1, the entries read (bytes)]. Copies are made a slice at a time
    # (a byte at a time would fragment the heap).
    depth, q, esc, files, obj, head, key, entries = st
    n = len(mv)
    o = 0 if obj is not None else -1  # where the entry being read starts in mv
    hs = -1 if files else 0  # where the part of head being read starts in mv
    k = 0
    while k < n:
        c = mv[k]
        if q:
            if esc:
                esc = 0
            elif c == 92:  # backslash
                esc = 1
            elif c == 34:  # "
                q = 0
            elif depth == 1:
                key.append(c)
        elif c == 34:
            q = 1
            if depth == 1:
                key = bytearray()
        elif c == 123 or c == 91:  # { [
            depth += 1
            if files and depth == 3 and c == 123:
                obj = bytearray()
                o = k
            elif depth == 2 and c == 91 and key == b"files":
                files = 1
                head.extend(mv[hs:k + 1])
                hs = -1
        elif c == 125 or c == 93:  # } ]
            depth -= 1
            if obj is not None and depth == 2:
                if obj:
                    obj.extend(mv[o:k + 1])
                    entries.append(bytes(obj))
                else:
                    entries.append(bytes(mv[o:k + 1]))
                obj = None
                o = -1
            elif files and depth == 1:
                files = 0
                hs = k
        k += 1
    if o >= 0:
        obj.extend(mv[o:])
    if hs >= 0:
        head.extend(mv[hs:])
    if len(head) > 512 or len(entries) > 64 or (obj is not None and len(obj) > 1024):
        raise ValueError("manifest too big (at most 64 files)")
    st[0], st[1], st[2], st[3], st[4], st[6] = depth, q, esc, files, obj, key


def parse(st, running, abi):
    """The manifest's (version, plan) from what _feed() kept of it: plan =
    [(name on the board, path under files/, size, sha256 hex)], the .mpy
    variant chosen when its abi is the board's. ValueError naming what is
    wrong. It is checked after its signature (it is the release builder's),
    but anything malformed still ends in ValueError."""
    try:
        m = json.loads(bytes(st[5]))
    except Exception:
        raise ValueError("manifest is not valid JSON")
    if not isinstance(m, dict) or st[0] or st[1]:
        raise ValueError("manifest must be a JSON object")
    v = m.get("version")
    if not isinstance(v, str) or not _semver(v):
        raise ValueError("manifest version must be a semver string, got %s" % commands.show(v))
    if v == running:
        raise ValueError("already running %s" % v)
    if m.get("files") != [] or not st[7]:
        raise ValueError("manifest files must be a list of 1..64 objects")
    plan = []
    while st[7]:
        raw = st[7].pop(0)
        try:
            f = json.loads(raw)
        except Exception:
            raise ValueError("manifest is not valid JSON")
        path = f.get("path") if isinstance(f, dict) else None
        if (not isinstance(path, str) or not path or len(path) > 64 or path[0] == "." or path in _RESERVED
                or path.endswith(".key") or path.endswith(".crt") or path.endswith(".pub")
                or [c for c in path if c not in _NAME_CHARS]):
            raise ValueError("manifest path %s not allowed" % commands.show(path))
        _entry(f, path)
        name, rpath = path, path
        mpy = f.get("mpy")
        if mpy is not None:
            _entry(mpy, path + ".mpy")
            try:
                b = int(mpy.get("abi"))
            except (TypeError, ValueError):
                raise ValueError("manifest abi of %s must be an integer" % path)
            # a bytecode .mpy runs where its version and sub-version are the board's
            if path.endswith(".py") and path not in ("main.py", "boot.py") and (b & 0x3FF) == (abi & 0x3FF):
                name, rpath, f = path[:-3] + ".mpy", path + ".mpy", mpy
        for p in plan:
            if p[0] == name:
                raise ValueError("manifest names %s twice" % path)
        plan.append((name, rpath, f["size"], f["sha256"]))
    return v, plan


def parse_bytes(raw, running, abi):
    """parse() of a whole manifest held in memory (tests, tools)."""
    st = [0, 0, 0, 0, None, bytearray(), bytearray(), []]
    _feed(st, raw)
    return parse(st, running, abi)


def _entry(f, path):
    if not isinstance(f, dict):
        raise ValueError("manifest entry of %s must be an object" % path)
    size = f.get("size", -1)
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
