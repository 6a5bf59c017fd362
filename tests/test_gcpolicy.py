"""The fleet's garbage-collection policy (emulator/fleet/gcpolicy.py): after boot
the collector freezes what boot built, turns automatic collection off and
collects by itself, on a timer or when garbage piles up; stop() restores."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref

from emulator.fleet.gcpolicy import Collector


class Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


async def wait_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_collector_freezes_collects_piled_up_cycles_and_restores():
    async def main() -> None:
        assert gc.isenabled()
        c = Collector(every_s=3600, piled_up=5_000)
        c.start()
        try:
            assert not gc.isenabled()
            assert gc.get_freeze_count() > 0
            refs = []
            for _ in range(10_000):
                n = Node()
                refs.append(weakref.ref(n))
            del n
            assert all(r() is not None for r in refs[:-1]), "cycles stay until the collector runs"
            await wait_until(lambda: c.collections >= 1, 5)
            assert all(r() is None for r in refs)
        finally:
            c.stop()
        assert gc.isenabled()
        assert gc.get_freeze_count() == 0

    asyncio.run(main())


def test_collector_also_collects_on_its_timer():
    async def main() -> None:
        c = Collector(every_s=1, piled_up=10**9)
        c.start()
        try:
            n = Node()
            ref = weakref.ref(n)
            del n
            await wait_until(lambda: ref() is None, 5)
            assert c.collections >= 1
        finally:
            c.stop()

    asyncio.run(main())
