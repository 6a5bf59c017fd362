"""Stopping what a command runs: wait for Ctrl-C, SIGTERM or the end of
--duration (while a scenario's timeline runs), and shut boards down
gracefully -- the BOOT button asks the firmware for a planned offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emulator.run.scenario import Timeline


async def shutdown_gracefully(boards: list, timeout: float = 5.0) -> None:
    """Press every board's BOOT button (planned offline), wait until their
    connections are closed or the deadline passes, then stop them."""
    pressed = [b for b in boards if b.running and b.press_button()]
    deadline = time.monotonic() + timeout
    while pressed and time.monotonic() < deadline:
        if all(not b.link.connections or b.halted for b in pressed):
            break
        await asyncio.sleep(0.05)
    await asyncio.gather(*(b.stop() for b in boards), return_exceptions=True)


async def wait_for_stop_signal(duration: float | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if duration is None:
            await stop.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), duration)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_until_stopped(duration: float | None, timeline: Timeline | None = None) -> str | None:
    """Wait for Ctrl-C, SIGTERM or the end of `duration` while `timeline`
    runs; a timeline that fails ends the wait at once. Returns why it failed
    (None when it did not)."""
    stop = asyncio.create_task(wait_for_stop_signal(duration))
    events = asyncio.create_task(timeline.run()) if timeline is not None else None
    try:
        if events is not None:
            await asyncio.wait({stop, events}, return_when=asyncio.FIRST_COMPLETED)
            if events.done() and events.exception() is not None:
                return str(events.exception())
        await stop  # every event done (or none): run on until stopped
        return None
    finally:
        for t in (stop, events):
            if t is not None:
                t.cancel()
        await asyncio.gather(stop, *([events] if events else []), return_exceptions=True)
