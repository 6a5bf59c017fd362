# otarun.py - the device's run() on a boot with an update journal (app.py,
# otaboot.py): once online, answer the `ota` command that asked for the
# update (ok once the release was staged and installed, else the reason),
# and in trial commit once the birth is acknowledged (else reset after
# ota.trial_s); publish the state on <prefix>/<id>/ota (QoS 1, retained),
# then drop the journal. Loaded only on such a boot.
import asyncio
import os
import time

import machine

import commands
import otaboot


class Run:
    """What main.py runs instead of the Device: the Device, and meanwhile
    the update finished."""

    def __init__(self, dev, j):
        self.dev = dev
        self.j = j

    async def run(self):
        asyncio.create_task(_finish(self.dev, self.j))
        try:
            await self.dev.run()
        except Exception as e:
            if not otaboot.trial_failed(self.j, e):
                raise


def _say(dev, j, state):
    return dev.client.publish(dev.t_status[:-6] + "ota", commands.dumps(
        {"version": j["version"], "from": j["from"], "state": state, "progress": 100,
         "error": j.get("error")}), 1, True)


async def _finish(dev, j):
    wdt = j.pop("wdt", None)
    start = time.ticks_ms()
    trial = j["state"] == "trial"
    said = False
    while True:
        if wdt is not None:
            wdt.feed()
        pid = dev._birth_pid
        online = dev._online.is_set() and dev.client.connected
        if online and not said:
            try:
                cmd = j.get("cmd")
                if cmd is not None:
                    ok = j["state"] in ("trial", "committed", "rolled_back")
                    await dev._send_result(commands.ok_result(cmd, {"from": j["from"], "version": j["version"]})
                                           if ok else commands.error_result(cmd, j["error"]))
                    del j["cmd"]
                    otaboot.write(j)
                if trial:
                    await _say(dev, j, "trial")
                said = True
            except Exception:
                pass
        if said and pid > 0 and not [1 for e in dev.client.session._inflight if e[0] == pid]:
            break  # the birth is acknowledged
        if trial and time.ticks_diff(time.ticks_ms(), start) > j["trial_s"] * 1000:
            j["error"] = "no birth acknowledged within %d s" % j["trial_s"]
            otaboot.write(j)
            machine.reset()
        await asyncio.sleep_ms(200)
    if trial:
        j["state"] = "committed"
        j["error"] = None
        otaboot.write(j)
        otaboot.clear(otaboot.OLD)
        otaboot.clear(otaboot.NEW)
    try:
        if j["state"] != "refused":  # a refused update changed nothing: nothing to say there
            await _say(dev, j, j["state"])
        os.remove(otaboot.JOURNAL)
    except Exception as e:
        dev.log("ota: outcome not published: %s" % e)
    while wdt is not None:  # the watchdog cannot be stopped once started
        wdt.feed()
        await asyncio.sleep_ms(1000)
