# The pure parts of the over-the-air update under the MicroPython VM (run
# by tests/micropython/run.mjs) and CPython (tests/test_ota_pure.py): ECDSA
# P-256 verification (p256.py), the streamed manifest's parse (otachk.py),
# the journal's install, rollback and recovery (otaboot.py) on a real
# filesystem. Plain asserts, no pytest.

import hashlib
import json
import os
import sys

try:
    import commands  # noqa: F401 - probes whether firmware/ is on sys.path
except ImportError:  # CPython: firmware/ is not on sys.path yet
    sys.path.insert(0, __file__.rsplit("/", 3)[0] + "/firmware")


class _WDT:
    def __init__(self, timeout=0):
        self.timeout = timeout

    def feed(self):
        pass


class Reset(Exception):
    pass


class _Machine:
    # otaboot imports machine (the trial boot's watchdog and reset): a stub
    # where the VM has none; reset() raises Reset (ends the "boot").
    WDT = _WDT

    @staticmethod
    def reset():
        raise Reset()


_STUB = False
try:
    import machine  # noqa: F401
except ImportError:
    sys.modules["machine"] = _Machine
    _STUB = True

import otachk  # noqa: E402
import otaboot  # noqa: E402
import p256  # noqa: E402

if _STUB:
    del sys.modules["machine"]  # otaboot holds the stub; nobody else sees it

# Made with the `cryptography` package (tests/ota_release.py).
PEM = ("-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEDzO8IiS7gjLJw9S9xtz6ygcZb0mb\n"
       "1qdlYgd3gcCGbkEH+SwiUZVtI+oYNVaYPqYGNhoHI4UVXdi2lIH8vmZXSA==\n-----END PUBLIC KEY-----\n")
MANIFEST = (b'{"version":"1.3.0","created":1,"files":[{"path":"device.py","size":3,"sha256":'
            b'"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}]}')
SIG = (b'\xf9\xd6\x90;/\xfa\xe0\x9d2\xeb\x0e\xb1\x07m\xd4\xcc\xacx\xb4\xa4\x00\xa8i^\xcc\xfe*\xb3\x80p2\xb9'
       b'\x03-\xc5[\x88\x1e\xc95\x16\xd0\x07\xdeD5i\xedDZ\x05\x90U\xbd\x03\x87u\xddd"\t\x02\xb9\xe0')
SHA_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def _raises(fn, text):
    try:
        fn()
    except ValueError as e:
        assert text in str(e), str(e)
        return
    raise AssertionError("no ValueError: " + text)


def test_p256_accepts_the_signature():
    key = p256.public_key(PEM)
    assert len(key) == 65 and key[0] == 4
    assert p256.verify(key, hashlib.sha256(MANIFEST).digest(), SIG)


def test_p256_refuses_what_was_not_signed():
    key = p256.public_key(PEM)
    digest = hashlib.sha256(MANIFEST).digest()
    assert not p256.verify(key, hashlib.sha256(MANIFEST + b" ").digest(), SIG)
    for i in (0, 31, 32, 63):
        bad = bytearray(SIG)
        bad[i] ^= 1
        assert not p256.verify(key, digest, bytes(bad))
    assert not p256.verify(key, digest, SIG[:63])
    assert not p256.verify(key, digest, bytes(64))  # r = s = 0
    n = p256.N.to_bytes(32, "big")
    assert not p256.verify(key, digest, n + SIG[32:])  # r = N
    assert not p256.verify(key, digest, SIG[:32] + n)  # s = N


def test_p256_refuses_bad_keys():
    _raises(lambda: p256.public_key("not a key"), "not a P-256 public key")
    der = bytearray(p256.SPKI_PREFIX + b"\x04" + bytes(64))
    import binascii

    pem = "-----BEGIN PUBLIC KEY-----\n" + binascii.b2a_base64(der).decode() + "-----END PUBLIC KEY-----\n"
    _raises(lambda: p256.public_key(pem), "not a point on P-256")


