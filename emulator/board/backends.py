"""The two board backends side by side: a CPython board (`board.py`, its
fakes and loader) and a board on the real MicroPython interpreter (`vm/`).
What each lets firmware import, for the firmware check a command runs
before it boots one (emulator.firmware.folder.pick_firmware).
"""

from __future__ import annotations


def emulated_board_modules() -> frozenset[str]:
    """What a CPython emulated board can import besides the firmware: its fakes
    (machine, network, esp32...) and the standard modules it passes through
    (u-prefixed names are mapped to these before the check)."""
    from emulator.board.board import Board
    from emulator.board.loader import PASSTHROUGH

    fakes = Board._fakes(None)  # type: ignore[arg-type]  # the table's keys; no factory is called
    return frozenset(fakes) | PASSTHROUGH | {"micropython"}


def board_modules(vm: str | None) -> frozenset[str] | None:
    """What firmware may import on the `vm` backend (None: not checked)."""
    if vm == "micropython":
        from emulator.board.vm.interpreter import vm_board_modules

        return vm_board_modules()
    return emulated_board_modules()
