"""Running emulated boards for the CLI: check a broker URL (validation.py), start a private
Mosquitto when none is given, boot boards, and shut them down gracefully
(the BOOT button asks the firmware for a planned offline) on Ctrl-C.

No argument parsing here: `cli.py` turns arguments into calls of these.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from emulator.board import Board
from emulator.boardconfig import default_config
from emulator.broker import Broker, TlsConfig
from emulator.firmware_dir import FirmwareError, board_modules
from emulator.firmware_dir import resolve as resolve_firmware
from emulator.loader import FirmwareImage
from emulator.profiles import profile_names
from emulator.scenario import Scenario, ScenarioError, Timeline, check_backend
from emulator.scenario import load as load_scenario_file
from emulator.validation import (  # noqa: F401 - BrokerURL, UsageError, parse_broker_url: imported from here by other modules
    DURATION,
    INTERVAL,
    KEEPALIVE,
    PORT,
    BrokerURL,
    UsageError,
    check_device_id,
    parse_broker_url,
)
from emulator.validation import state_dir as check_state_dir


def check_inputs(url: str | None, state_dir: Path, credentials: bool = False) -> BrokerURL | None:
    """The --broker URL parsed (None: none given) and `state_dir` checked to be
    a writable folder: a UsageError before a command says or starts anything."""
    parsed = None if url is None else parse_broker_url(url, credentials=credentials)
    check_state_dir(state_dir)
    return parsed


@contextlib.contextmanager
def broker_for(url: str | None, state_dir: Path, say=lambda msg: print(msg, file=sys.stderr, flush=True),
               credentials: bool = False):
    """Yield the BrokerURL to use; start a private Mosquitto when url is None.
    Checks the URL (with user:password@ when the caller's boards and observer
    log in with `credentials`) and that `state_dir` is a writable folder first."""
    parsed = check_inputs(url, state_dir, credentials)
    if parsed is not None:
        yield parsed
        return
    broker = Broker(state_dir / "broker")
    broker.start()
    say(f"esp32emu: started a private Mosquitto at {broker.url} (config and log in {broker.workdir})")
    try:
        yield replace(parse_broker_url(broker.url), broker=broker)
    finally:
        broker.stop()


def board_broker(url: BrokerURL) -> dict:
    """The `broker` section of a board's config.json for `url` (beside host and port)."""
    section: dict = {"tls": url.tls}
    if url.username is not None:
        section.update(username=url.username, password=url.password)
    return section


def pick_firmware(
    flag: Path | str | None,
    vm: str | None = None,
    *,
    verb: str = "booting",
    emulated: bool = True,
    say=lambda msg: print(msg, file=sys.stderr, flush=True),
) -> Path:
    """The firmware folder a command uses (`--firmware`, else ./firmware with a
    main.py, else the bundled one: firmware_dir.resolve), said on the
    command's first line with its FW_VERSION. One that cannot boot -- no
    main.py, a file that does not compile, an import that does not resolve
    (on an emulated board, `emulated`, also a module the board lacks) -- is
    a UsageError (exit 2) naming the file and line."""
    try:
        fw = resolve_firmware(flag, modules=board_modules(vm) if emulated else None)
    except FirmwareError as e:
        raise UsageError(str(e)) from None
    say(fw.line(verb))
    return fw.path


def say_if_refused(url: BrokerURL) -> None:
    """One line on stderr at once when nothing listens at a given --broker
    (the board's console says it too; a vm=micropython board names its link
    proxy's port there) -- the board keeps retrying with backoff."""
    import socket

    if url.broker is not None:
        return  # ours: listening
    try:
        socket.create_connection((url.host, url.port), timeout=2).close()
    except ConnectionRefusedError:
        print(f"esp32emu: connection refused by {url.host}:{url.port} (the board keeps retrying)",
              file=sys.stderr, flush=True)
    except OSError:
        pass  # slow or unreachable: the board's console says what it sees


def provision_tls(certs_dir: Path, device_ids: list[str]) -> None:
    """Make sure every device has its client certificate in `certs_dir`
    (issued from the CA there when missing; existing ones are kept)."""
    from emulator.certs import CertError, ensure_devices

    try:
        made = ensure_devices(certs_dir, device_ids)
    except CertError as e:
        raise UsageError(f"mqtts:// needs the dev PKI: {e}") from None
    if made:
        print(f"esp32emu: issued {made} device certificate(s) in {certs_dir}", file=sys.stderr, flush=True)


def install_tls(board: Board, certs_dir: Path) -> None:
    """Put the board's own DER ca.crt/client.crt/client.key on its flash."""
    from emulator.certs import CertError, board_files

    try:
        board.install_files(board_files(certs_dir, board.id))
    except CertError as e:
        raise UsageError(str(e)) from None


async def shutdown_gracefully(boards: list[Board], timeout: float = 5.0) -> None:
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
    `firmware`: the --firmware folder (see pick_firmware for the default).
    With an mqtts:// broker the board gets its own certificate from `certs_dir`.
    With `vm="micropython"` the board is one real MicroPython process with
    `heap` (emulator/vm/)."""
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
        from emulator.vm import check_vm

        heap = check_vm(heap)
    elif heap is not None:
        raise UsageError("--heap needs --vm micropython")
    check_inputs(broker, state_dir, credentials=True)  # bad input fails before the first line
    image = FirmwareImage(pick_firmware(firmware, vm))
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
            from emulator.vm.board import VmBoard

            board = VmBoard(device_id, state_dir / "vm-boards" / device_id, heap=heap, seed=seed, console=console,
                            config=cfg, firmware=image.directory)
        else:
            board = Board(device_id, image, state_dir / "boards" / device_id, config=cfg, seed=seed, console=console)
        if url.tls:
            install_tls(board, certs_dir)

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


def load_scenario(path: Path, private_broker: bool, backend: str = "cpython") -> Scenario:
    """Parse a scenario file up front: a bad one, or one with a board action
    the board backend cannot do, is a usage error naming the line."""
    try:
        scenario = load_scenario_file(path)
        check_backend(scenario, backend)
    except ScenarioError as e:
        raise UsageError(str(e)) from None
    if scenario.uses_broker and not private_broker:
        raise UsageError(f"{path}: broker events need the private broker (omit --broker)")
    return scenario


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