def _entry(path, size=3, sha=SHA_ABC, mpy=None):
    e = {"path": path, "size": size, "sha256": sha}
    if mpy is not None:
        e["mpy"] = mpy
    return e


def _manifest(files, version="1.3.0", **extra):
    m = {"version": version, "files": files}
    m.update(extra)
    return json.dumps(m).encode()


def test_manifest_parse_whole_and_streamed():
    v, plan = otachk.parse_bytes(MANIFEST, "1.2.0", 0)
    assert v == "1.3.0" and plan == [("device.py", "device.py", 3, SHA_ABC)]
    raw = _manifest([_entry("a.py"), _entry("b.txt", 7)], created=5)
    whole = otachk.parse_bytes(raw, "1.2.0", 0)
    for step in (1, 2, 7, 64):  # the manifest as it streams in, cut anywhere
        st = [0, 0, 0, 0, None, bytearray(), bytearray(), []]
        for i in range(0, len(raw), step):
            otachk._feed(st, memoryview(raw)[i:i + step])
        assert otachk.parse(st, "1.2.0", 0) == whole
    assert whole[1][1] == ("b.txt", "b.txt", 7, SHA_ABC)


def test_manifest_picks_the_mpy_its_abi_runs():
    mpy = {"size": 9, "sha256": "0" * 64, "abi": 0x306}
    raw = _manifest([_entry("a.py", mpy=mpy), _entry("main.py", mpy=mpy)])
    plan = otachk.parse_bytes(raw, "1.2.0", 0xB06)[1]  # same version and sub-version, another arch
    assert plan[0] == ("a.mpy", "a.py.mpy", 9, "0" * 64)
    assert plan[1] == ("main.py", "main.py", 3, SHA_ABC), "main.py runs as source only"
    assert otachk.parse_bytes(raw, "1.2.0", 0x206)[1][0] == ("a.py", "a.py", 3, SHA_ABC)


def test_manifest_errors():
    cases = (
        (b"[1]", "must be a JSON object"),
        (b"{", "manifest"),
        (_manifest([_entry("a.py")], version="1.3"), "semver"),
        (_manifest([_entry("a.py")], version="1.2.0"), "already running 1.2.0"),
        (_manifest([]), "files must be a list"),
        (_manifest([_entry("config.json")]), 'path "config.json" not allowed'),
        (_manifest([_entry("ca.crt")]), "not allowed"),
        (_manifest([_entry("release.pub")]), "not allowed"),
        (_manifest([_entry("lib/x.py")]), "not allowed"),
        (_manifest([_entry(".hidden")]), "not allowed"),
        (_manifest([_entry("ota_old")]), "not allowed"),
        (_manifest([_entry("a.py", size=-1)]), "size of a.py"),
        (_manifest([_entry("a.py", size=True)]), "size of a.py"),
        (_manifest([_entry("a.py", sha="AB" * 32)]), "sha256 of a.py"),
        (_manifest([_entry("a.py", mpy={"size": 1, "sha256": "0" * 64, "abi": "x"})]), "abi of a.py"),
        (_manifest([_entry("a.py"), _entry("a.py")]), "names a.py twice"),
        (_manifest([_entry("x%d" % i) for i in range(65)]), "at most 64 files"),
    )
    for raw, text in cases:
        _raises(lambda: otachk.parse_bytes(raw, "1.2.0", 0), text)


def _fresh(name):
    # an empty folder of its own as the board's root for one test
    if sys.implementation.name == "micropython":
        root = "/tmp"
    else:
        import tempfile

        root = tempfile.gettempdir()
    path = root + "/esp32emu-ota-" + name
    try:
        for n in os.listdir(path):
            try:
                os.remove(path + "/" + n)
            except OSError:
                for m in os.listdir(path + "/" + n):
                    os.remove(path + "/" + n + "/" + m)
                os.rmdir(path + "/" + n)
    except OSError:
        os.mkdir(path)
    return path


