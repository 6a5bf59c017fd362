# Runs after boot.py on every reset. All logic lives in app.py so that the
# same entry point serves real boards and the emulator. app.main() boots
# and hands back the Device (None: boot stopped); app.py is dropped before
# the device runs, so its code does not stay in the heap.
#
# An over-the-air update in flight (a journal `ota.json`, otaboot.py) is
# brought to a bootable state first, before any of the app is imported;
# without a journal nothing of the update is loaded.
import asyncio
import os
import sys

ota = None
try:
    os.stat("ota.json")
except OSError:
    pass
else:
    import otaboot

    ota = otaboot.recover()
try:
    import app

    dev = app.main()
except Exception as e:
    if ota is None or not otaboot.trial_failed(ota, e):
        raise
del app
sys.modules.pop("app", None)
if dev is not None:
    asyncio.run(dev.run() if ota is None else otaboot.run(dev, ota))
