"""MicroPython's asyncio `Stream` API, as the firmware sees an emulated TCP
connection (`emulator.net.link.Connection`). Nothing else.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Connection(Protocol):
    """The byte stream under a Stream (emulator.net.link.Connection)."""

    async def read(self, n: int) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...
    def peername(self): ...
    def drains_at_once(self) -> bool: ...


class Stream:
    """MicroPython's asyncio Stream, over a `Connection`."""

    def __init__(self, conn: Connection):
        self._c = conn

    def get_extra_info(self, name: str):
        if name == "peername":
            return self._c.peername()
        return None

    async def read(self, n: int = -1) -> bytes:
        # MicroPython's Stream.read yields to the I/O poller before every
        # read, even with bytes waiting: a reader never holds the loop while
        # a flood is buffered (issue 12 D1).
        await asyncio.sleep(0)
        return await self._c.read(n)

    async def readinto(self, buf) -> int:
        await asyncio.sleep(0)
        data = await self._c.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    async def readexactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = await self._c.read(n - len(out))
            if not chunk:
                raise EOFError
            out += chunk
        return out

    async def readline(self) -> bytes:
        out = b""
        while not out.endswith(b"\n"):
            chunk = await self._c.read(1)
            if not chunk:
                break
            out += chunk
        return out

    def write(self, buf) -> None:
        self._c.write(bytes(buf))

    async def drain(self) -> None:
        await self._c.drain()

    @property
    def out_buf(self) -> bytes:
        # MicroPython's Stream keeps here what the socket did not take at
        # write(): empty when drain() will not wait (firmware/mqtt_client.py
        # arms a write's deadline only otherwise).
        return b"" if self._c.drains_at_once() else b"\0"

    async def awrite(self, buf, off: int = 0, sz: int = -1) -> None:
        end = len(buf) if sz < 0 else off + sz
        self.write(bytes(buf[off:end]))
        await self.drain()

    def close(self) -> None:
        self._c.close()

    async def wait_closed(self) -> None:
        # As on MicroPython: closing is synchronous, nothing to wait for.
        self._c.close()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()
