"""The commands that run in the foreground until Ctrl-C: `esp32emu run`
(one board, its console on stdout) and `esp32emu broker` (a private
Mosquitto). No argument parsing here: `cli.py` turns arguments into calls
of these.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from emulator.board.backends import board_modules
from emulator.board.board import Board
from emulator.board.loader import FirmwareImage
from emulator.broker.certs import install_release_key, install_tls, provision_tls, release_files
from emulator.broker.mosquitto import Broker, TlsConfig
from emulator.broker.pick import broker_for, check_inputs, say_if_refused
from emulator.firmware.config import board_broker, default_config
from emulator.firmware.folder import pick_firmware
from emulator.net.profiles import profile_names
from emulator.run.scenario import Timeline, load_scenario
from emulator.run.stopping import run_until_stopped, shutdown_gracefully, wait_for_stop_signal
from emulator.validation import DURATION, INTERVAL, KEEPALIVE, PORT, UsageError, check_device_id
from emulator.validation import state_dir as check_state_dir


def run_single(
    broker: str | None,
    device_id: str,
    keepalive: int,
    interval: float,
    seed: int,
    state_dir: Path,
    link: str = "wifi-good",
    duration: float | None = None,
    certs_dir: Path = Path("certs"),
    scenario: Path | None = None,
    vm: str | None = None,
    heap: str | None = None,
    firmware: Path | str | None = None,
) -> int:
    """`esp32emu run`: one board, its console on stdout, until Ctrl-C.
    `firmware`: the --firmware folder (see emulator.firmware.folder.pick_firmware
    for the default).
    With an mqtts:// broker the board gets its own certificate from `certs_dir`.
    With `vm="micropython"` the board is one real MicroPython process with
    `heap` (emulator/board/vm/)."""
    check_device_id(device_id)  # also a folder name under state_dir: no '/' or '..'
    KEEPALIVE.check("--keepalive", keepalive)
    INTERVAL.check("--interval", interval)
    if duration is not None:
        DURATION.check("--duration", duration)
    if link not in profile_names():
        raise UsageError(f"unknown --link profile {link!r} (known: {', '.join(profile_names())})")
    if vm not in (None, "cpython", "micropython"):
        raise UsageError(f"--vm must be micropython (or cpython), got {vm!r}")
    if scenario is not None:
        load_scenario(scenario, private_broker=broker is None, backend=vm or "cpython")
    if vm == "micropython":
        from emulator.board.vm.interpreter import check_vm

        heap = check_vm(heap)
    elif heap is not None:
        raise UsageError("--heap needs --vm micropython")
    check_inputs(broker, state_dir, credentials=True)  # bad input fails before the first line
    image = FirmwareImage(pick_firmware(firmware, board_modules(vm)))
    with broker_for(broker, state_dir, credentials=True) as url:
        say_if_refused(url)
        if url.tls:
            provision_tls(certs_dir, [device_id])
        cfg = default_config(
            device_id, url.host, url.port, keepalive=keepalive, interval=interval, broker=board_broker(url)
        )

        def console(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        if vm == "micropython":
            from emulator.board.vm.board import VmBoard

            board = VmBoard(device_id, state_dir / "vm-boards" / device_id, heap=heap, seed=seed, console=console,
                            config=cfg, firmware=image.directory)
        else:
            board = Board(device_id, image, state_dir / "boards" / device_id, config=cfg, seed=seed, console=console)
        if url.tls:
            install_tls(board, certs_dir)
        install_release_key(board, release_files(certs_dir, state_dir)[0])  # OTA manifests verify against it

        board.link.set_profile(link)

        async def main() -> str | None:
            board.start()
            timeline = None
            if scenario is not None:
                timeline = Timeline(load_scenario(scenario, url.broker is not None), [board], url.broker)
            failed = await run_until_stopped(duration, timeline)
            await shutdown_gracefully([board])
            return failed

        failed = asyncio.run(main())
    if failed is not None:
        print(f"esp32emu: {failed}", file=sys.stderr, flush=True)
        return 1
    return 0


def serve_broker(port: int | None, tls: bool, state_dir: Path, certs_dir: Path = Path("certs")) -> int:
    """`esp32emu broker`: a private Mosquitto in the foreground until Ctrl-C.
    With `tls`: mutual TLS only (certificates from `certs_dir`, CN = username,
    each device confined to its own topics by an ACL; no anonymous access)."""
    if port is None:
        port = 8883 if tls else 1883
    PORT.check("--port", port)
    check_state_dir(state_dir)
    tls_config = None
    if tls:
        missing = [n for n in ("ca.crt", "broker.crt", "broker.key") if not (certs_dir / n).is_file()]
        if missing:
            raise UsageError(f"--tls needs {certs_dir / missing[0]}: run `esp32emu certs` first")
        tls_config = TlsConfig.from_pki(certs_dir)
    broker = Broker(state_dir / "broker", port=port, tls=tls_config)
    broker.start()
    print(f"esp32emu: Mosquitto listening at {broker.url} (config and log in {broker.workdir}); Ctrl-C stops it")
    try:
        asyncio.run(wait_for_stop_signal())
    finally:
        broker.stop()
    return 0
