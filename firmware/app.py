# Boot sequence of the device: read and validate config.json, count the boot
# in NVS, name the reset cause and make the Device, which main.py then runs
# on asyncio until it leaves. A bad config stops here with one clear console
# line; nothing else is caught, so a firmware bug shows its traceback as on
# any board.
#
# Heap: code loaded from .py/.mpy lives in the GC heap. config.py (the
# validators) is needed only to read config.json, so it is imported here,
# dropped from sys.modules and collected before the device's modules load:
# the two never share the heap. main.py drops this module the same way
# before the device runs.
import gc
import sys

import esp32
import machine


def main(ota=True):
    """Boot; the Device to run, or None when boot stopped."""
    if ota:
        import os

        if "ota.json" in os.listdir():  # an over-the-air update in flight, or its outcome
            import otaboot  # brings it to a bootable state before the rest of the app is imported

            return otaboot.boot(main)
    import config

    try:
        cfg = config.load("config.json", print)
    except config.ConfigError as e:
        print("boot stopped:", e)
        return None
    finally:
        sys.modules.pop("config", None)
    del config
    gc.collect()  # config.py is unreachable now
    from device import FW_VERSION, Device

    # Boots since first flash, persisted in NVS (survives power loss and
    # reflash of files; erased only with the flash).
    nvs = esp32.NVS("esp32emu")
    try:
        boot = nvs.get_i32("boot")
    except OSError:
        boot = 0
    boot += 1
    nvs.set_i32("boot", boot)
    nvs.commit()
    dev_id = cfg["id"] or "esp32-" + "".join("%02x" % b for b in machine.unique_id())
    cause = machine.reset_cause()
    reset = "hard"
    for code, name in ((machine.PWRON_RESET, "power_on"), (machine.WDT_RESET, "watchdog"),
                       (machine.DEEPSLEEP_RESET, "deepsleep"), (machine.SOFT_RESET, "soft")):
        if cause == code:
            reset = name
    dev = Device(cfg, dev_id, boot, reset)
    print("esp32emu fw %s: device %s, boot %d, reset %s" % (FW_VERSION, dev.id, dev.boot, dev.reset))
    return dev
