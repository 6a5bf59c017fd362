"""Running emulated boards for the CLI: parse a broker URL, start a private
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

from emulator.board import Board
from emulator.boardconfig import default_config
from emulator.broker import Broker, TlsConfig
from emulator.loader import FirmwareImage
from emulator.profiles import profile_names
from emulator.scenario import Scenario, ScenarioError, Timeline, check_backend
from emulator.scenario import load as load_scenario_file


class UsageError(Exception):
    """Bad command-line input; the CLI prints it on one line and exits 2."""


@dataclass(frozen=True)
class BrokerURL:
    scheme: str
    host: str
    port: int
    broker: Broker | None = field(default=None, compare=False)  # set when the tool started it

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerURL:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise UsageError(f"--broker must be mqtt://host:port or mqtts://host:port, got {url!r}")
    try:
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
    except ValueError:
        raise UsageError(f"--broker has a bad port: {url!r}") from None
    if not parts.hostname:
        raise UsageError(f"--broker has no host: {url!r}")
    return BrokerURL(parts.scheme, parts.hostname, port)


@contextlib.contextmanager
def broker_for(url: str | None, state_dir: Path, say=lambda msg: print(msg, file=sys.stderr, flush=True)):
    """Yield the BrokerURL to use; start a private Mosquitto when url is None."""
    if url is not None:
        yield parse_broker_url(url)
        return
    broker = Broker(state_dir / "broker")
    broker.start()
    say(f"esp32emu: started a private Mosquitto at {broker.url} (config and log in {broker.workdir})")
    try:
        yield replace(parse_broker_url(broker.url), broker=broker)
    finally:
        broker.stop()


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
) -> int:
    """`esp32emu run`: one board, its console on stdout, until Ctrl-C.
    With an mqtts:// broker the board gets its own certificate from `certs_dir`.
    With `vm="micropython"` the board is one real MicroPython process with
    `heap` (emulator/vm/)."""
    if keepalive < 2 or keepalive > 65535:
        raise UsageError(f"--keepalive must be 2..65535 seconds, got {keepalive}")
    if not 0.1 <= interval <= 86400:
        raise UsageError(f"--interval must be 0.1..86400 seconds, got {interval}")
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
    image = FirmwareImage()
    with broker_for(broker, state_dir) as url:
        say_if_refused(url)
        if url.tls:
            provision_tls(certs_dir, [device_id])
        cfg = default_config(
            device_id, url.host, url.port, keepalive=keepalive, interval=interval, broker={"tls": url.tls}
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

        async def main() -> None:
            board.start()
            extra = []
            if scenario is not None:
                timeline = Timeline(load_scenario(scenario, url.broker is not None), [board], url.broker)
                extra.append(asyncio.create_task(timeline.run()))
            await wait_for_stop_signal(duration)
            for t in extra:
                t.cancel()
            await shutdown_gracefully([board])

        asyncio.run(main())
    return 0


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
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be 1..65535, got {port}")
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
