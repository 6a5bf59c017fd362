# otaboot.py - the over-the-air update's journal: what main.py runs before
# the app when `ota.json` exists (an update in flight, in trial, or an
# outcome not yet published), and the install/rollback steps ota.py uses.
# Imported only then: a board without a journal never loads it.
#
# Power loss at any point leaves the old or the new complete version
# bootable. Every step is a rename (atomic on littlefs, the ESP32's
# filesystem) or a whole-file write made atomic by writing `ota.tmp` and
# renaming it over `ota.json`; every step is idempotent, so recover()
# simply runs the step the journal names again:
#   requested    written by ota.py (the `ota` command): at boot, otaupd.py
#                verifies the release, then
#   downloading  files go to ota_new/ (the running version is untouched);
#                a boot that finds it starts again (3 tries), else the
#                outcome is `refused` (nothing written) or `failed`
#   install      for each name: root -> ota_old/ (if the board had it), then
#                ota_new/ -> root; at boot: finished, then reset into trial
#   trial        each boot counts; over max_boots: rollback
#   rollback     for each name: ota_old/ -> root, names the board did not
#                have removed; then outcome `rolled_back` and a reset
#   committed, rolled_back, failed, refused: outcomes, published on
#                <prefix>/<id>/ota once online (otarun.py), then the journal goes.
import json
import os

import machine

JOURNAL = "ota.json"
NEW = "ota_new"
OLD = "ota_old"


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def read():
    try:
        with open(JOURNAL) as f:
            return json.loads(f.read())
    except (OSError, ValueError):
        return None


def write(j):
    with open("ota.tmp", "w") as f:
        f.write(json.dumps(j))
    os.rename("ota.tmp", JOURNAL)


def clear(folder):
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for n in names:
        os.remove(folder + "/" + n)
    os.rmdir(folder)


def install(j):
    had = j["had"]
    for n in j["names"]:
        if n in had and not exists(OLD + "/" + n):
            os.rename(n, OLD + "/" + n)
        if exists(NEW + "/" + n):
            os.rename(NEW + "/" + n, n)


def rollback(j):
    had = j["had"]
    for n in j["names"]:
        if exists(OLD + "/" + n):
            os.rename(OLD + "/" + n, n)
        elif n not in had and exists(n):
            os.remove(n)
    clear(NEW)
    clear(OLD)


def recover():
    """Bring the journal's update to a bootable state; the journal (None
    when unreadable: then it is dropped)."""
    j = read()
    if j is None:
        try:
            os.remove(JOURNAL)
        except OSError:
            pass
        return None
    s = j["state"]
    if s == "requested" or s == "downloading":
        import gc
        import sys

        import otaupd

        j = otaupd.run(j)  # resets into the trial boot, or returns why not
        for name in ("otaupd", "otachk", "otahttp", "p256"):
            sys.modules.pop(name, None)
        gc.collect()
        s = j["state"]
    elif s == "install":
        install(j)
        j["state"] = "trial"
        j["boots"] = 0
        write(j)
        machine.reset()  # the trial boot starts afresh, as after any install
    if s == "trial":
        j["boots"] += 1
        if j["boots"] > j["max_boots"]:
            s = j["state"] = "rollback"
            j["error"] = "%d trial boots failed (last: %s)" % (j["max_boots"], j.get("error") or "no birth acknowledged")
        write(j)
        if s == "trial":
            # A release that hangs: only the watchdog gets the board back.
            j["wdt"] = machine.WDT(timeout=j["trial_s"] * 1000)
    if s == "rollback":
        rollback(j)
        j["state"] = "rolled_back"
        write(j)
        machine.reset()  # the previous version boots afresh
    if s == "committed":
        clear(OLD)
        clear(NEW)
    return j


def trial_failed(j, e):
    """The release failed in trial (raised at import or while running):
    note why and reset; False when not in trial (the caller raises)."""
    if j is None or j["state"] != "trial":
        return False
    j["error"] = "%s: %s" % (type(e).__name__, e)
    j.pop("wdt", None)
    write(j)
    machine.reset()
    return True


def boot(app_main):
    """app.main() when a journal exists: the update brought to a bootable
    state first, then the app (a release that fails in trial resets); the
    Device wrapped so that otarun.py finishes the update while it runs."""
    j = recover()
    try:
        dev = app_main(False)
    except Exception as e:
        if not trial_failed(j, e):
            raise
    if dev is None or j is None:
        return dev
    import otarun

    return otarun.Run(dev, j)
