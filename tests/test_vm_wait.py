"""mqtt_client.wait_for_ms, the firmware's own asyncio.wait_for_ms (issue 12:
asyncio.funcs stays unloaded, 0.8 KiB of heap), on the real MicroPython
unix port: a result comes back, a deadline raises TimeoutError and cancels
what was awaited, a cancel from outside stays a cancel, and asyncio.funcs
is never imported."""

from __future__ import annotations

import subprocess
from pathlib import Path

from emulator.board.vm.interpreter import micropython_executable

FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"

SCRIPT = """\
import sys
sys.path.insert(0, sys.argv[1])
import asyncio
from mqtt_client import wait_for_ms

log = []


async def slow(ms, tag):
    try:
        await asyncio.sleep_ms(ms)
        return tag
    except asyncio.CancelledError:
        log.append("cancelled " + tag)
        raise


async def main():
    print("value", await wait_for_ms(slow(10, "a"), 1000))
    try:
        await wait_for_ms(slow(1000, "b"), 20)
        print("no timeout")
    except asyncio.TimeoutError:
        print("timeout", log)
    ev = asyncio.Event()
    ev.set()
    print("event", await wait_for_ms(ev.wait(), 1000))

    async def outer():
        return await wait_for_ms(slow(1000, "c"), 500)

    t = asyncio.create_task(outer())
    await asyncio.sleep_ms(20)
    t.cancel()
    try:
        await t
        print("outer returned")
    except asyncio.CancelledError:
        print("outer cancelled", log)
    await asyncio.sleep_ms(600)  # the alarms are gone: nothing fires late
    print("after", log, "asyncio.funcs" in sys.modules)


asyncio.run(main())
"""


def test_wait_for_ms_on_the_real_interpreter(tmp_path):
    script = tmp_path / "wait.py"
    script.write_text(SCRIPT)
    r = subprocess.run([micropython_executable(), "-X", "heapsize=256k", str(script), str(FIRMWARE)],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        "value a",
        "timeout ['cancelled b']",
        "event True",
        "outer cancelled ['cancelled b', 'cancelled c']",
        "after ['cancelled b', 'cancelled c'] False",
    ], r.stdout + r.stderr
