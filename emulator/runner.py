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
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from emulator.board import Board, default_config
from emulator.broker import Broker
from emulator.loader import FirmwareImage


class UsageError(Exception):
    """Bad command-line input; the CLI prints it on one line and exits 2."""


@dataclass(frozen=True)
class BrokerURL:
    scheme: str
    host: str
    port: int

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
        yield parse_broker_url(broker.url)
    finally:
        broker.stop()


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
) -> int:
    """`esp32emu run`: one board, its console on stdout, until Ctrl-C."""
    if keepalive < 2 or keepalive > 65535:
        raise UsageError(f"--keepalive must be 2..65535 seconds, got {keepalive}")
    if not 0.1 <= interval <= 86400:
        raise UsageError(f"--interval must be 0.1..86400 seconds, got {interval}")
    if link != "wifi-good":
        raise UsageError(f"unknown --link profile {link!r} (known: wifi-good)")
    image = FirmwareImage()
    with broker_for(broker, state_dir) as url:
        if url.tls:
            raise UsageError("mqtts:// needs the TLS support that is not built yet")
        cfg = default_config(device_id, url.host, url.port, keepalive=keepalive, interval=interval)

        def console(line: str) -> None:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

        board = Board(device_id, image, state_dir / "boards" / device_id, config=cfg, seed=seed, console=console)

        async def main() -> None:
            board.start()
            await wait_for_stop_signal(duration)
            await shutdown_gracefully([board])

        asyncio.run(main())
    return 0


def serve_broker(port: int, tls: bool, state_dir: Path) -> int:
    """`esp32emu broker`: a private Mosquitto in the foreground until Ctrl-C."""
    if tls:
        raise UsageError("--tls needs `esp32emu certs`, which is not built yet")
    if not 1 <= port <= 65535:
        raise UsageError(f"--port must be 1..65535, got {port}")
    broker = Broker(state_dir / "broker", port=port)
    broker.start()
    print(f"esp32emu: Mosquitto listening at {broker.url} (config and log in {broker.workdir}); Ctrl-C stops it")
    try:
        asyncio.run(wait_for_stop_signal())
    finally:
        broker.stop()
    return 0
