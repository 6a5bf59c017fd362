"""`Event`: asyncio.Event's API (is_set, set, clear, wait) in a fraction of
its memory. A fleet holds a dozen events a board (the firmware's, the
link's); asyncio.Event carries an instance dict and a deque (~780 bytes)
whether anyone waits or not, this one two slots and a list only while
someone waits (~60 bytes)."""

from __future__ import annotations

import asyncio


class Event:
    __slots__ = ("_value", "_waiters")

    def __init__(self):
        self._value = False
        self._waiters: list | None = None

    def __repr__(self) -> str:
        return f"<Event [{'set' if self._value else 'unset'}, waiters:{len(self._waiters or ())}]>"

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, None
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(True)

    def clear(self) -> None:
        self._value = False

    def future(self) -> asyncio.Future:
        """A future that is done (True) once the event is set: waiting for it
        without a task of its own. A cancelled one stays listed until set()."""
        fut = asyncio.get_running_loop().create_future()
        if self._value:
            fut.set_result(True)
        elif self._waiters is None:
            self._waiters = [fut]
        else:
            self._waiters.append(fut)
        return fut

    async def wait(self) -> bool:
        if self._value:
            return True
        fut = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if waiters is None:
            self._waiters = [fut]
        else:
            waiters.append(fut)
        try:
            await fut
            return True
        finally:
            waiters = self._waiters
            if waiters is not None and fut in waiters:  # cancelled: set() did not take it
                waiters.remove(fut)
                if not waiters:
                    self._waiters = None
