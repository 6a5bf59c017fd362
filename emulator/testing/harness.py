"""Driving emulated boards from synchronous code (tests, notebooks).

`Emulator` runs one asyncio event loop in a background thread; boards live
on that loop and every control call is marshalled onto it, so a test can
power-cycle a board or blackhole its link while a paho-mqtt observer (which
has threads of its own) watches the broker.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

from emulator.board.board import Board
from emulator.board.loader import FirmwareImage
from emulator.firmware.config import default_config


class Emulator:
    def __init__(self, state_dir: Path | str, image: FirmwareImage | None = None, *,
                 vm: str | None = None, heap: str | None = None):
        self.state_dir = Path(state_dir)
        self.image = image or FirmwareImage()
        # vm="micropython": add_board makes boards on the real interpreter (emulator/board/vm/).
        self.vm = vm
        self.heap = heap
        self.boards: dict[str, Board] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="esp32emu-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run a plain function on the loop thread and return its result."""
        fut: Future = Future()

        def go() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                fut.set_exception(e)

        self.loop.call_soon_threadsafe(go)
        return fut.result(timeout)

    def run(self, coro, timeout: float = 30.0) -> Any:
        """Run a coroutine on the loop thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def add_board(
        self,
        device_id: str,
        host: str,
        port: int,
        *,
        seed: int = 0,
        console: Callable[[str], None] | None = None,
        start: bool = True,
        certs: Path | str | None = None,
        vm: str | None = None,
        heap: str | None = None,
        **config: Any,
    ) -> Board:
        """Make (and by default power on) a board. With `certs` (an
        `esp32emu certs` directory) the board gets its device's DER
        `ca.crt`/`client.crt`/`client.key` and `"tls": true` in its config.
        `vm`, `heap`: its backend (default: the Emulator's); "micropython" is
        a board on the real interpreter running the image's firmware as .mpy."""
        if certs is not None:
            config["broker"] = {"tls": True, **config.get("broker", {})}
        cfg = default_config(device_id, host, port, **config)
        if (vm or self.vm) == "micropython":
            from emulator.board.vm.board import VmBoard
            from emulator.board.vm.interpreter import DEFAULT_HEAP

            board: Any = VmBoard(device_id, self.state_dir / device_id, heap=heap or self.heap or DEFAULT_HEAP,
                                 seed=seed, index=len(self.boards), console=console, config=cfg,
                                 firmware=self.image.directory)
        else:
            board = Board(
                device_id,
                self.image,
                self.state_dir / device_id,
                config=cfg,
                seed=seed,
                index=len(self.boards),
                console=console,
            )
        if certs is not None:
            from emulator.broker.certs import board_files

            board.install_files(board_files(certs, device_id))
        self.boards[device_id] = board
        if start:
            self.call(board.start)
        return board

    def shutdown_board(self, board: Board, timeout: float = 5.0) -> None:
        from emulator.run.stopping import shutdown_gracefully

        self.run(shutdown_gracefully([board], timeout), timeout + 5)

    def close(self) -> None:
        async def stop_all() -> None:
            await asyncio.gather(*(b.stop() for b in self.boards.values()), return_exceptions=True)

        try:
            self.run(stop_all(), 15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            if not self._thread.is_alive():
                self.loop.close()

    def __enter__(self) -> "Emulator":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
