# ota.py - the `ota` command while the device runs (ota-contract.md): the
# checks that need no network, then a journal `ota.json` asking for the
# update, and a reset. The update itself runs on the next boot before the
# app (otaboot.py, otaupd.py), with the whole heap: the release's manifest
# is fetched and its signature verified before anything else is written,
# the files are staged, checked and installed, and the board boots the new
# version in trial. The command's result and the outcome are published
# once the board is back online (otarun.py).
#
# Loaded by device.py only when an `ota` command arrives; small, because
# it shares the heap with the running device.
import json
import os
import sys

import machine


async def request(dev, cmd_id, url):
    """Reset into the update; the reason (a str) when it cannot be."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")) or not 9 <= len(url) <= 512 or " " in url:
        return "url must be an http:// or https:// URL of a manifest.json (at most 512 characters)"
    for name, err in (("ota.json", "update in progress"), ("release.pub", None)):
        try:
            os.stat(name)
            if err:
                return err
        except OSError:
            if not err:
                return "no release key on this board"
    from device import FW_VERSION

    try:  # checked by config.py at boot, not kept in dev.cfg (heap)
        with open("config.json") as f:
            o = json.loads(f.read()).get("ota") or {}
    except (OSError, ValueError):
        o = {}
    j = {"state": "requested", "url": url, "cmd": cmd_id, "from": FW_VERSION, "version": None,
         "trial_s": o.get("trial_s", 60), "max_boots": o.get("max_boots", 3), "tries": 0}
    with open("ota.tmp", "w") as f:
        f.write(json.dumps(j))
    os.rename("ota.tmp", "ota.json")
    sys.modules.pop("ota", None)
    await dev._go_offline("ota")
    machine.reset()

