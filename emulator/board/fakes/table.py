"""The table of a board's fakes: which module name is which fake, and one
board's table for the loader (`get(name)` -> a factory made when asked, so
a boot makes no closure per fake)."""

from __future__ import annotations

import functools
from typing import Callable

from emulator.board.fakes.asynciofake import AsyncioModule
from emulator.board.fakes.dhtfake import DhtModule
from emulator.board.fakes.esp32fake import Esp32Module
from emulator.board.fakes.machinefake import MachineModule
from emulator.board.fakes.misc import GcModule, MicropythonModule, NtptimeModule, OsModule, RandomModule, SysModule
from emulator.board.fakes.networkfake import NetworkModule
from emulator.board.fakes.timefake import TimeModule
from emulator.board.fakes.tlsfake import SslModule, TlsModule

# The fakes a board's firmware imports: name -> class, called with the board.
FAKES: dict[str, Callable[..., object]] = {
    "machine": MachineModule,
    "network": NetworkModule,
    "esp32": Esp32Module,
    "time": TimeModule,
    "asyncio": AsyncioModule,
    "gc": GcModule,
    "micropython": MicropythonModule,
    "ntptime": NtptimeModule,
    "sys": SysModule,
    "random": RandomModule,
    "os": OsModule,
    "tls": TlsModule,
    "ssl": SslModule,
    "dht": DhtModule,
}


class FakeTable:
    """One board's fakes table for the loader (`get(name)` -> a factory,
    made when asked): no closure per fake per boot."""

    __slots__ = ("_board",)

    def __init__(self, board):
        self._board = board

    def get(self, name: str):
        cls = FAKES.get(name)
        return None if cls is None else functools.partial(cls, self._board)

    def __getitem__(self, name: str):
        factory = self.get(name)
        if factory is None:
            raise KeyError(name)
        return factory

    def __iter__(self):
        return iter(FAKES)

    def __contains__(self, name) -> bool:
        return name in FAKES

    def keys(self):
        return FAKES.keys()
