"""One emulated board whose console is a pseudo-terminal, like a real ESP32
on its USB-serial bridge: `mpremote connect /dev/pts/N ...` works on it.

The shell around `emulator.realboard.repl.ReplProtocol`: it owns the pty (read on the
asyncio loop with `add_reader`, written without ever blocking the loop) and
runs the REPL inside the board, in the board's greenlet, once `boot.py` /
`main.py` have ended, exactly where MicroPython's `pyexec` loop runs. So code
typed or sent by mpremote imports the board's own modules (`os` is rooted at
the board's flash directory), `time.sleep` and `asyncio.run` wait as in
`main.py`, and `machine.reset()` / `machine.soft_reset()` reset the board.

- Ctrl-C while `main.py` (or REPL code) waits: KeyboardInterrupt there
  (`Board.interrupt`), then the REPL; the firmware's tasks stop where they are
  and its sockets stay half-open, as on hardware.
- Ctrl-D at an empty prompt: soft reset; `boot.py` runs again and `main.py`
  too unless the reset came from the raw REPL (as pyexec does).
- A reset of any kind keeps the pty open (a USB-serial bridge keeps the port).

The board's image is empty: what runs is what is on its flash, so
`mpremote fs rm :main.py` really removes `main.py`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import tempfile
import tty
from collections.abc import Callable
from pathlib import Path

import greenlet

from emulator.board.board import Board
from emulator.board.scripts import REPL_BANNER
from emulator.board.fakes import mp_oserror
from emulator.board.fakes.machinefake import (
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    SOFT_RESET,
    WDT_RESET,
    BoardReset,
)
from emulator.board.loader import FirmwareImage
from emulator.realboard.repl import CTRL_C, Execute, ReplProtocol, Send, SoftReset

OUTPUT_BACKLOG_MAX = 256 * 1024  # nobody reads the port: drop, as a bridge with no host does
ENOSPC = 28

_ROM_RESET = {
    PWRON_RESET: "0x1 (POWERON_RESET)",
    HARD_RESET: "0xc (SW_CPU_RESET)",
    WDT_RESET: "0x7 (TG0WDT_SYS_RESET)",
    DEEPSLEEP_RESET: "0x5 (DEEPSLEEP_RESET)",
}


def rom_banner(cause: int) -> bytes:
    """What the ESP32's ROM bootloader prints after a reset other than soft."""
    rst = _ROM_RESET.get(cause, "0xc (SW_CPU_RESET)")
    return f"ets Jul 29 2019 12:21:46\r\n\r\nrst:{rst},boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n".encode()


def format_repl_exception(exc: BaseException) -> str:
    """A traceback as MicroPython prints one at the REPL."""
    lines = ["Traceback (most recent call last):"]
    tb = exc.__traceback__
    while tb is not None:
        co = tb.tb_frame.f_code
        name = co.co_filename
        if name == "<stdin>" or (not os.path.isabs(name) and name.endswith(".py")):
            lines.append(f'  File "{name}", line {tb.tb_lineno}, in {co.co_name}')
        tb = tb.tb_next
    if isinstance(exc, SyntaxError):
        lines.append(f'  File "<stdin>", line {exc.lineno or 1}')
        msg = exc.msg
    elif isinstance(exc, OSError) and exc.args and isinstance(exc.args[0], int):
        code = exc.args[0]
        msg = f"[Errno {code}] {errno.errorcode.get(code, code)}"
    else:
        msg = str(exc)
    lines.append(f"{type(exc).__name__}: {msg}")
    return "\n".join(lines) + "\n"


class _LimitedFile:
    """A file opened for writing on a board whose flash has a size limit."""

    def __init__(self, f, serial: SerialBoard):
        self._f = f
        self._serial = serial

    def write(self, data) -> int:
        if self._serial.flash_used() + len(data) > self._serial.capacity:
            raise mp_oserror(ENOSPC)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class _VfsLfs2:
    def __repr__(self) -> str:
        return "<VfsLfs2>"

    __str__ = __repr__


class _VfsModule:
    """MicroPython's `vfs` (1.23+), as far as `mpremote df` uses it: the
    flash is one littlefs mounted at '/'."""

    __name__ = "vfs"
    VfsLfs2 = _VfsLfs2

    def mount(self, *args):
        if args:
            raise OSError(errno.EPERM)
        return [(_VfsLfs2(), "/")]


