"""The MQTT library PyPI carries as `micropython-mqtt`, on the same VM as the
firmware (used by bench/vm_heap.py): fetched with pip at run time into a
temporary directory (never vendored) and driven by the smallest app that
gives the same figures (birth, telemetry every second, `stats`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from vm_board import STUBS, compile_mpy

_MQAS_MAIN = """\
# The smallest app on the library: birth, telemetry every second, `stats`
# answered with the same fields as the firmware's (bench/vm_heap.py).
import gc
import json
import re
import asyncio
from mqtt_async import MQTTClient, MQTTMessage, config

DEV = "%(id)s"


def max_free():
    lo = 0
    hi = gc.mem_free() + 1
    while hi - lo > 16:
        mid = (lo + hi) // 2
        try:
            bytearray(mid)
            lo = mid
        except MemoryError:
            hi = mid
    return lo


async def main():
    cmds = []
    config.server = "%(host)s"
    config.port = %(port)d
    config.client_id = DEV
    config.ssid = "bench"
    config.keepalive = 30
    config.will = MQTTMessage("devices/" + DEV + "/status", b'{"online":false}', True, 1)
    config.subs_cb = lambda topic, msg, retained, *a: cmds.append(msg)
    client = MQTTClient(config)
    # The unix port's getaddrinfo() gives a raw sockaddr, not the ESP32's
    # (host, port) tuple that the library indexes: hand it the tuple.
    client._dns_lookup = lambda: setattr(client, "_addr", (config.server, config.port))
    await client.connect()
    await client.subscribe("devices/" + DEV + "/cmd", 1)
    await client.publish("devices/" + DEV + "/status", b'{"online":true}', True, 1)
    seq = 0
    while True:
        await client.publish("devices/" + DEV + "/telemetry", json.dumps({"seq": seq}), False, 0)
        seq += 1
        while cmds:
            cmd = json.loads(cmds.pop(0))
            gc.collect()
            res = {"heap_alloc": gc.mem_alloc(), "heap_free": gc.mem_free(), "heap_max_free": max_free()}
            if cmd["op"] != "stats":
                res = {"pong": None}
            await client.publish("devices/" + DEV + "/cmd/result", json.dumps({"id": cmd["id"], "ok": True, "result": res}), False, 1)
        await asyncio.sleep(1)


asyncio.run(main())
"""


def fetch_mqtt_lib(dest: Path) -> tuple[str, Path | None]:
    """`pip download micropython-mqtt` into dest; (what it is, the module
    file) -- the module is None when the package carries no MQTT client."""
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d",
                        str(dest), "micropython-mqtt"], capture_output=True, text=True, timeout=300)
    archives = sorted(dest.glob("micropython[-_]mqtt-*"))
    if not archives:
        # pip saves nothing when it cannot build the sdist's metadata (this
        # one has neither setup.py nor pyproject.toml): fetch the file pip
        # resolved, from the URL it names.
        m = re.search(r"from (https://\S+?\.tar\.gz)", r.stdout + r.stderr)
        if not m:
            return f"pip download failed: {(r.stderr or r.stdout).strip()[-200:]}", None
        import urllib.request

        target = dest / m.group(1).rsplit("/", 1)[1]
        with urllib.request.urlopen(m.group(1), timeout=60) as resp:
            target.write_bytes(resp.read())
        archives = [target]
    with tarfile.open(archives[0]) as tar:
        tar.extractall(dest / "src", filter="data")
    name = archives[0].name.replace(".tar.gz", "")
    for module in ("mqtt_as.py", "mqtt_async.py"):
        found = sorted((dest / "src").rglob(module))
        if found:
            return f"{name}: {module}", found[0]
    return f"{name}: no mqtt_as", None


def stage_mqtt_lib(dest: Path, module: Path, host: str, port: int, device_id: str = "vm-mqas",
                   mpy: bool = True) -> Path:
    """A board running the library and its smallest app (as main.py)."""
    dest.mkdir(parents=True, exist_ok=True)
    work = dest.parent / (dest.name + "-build")
    work.mkdir(exist_ok=True)
    for name, text in STUBS.items():
        (work / name).write_text(text)
    for src in [work / n for n in STUBS] + [module]:
        if mpy:
            (dest / (src.stem + ".mpy")).write_bytes(compile_mpy(src))
        else:
            shutil.copy(src, dest / src.name)
    (dest / "boot.py").write_text("import gc\n\ngc.collect()\n")
    (dest / "main.py").write_text(_MQAS_MAIN % {"id": device_id, "host": host, "port": port})
    (dest / "config.json").write_text(json.dumps({"id": device_id}))  # read by the bench only
    return dest
