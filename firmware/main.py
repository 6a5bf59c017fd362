# Runs after boot.py on every reset. All logic lives in app.py so that the
# same entry point serves real boards and the emulator. app.main() boots
# and hands back the Device (None: boot stopped); app.py is dropped before
# the device runs, so its code does not stay in the heap.
import asyncio
import sys

import app

dev = app.main()
del app
sys.modules.pop("app", None)
if dev is not None:
    asyncio.run(dev.run())