def _read(name):
    with open(name) as f:
        return f.read()


def _write(name, text):
    with open(name, "w") as f:
        f.write(text)


def _board(name):
    # old: a.py, b.mpy, keep.txt; the release: a.py (new), b.py (replaces b.mpy), c.py (new file)
    here = os.getcwd()
    os.chdir(_fresh(name))
    for n, t in (("a.py", "old a"), ("b.mpy", "old b"), ("keep.txt", "data")):
        _write(n, t)
    os.mkdir(otaboot.NEW)
    os.mkdir(otaboot.OLD)
    for n, t in (("a.py", "new a"), ("b.py", "new b"), ("c.py", "new c")):
        _write(otaboot.NEW + "/" + n, t)
    names = ["a.py", "a.mpy", "b.py", "b.mpy", "c.py", "c.mpy"]
    j = {"state": "install", "version": "1.3.0", "from": "1.2.0", "names": names,
         "had": [n for n in names if otaboot.exists(n)], "trial_s": 60, "max_boots": 2}
    otaboot.write(j)
    return here


OLD_FILES = {"a.py": "old a", "b.mpy": "old b", "keep.txt": "data"}
NEW_FILES = {"a.py": "new a", "b.py": "new b", "c.py": "new c", "keep.txt": "data"}


def _files():
    return dict((n, _read(n)) for n in os.listdir() if n not in ("ota.json",) and not n.startswith("ota_"))


def test_install_then_rollback_restores_the_old_files():
    here = _board("j1")
    try:
        j = otaboot.read()
        otaboot.install(j)
        assert _files() == NEW_FILES
        otaboot.install(j)  # again (a power loss after it): the same
        assert _files() == NEW_FILES
        otaboot.rollback(j)
        assert _files() == OLD_FILES
        assert not otaboot.exists(otaboot.NEW) and not otaboot.exists(otaboot.OLD)
        otaboot.rollback(j)  # again: the same
        assert _files() == OLD_FILES
    finally:
        os.chdir(here)


def _boot_resets():
    # recover() on a boot that must end in a reset (the stub's Reset)
    try:
        otaboot.recover()
    except Reset:
        return
    raise AssertionError("recover() did not reset")


def test_recover_finishes_a_half_done_install():
    for done in range(7):  # the install cut after `done` of its renames
        here = _board("j2")
        try:
            j = otaboot.read()
            steps = 0
            for n in j["names"]:
                if steps < done and n in j["had"]:
                    os.rename(n, otaboot.OLD + "/" + n)
                    steps += 1
                if steps < done and otaboot.exists(otaboot.NEW + "/" + n):
                    os.rename(otaboot.NEW + "/" + n, n)
                    steps += 1
            _boot_resets()  # the next boot finishes the install, resets
            assert _files() == NEW_FILES, (done, _files())
            j = otaboot.recover()  # the trial boot
            assert j["state"] == "trial" and j["boots"] == 1, j
            assert otaboot.read()["boots"] == 1
        finally:
            os.chdir(here)


def test_recover_rolls_back_after_max_boots():
    here = _board("j3")
    try:
        j = otaboot.read()
        otaboot.install(j)
        j["state"] = "trial"
        j["boots"] = 2  # max_boots trial boots failed already
        j["error"] = "RuntimeError: broken"
        otaboot.write(j)
        _boot_resets()  # rolls back, resets
        j = otaboot.read()
        assert j["state"] == "rolled_back"
        assert j["error"] == "2 trial boots failed (last: RuntimeError: broken)"
        assert _files() == OLD_FILES
        assert otaboot.recover()["state"] == "rolled_back"  # the old version's boot: the outcome waits to be said
    finally:
        os.chdir(here)


def test_recover_drops_an_unreadable_journal():
    here = os.getcwd()
    os.chdir(_fresh("j4"))
    try:
        _write("ota.json", "{not json")
        assert otaboot.recover() is None and not otaboot.exists("ota.json")
    finally:
        os.chdir(here)
