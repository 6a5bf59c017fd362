# Boot sequence of the device: read and validate config.json, count the boot
# in NVS, name the reset cause, then run the Device on asyncio until it
# leaves. A bad config stops here with one clear console line; nothing else
# is caught, so a firmware bug shows its traceback as on any board.
import asyncio

import esp32
import machine

import config
from device import FW_VERSION, Device, reset_cause_name

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


_NVS_NAMESPACE = "esp32emu"
_NVS_ERR_NOT_FOUND = const(-4354)


def count_boot():
    # Boots since first flash, persisted in NVS (survives power loss and reflash
    # of files; erased only with the flash).
    nvs = esp32.NVS(_NVS_NAMESPACE)
    try:
        boot = nvs.get_i32("boot")
    except OSError:
        boot = 0
    boot += 1
    nvs.set_i32("boot", boot)
    nvs.commit()
    return boot


def device_id(cfg):
    if cfg["id"]:
        return cfg["id"]
    mac = machine.unique_id()
    return "esp32-" + "".join("%02x" % b for b in mac)


def main():
    try:
        cfg = config.load("config.json", print)
    except config.ConfigError as e:
        print("boot stopped:", e)
        return
    dev = Device(cfg, device_id(cfg), count_boot(), reset_cause_name(machine.reset_cause()))
    print("esp32emu fw %s: device %s, boot %d, reset %s" % (FW_VERSION, dev.id, dev.boot, dev.reset))
    asyncio.run(dev.run())