class SerialBoard:
    """A Board plus a pty speaking MicroPython's REPL protocols.

    Create it, then on the event loop `start()`; `path` is the pty to hand
    to mpremote. `stop()` powers the board off and closes the pty.
    """

    def __init__(
        self,
        device_id: str,
        state_dir: Path | str,
        *,
        config: dict | None = None,
        firmware: bool = True,
        erase: bool = False,
        flash_kib: int | None = None,
        seed: int = 0,
        tee: Callable[[bytes], None] | None = None,
        firmware_dir: Path | None = None,
    ):
        state_dir = Path(state_dir)
        flash_dir = state_dir / "flash"
        if erase and flash_dir.exists():
            shutil.rmtree(flash_dir)
        self._image_dir = tempfile.TemporaryDirectory(prefix="esp32emu-noimage-")
        self.board = Board(
            device_id,
            FirmwareImage(self._image_dir.name),
            state_dir,
            config=config,
            seed=seed,
            console=self._console_line,
        )
        if firmware:
            for name, data in (FirmwareImage(firmware_dir) if firmware_dir else FirmwareImage()).files().items():
                (self.board.flash_dir / name).write_bytes(data)
        self.capacity = (flash_kib or 2048) * 1024
        self.board.fs.blocks = self.capacity // 4096
        self.limit_writes = flash_kib is not None
        self.board.repl = self
        self.repl = ReplProtocol(REPL_BANNER)
        self.tee = tee
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no CR/LF mangling before a host opens it
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.dropped = 0  # output bytes nobody read
        self._out = bytearray()
        self._writer_armed = False
        self._stdin = bytearray()
        self._stdin_ready: asyncio.Event | None = None
        self._reading = False  # the REPL waits for input: Ctrl-C is a key, not an interrupt
        self._globals: dict = {}

    # -- on the event loop ----------------------------------------------------------

    def start(self) -> asyncio.Task:
        self.loop = asyncio.get_running_loop()
        self._stdin_ready = asyncio.Event()
        self.loop.add_reader(self.master, self._on_readable)
        return self.board.start()

    async def stop(self) -> None:
        await self.board.stop()
        self.close()

    def close(self) -> None:
        if self.master < 0:
            return
        if self.loop is not None:
            self.loop.remove_reader(self.master)
            if self._writer_armed:
                self.loop.remove_writer(self.master)
        os.close(self.master)
        os.close(self._slave)
        self.master = self._slave = -1
        self._image_dir.cleanup()

    # -- the port -----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.tee is not None:
            self.tee(data)
        if self.master < 0:
            return
        self._out += data
        self._flush()

    def _flush(self) -> None:
        while self._out:
            try:
                n = os.write(self.master, self._out)
            except BlockingIOError:
                break
            except OSError:
                self.dropped += len(self._out)
                self._out.clear()
                break
            del self._out[:n]
        if len(self._out) > OUTPUT_BACKLOG_MAX:
            self.dropped += len(self._out)
            self._out.clear()
        want = bool(self._out) and self.loop is not None
        if want and not self._writer_armed:
            self.loop.add_writer(self.master, self._flush)
        elif not want and self._writer_armed:
            self.loop.remove_writer(self.master)
        self._writer_armed = want

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        for c in data:
            if c == CTRL_C and not self._reading:
                self.board.interrupt()  # a running program gets KeyboardInterrupt; else dropped
                continue
            self._stdin.append(c)
        if self._stdin:
            self._stdin_ready.set()

    def _console_line(self, line: str) -> None:
        self.write(line.encode("utf-8", "replace") + b"\r\n")

    def _write_text(self, text: str) -> None:
        self.write(text.replace("\n", "\r\n").encode("utf-8", "replace"))

    # -- hooks the Board calls in its greenlet ----------------------------------------

    def booting(self, board: Board) -> None:
        soft = board.reset_cause == SOFT_RESET
        self._reading = False
        if soft:
            self.write(b"MPY: soft reboot\r\n")
        else:
            self._stdin.clear()  # the UART's buffer does not survive a reset
            self.write(rom_banner(board.reset_cause))
        self.repl.reset(soft)

    def runs_main(self) -> bool:
        return not self.repl.raw

    def serve(self, board: Board) -> None:
        """MicroPython's REPL loop: until a soft reset (returns) or a reset
        from the code it ran (BoardReset propagates)."""
        self._globals = {"__name__": "__main__", "__builtins__": self._builtins(board)}
        self._reading = True
        try:
            board.run_main_coroutine(self._stop_firmware_tasks(board))
            self.repl.start()
            while True:
                event = self.repl.next_event()
                if event is None:
                    self.repl.receive_data(board.run_main_coroutine(self._read()))
                elif isinstance(event, Send):
                    self.write(event.data)
                elif isinstance(event, Execute):
                    self._reading = False
                    try:
                        error = self._execute(event)
                    finally:
                        self._reading = True
                    self.repl.executed(error)
                elif isinstance(event, SoftReset):
                    board.request_reset(SOFT_RESET)
                    return
        finally:
            self._reading = False

    # -- inside the REPL -----------------------------------------------------------------

    async def _stop_firmware_tasks(self, board: Board) -> None:
        # At the REPL MicroPython's event loop no longer runs the firmware's
        # tasks; their sockets stay open until the broker gives up on them.
        # Firmware that swallows a cancellation (asyncio.wait_for can, before
        # Python 3.12) is cancelled again, for at most 2 s.
        me = asyncio.current_task()
        board.link.abandon_connections()
        deadline = asyncio.get_running_loop().time() + 2
        while True:
            others = [t for t in board.tasks if t is not me and not t.done()]
            if not others or asyncio.get_running_loop().time() > deadline:
                break
            for t in others:
                t.cancel()
            await asyncio.wait(others, timeout=0.1)
        board.link.release_abandoned()

    async def _read(self) -> bytes:
        while not self._stdin:
            self._stdin_ready.clear()
            await self._stdin_ready.wait()
        data = bytes(self._stdin)
        self._stdin.clear()
        return data

    def _builtins(self, board: Board) -> dict:
        table = dict(board.modules.builtins)
        table["print"] = self._print
        table["open"] = self._open
        board_import = table["__import__"]
        vfs = _VfsModule()

        def repl_import(name, globals=None, locals=None, fromlist=(), level=0):
            if name == "vfs" and not level:  # REPL tooling only; the firmware never needs it
                return vfs
            return board_import(name, globals, locals, fromlist, level)

        table["__import__"] = repl_import
        return table

    def _print(self, *args, sep=" ", end="\n", file=None) -> None:
        text = sep.join(str(a) for a in args) + end
        if file is not None:
            file.write(text)
        else:
            self._write_text(text)

    def _open(self, file, mode="r", *args, **kwargs):
        f = self.board.fs.open(file, mode, *args, **kwargs)
        if self.limit_writes and any(c in mode for c in "wax+"):
            return _LimitedFile(f, self)
        return f

    def flash_used(self) -> int:
        return sum(p.stat().st_size for p in self.board.flash_dir.rglob("*") if p.is_file())

    def _execute(self, event: Execute) -> str | None:
        try:
            if event.mode == "single":
                try:
                    code = compile(event.source, "<stdin>", "eval", dont_inherit=True)
                except SyntaxError:
                    code = None
                if code is not None:
                    value = eval(code, self._globals)
                    if value is not None:
                        self._print(repr(value))
                    return None
            exec(compile(event.source, "<stdin>", "exec", dont_inherit=True), self._globals)  # noqa: S102 - the REPL
        except (BoardReset, greenlet.GreenletExit):
            raise
        except SystemExit:
            pass
        except BaseException as e:  # noqa: BLE001 - shown at the REPL like MicroPython
            return format_repl_exception(e)
        return None


def run_serial(
    device_id: str,
    broker: str | None,
    state_dir: Path,
    *,
    firmware: bool = True,
    erase: bool = False,
    flash_kib: int | None = None,
    seed: int = 0,
    duration: float | None = None,
    out: Callable[[str], None] = lambda line: print(line, flush=True),
    firmware_dir: Path | str | None = None,
    certs_dir: Path = Path("certs"),
) -> int:
    """`esp32emu serial`: print the pty path, keep the board running until Ctrl-C.
    `firmware_dir`: the --firmware folder put on the board's flash (emulator.firmware.folder.pick_firmware)."""
    import sys

    from emulator.board.backends import emulated_board_modules
    from emulator.broker.pick import broker_for, check_inputs
    from emulator.firmware.config import default_config
    from emulator.firmware.folder import pick_firmware
    from emulator.run.stopping import wait_for_stop_signal
    from emulator.validation import UsageError

    if firmware_dir is not None and not firmware:
        raise UsageError("--firmware and --no-firmware exclude each other")
    check_inputs(broker, state_dir)  # bad input fails before the first line
    folder = pick_firmware(firmware_dir, emulated_board_modules()) if firmware else None
    with broker_for(broker, state_dir) as url:
        if url.tls and firmware:
            raise UsageError("esp32emu serial runs plain mqtt://; for TLS flash the board with `esp32emu flash`")
        cfg = default_config(device_id, url.host, url.port) if firmware else None
        serial = SerialBoard(
            device_id,
            state_dir / "serial" / device_id,
            config=cfg,
            firmware=firmware,
            erase=erase,
            flash_kib=flash_kib,
            seed=seed,
            firmware_dir=folder,
        )

        if firmware:
            from emulator.broker.certs import install_release_key, release_files

            install_release_key(serial.board, release_files(certs_dir, state_dir)[0])  # OTA manifests verify against it

        async def main() -> None:
            serial.start()
            out(serial.path)
            what = "the firmware" if firmware else "an empty filesystem (fresh MicroPython)"
            print(
                f"esp32emu: board {device_id} with {what}; its console is {serial.path} "
                f"(flash: {serial.board.flash_dir}); try `mpremote connect {serial.path}`; Ctrl-C stops it",
                file=sys.stderr,
                flush=True,
            )
            try:
                await wait_for_stop_signal(duration)
            finally:
                await serial.stop()

        asyncio.run(main())
    return 0
