"""One emulated ESP32 board.

A board owns what survives a reset (flash directory, NVS, RTC memory unless
power is lost, the link and the environment) and recreates what a reset
wipes (module table, tasks, radio state, ticks). Each boot runs `boot.py`
then `main.py` (`scripts.py`: in a greenlet, or main.py's closing
`asyncio.run` as a task of its own) while the board's tasks run on the one
shared event loop.

Tests, scenarios and the CLI drive a board through its methods
(`power_cycle`, `hard_reset`, `press_button`, `link.*`, `ap.set_up`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

import greenlet

from emulator.board.clock import BoardClock
from emulator.board.environment import Environment
from emulator.rng import SmallRandom
from emulator.board.fakes.machinefake import (
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    WDT_RESET,
    BoardReset,
    MachineModule,
)
from emulator.board.fakes.misc import FlashFS
from emulator.board.fakes.networkfake import AccessPoint, Radio
from emulator.board.fakes.table import FakeTable
from emulator.board.loader import BoardModules, FirmwareImage, format_micropython_exception
from emulator.board.scripts import BootScripts
from emulator.board.sensors import wire as wire_sensors
from emulator.net.event import Event
from emulator.net.link import Link

log = logging.getLogger("esp32emu")

BUTTON_PIN = 0  # the BOOT button of ESP32 dev kits


class Board(BootScripts):
    # Slots: a board has more attributes than CPython shares the keys of
    # (30), so without them each board carried a 1.5 KiB dict of its own.
    # `__dict__` stays for attributes a test or tool hangs on a board.
    __slots__ = (
        "id", "index", "image", "state_dir", "flash_dir", "seed", "rng", "mac", "ip", "gateway", "clock", "env",
        "ap", "link", "fs", "flash", "_console", "_partial", "console_tail", "events", "nvs", "rtc_memory", "pins",
        "pin_writes", "pin_irqs", "reset_cause", "boots", "halted", "hung", "running", "loop", "modules", "radio",
        "tasks", "task_exception_handler", "_main_task", "_main_where", "_runner", "_greenlet", "_reset_request", "_reset_event",
        "_wdt_timeout_ms", "_wdt_fed", "_wdt_task", "_run_task", "repl", "_interrupted", "_interrupt_waiter",
        "_on_task_done", "__dict__", "__weakref__",
    )

    def __init__(
        self,
        device_id: str,
        image: FirmwareImage,
        state_dir: Path,
        *,
        config: dict | None = None,
        seed: int = 0,
        index: int = 0,
        ap: AccessPoint | None = None,
        console: Callable[[str], None] | None = None,
        ticks_offset_ms: int = 0,
        copy_firmware: bool = False,
    ):
        self.id = device_id
        self.index = index
        self.image = image
        self.state_dir = Path(state_dir)
        self.flash_dir = self.state_dir / "flash"
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (self.flash_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if copy_firmware:
            for name, data in image.files().items():
                (self.flash_dir / name).write_bytes(data)
        self.seed = seed
        self.rng = SmallRandom(f"{seed}:{device_id}")
        digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
        self.mac = bytes([0x24, 0x0A, 0xC4]) + digest[:3]
        host = index + 2  # .0.1 is the gateway
        self.ip = f"10.42.{(host >> 8) & 0xFF}.{host & 0xFF}"
        self.gateway = "10.42.0.1"
        self.clock = BoardClock(ticks_offset_ms)
        self.env = Environment(SmallRandom(f"env:{seed}:{device_id}"))
        self.ap = ap or AccessPoint()
        self.link = Link(self)
        # Every byte the radio sends draws current: the battery sags meanwhile.
        self.link.taps.append(self._radio_tap)  # (a bound method: no closure and cell a board)
        self.fs = FlashFS(self.flash_dir, self)
        self.flash = self.fs  # power cuts, size and write time of the flash (fakes/misc.py FlashFS)
        self._console = console or (lambda line: None)
        self._partial = ""  # firmware output not yet ended by a newline
        self.console_tail: list[str] = []
        self.events: list[tuple[float, str, str]] = []
        self.nvs: dict[str, dict] = self._load_nvs()
        self.rtc_memory = b""
        self.pins: dict[int, int] = {}
        self.pin_writes: dict[int, int] = {}  # how often firmware drove each pin (tests count executions)
        self.pin_irqs: dict[int, Callable] = {}
        self.reset_cause = PWRON_RESET
        self.boots = 0
        self.halted = False
        self.hung = False
        self.running = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.modules: BoardModules | None = None
        self.radio: Radio | None = None
        # The boot's tasks, in a dict (keys only): a set of more than four
        # takes a 512-byte table of its own, a dict of seven ~300 bytes.
        self.tasks: dict[asyncio.Task, None] = {}
        self.task_exception_handler = None
        self._main_task: asyncio.Task | None = None
        # main.py's line that ended in asyncio.run while its main task runs on
        # by itself (_start_main), else None
        self._main_where: tuple[str, int, str] | None = None
        self._runner: asyncio.Task | None = None  # the boot's _run_scripts, until it ends
        self._greenlet: greenlet.greenlet | None = None
        self._reset_request: tuple[int, int | None, bool] | None = None
        self._reset_event: asyncio.Event | None = None
        self._wdt_timeout_ms: int | None = None
        self._wdt_fed = 0.0
        self._wdt_task: asyncio.Task | None = None
        self._run_task: asyncio.Task | None = None
        # A REPL on the console (emulator/realboard/serial_board.py), or None: then the
        # board only prints the banner when boot.py/main.py end.
        self.repl = None
        self._interrupted = False  # Ctrl-C: KeyboardInterrupt instead of CancelledError
        self._interrupt_waiter: asyncio.Future | None = None
        self._on_task_done = self._task_done  # one bound method for every task, not one each

    def _radio_tap(self, direction: str, data: bytes, t: float) -> None:
        if direction == "tx":
            self.env.radio_transmit(len(data))

    # -- console and logging ---------------------------------------------------

    def _emit(self, line: str) -> None:
        self.console_tail.append(line)
        if len(self.console_tail) > 200:
            del self.console_tail[:100]
        self._console(line)

    def console(self, line: str) -> None:
        """Whole lines from the board itself (tracebacks, REPL banner, WDT)."""
        if self._partial:
            self._emit(self._partial)
            self._partial = ""
        for part in str(line).split("\n"):
            self._emit(part)

    def write(self, text: str) -> None:
        """Firmware output (print, sys.stdout): goes out line by line, so
        `print(".", end="")` continues the current line as on a serial console."""
        self._partial += text
        if "\n" in self._partial:
            *lines, self._partial = self._partial.split("\n")
            for line in lines:
                self._emit(line)

    def _print(self, *args, sep=" ", end="\n", file=None) -> None:
        text = sep.join(str(a) for a in args) + end
        if file is not None and hasattr(file, "write"):
            file.write(text)
            return
        self.write(text)

    def log_event(self, kind: str, message: str) -> None:
        self.events.append((time.monotonic(), kind, message))
        if len(self.events) > 500:
            del self.events[:250]
        log.debug("[%s] %s: %s", self.id, kind, message)

    # -- persistent hardware state -------------------------------------------------

    def _nvs_path(self) -> Path:
        return self.state_dir / "nvs.json"

    def _load_nvs(self) -> dict:
        try:
            raw = json.loads(self._nvs_path().read_text())
        except (FileNotFoundError, ValueError):
            return {}
        out: dict[str, dict] = {}
        for ns, items in raw.items():
            out[ns] = {k: base64.b64decode(v["b"]) if isinstance(v, dict) else v for k, v in items.items()}
        return out

    def save_nvs(self) -> None:
        raw = {
            ns: {k: {"b": base64.b64encode(v).decode()} if isinstance(v, bytes) else v for k, v in items.items()}
            for ns, items in self.nvs.items()
        }
        tmp = self._nvs_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(raw))
        tmp.replace(self._nvs_path())

    def install_files(self, files: dict[str, bytes]) -> None:
        """Put files at the root of the board's filesystem (e.g. the DER
        `ca.crt`, `client.crt`, `client.key` from `certs.board_files`), as
        `esp32emu flash` does for a real board. Keys stay 0600 on the host."""
        for name, data in files.items():
            path = self.fs.host_path("/" + name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if name.endswith(".key"):
                path.chmod(0o600)

    def rssi(self) -> int:
        return int(-58 + self.rng.gauss(0, 3))

    def heap_alloc(self) -> int:
        return 30_000 + 400 * len(self.tasks) + self.rng.randrange(0, 2_000)

    def i2c_bus(self, bus_id: int):
        return self.env.i2c_bus(bus_id)

    def _wire_sensors(self) -> None:
        # The emulated hardware matches the board's config.json "sensors".
        # Whatever the file holds, the board boots: judging it is the
        # firmware's job ("boot stopped: ..." on the console). A file CPython
        # cannot parse (bad JSON or UTF-8, nested too deeply for its
        # recursion limit) wires no sensors.
        try:
            raw = json.loads((self.flash_dir / "config.json").read_bytes())
        except (OSError, ValueError, RecursionError, MemoryError):
            raw = None
        wire_sensors(self.env, raw.get("sensors", []) if isinstance(raw, dict) else [])

    def sensor_fault(self, sensor: str, fault: str):
        """Give this board's `sensor` chips a fault (emulator/board/sensors.py
        FAULTS); returns the function that clears it."""
        from emulator.board.sensors import apply_fault

        return apply_fault(self.env, sensor, fault)

    # -- the fakes table ----------------------------------------------------------------

    def _fakes(self) -> FakeTable:
        return FakeTable(self)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        """Power the board on; returns the task that runs it until stop()."""
        self.loop = asyncio.get_running_loop()
        self._run_task = self.loop.create_task(self.run(), name=f"board:{self.id}")
        return self._run_task

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.running = True
        cause = PWRON_RESET
        self.clock.power_on()
        try:
            while True:
                request = await self._boot_once(cause)
                cause = await self._between_boots(*request)
        finally:
            self.running = False

    async def _between_boots(self, cause: int, sleep_ms: int | None, power_loss: bool) -> int:
        """Deep sleep or power off until the timer (or, for deepsleep() without
        a time, forever); a reset or power event meanwhile (EN button, power
        cycle) ends it at once. Returns the reset cause of the next boot."""
        lost = False
        while True:
            if power_loss:
                lost = True
                self.rtc_memory = b""
            forever = cause == DEEPSLEEP_RESET and not sleep_ms  # no timer wake source
            if not sleep_ms and not forever:
                break
            self._reset_request = None
            self._reset_event = Event()
            self.log_event("power", "sleeping until reset" if forever else f"off for {sleep_ms} ms")
            try:
                await asyncio.wait_for(self._reset_event.wait(), None if forever else sleep_ms / 1000)
                cause, sleep_ms, power_loss = self._reset_request  # woken early
            except asyncio.TimeoutError:
                break
        if lost:
            self.clock.power_on()  # the RTC restarts at 2000-01-01 when power returns
        return cause

    async def stop(self) -> None:
        """Take the board away for good (like pulling its power)."""
        if self._run_task is not None and not self._run_task.done():
            self._run_task.cancel()
            try:
                await self._run_task
            except asyncio.CancelledError:
                pass

    async def _boot_once(self, cause: int) -> tuple[int, int | None, bool]:
        self.boots += 1
        self.reset_cause = cause
        self.halted = False
        self.clock.reboot()
        self._reset_request = None
        self._reset_event = Event()
        self.pin_irqs.clear()
        self.hung = False
        self.fs.cwd = "/"
        self.radio = Radio(self)
        self._wire_sensors()
        self.modules = BoardModules(self.image, self.flash_dir, self._fakes(), self._print, self.fs.open)
        self.log_event("boot", f"boot #{self.boots}, reset cause {cause}")
        self._runner = asyncio.Task(self._run_scripts(), loop=self.loop, name=self.id)
        # Only a reset (WDT, button, power, a deep sleep) ends a boot: the
        # scripts ending (halted at the REPL) does not. So the boot waits for
        # the reset alone; no task (nor asyncio.wait's set, callbacks and
        # coroutines, ~1.4 KiB a board) waits on the runner.
        waiter = self._reset_event.future()
        try:
            await waiter
        finally:
            if self._runner is not None:
                self._runner.cancel()
                self._runner = None
            waiter.cancel()
            await self._teardown()
        req = self._reset_request or (HARD_RESET, None, False)
        return req

    async def _stop_tasks(self) -> None:
        # No firmware cleanup reaches the network: abandon the sockets first
        # so a `finally: sock.close()` cannot send a FIN.
        self.link.abandon_connections()
        # On Python 3.11 `asyncio.wait_for` can swallow a cancel() when the
        # awaited read completes in the same loop step, so cancel again until
        # every task of this boot is really gone (a survivor would reconnect
        # from beyond the reset).
        for _ in range(50):
            tasks = [t for t in self.tasks if not t.done()]
            if not tasks:
                break
            for t in tasks:
                t.cancel()
            await asyncio.wait(tasks, timeout=0.1)
        else:
            log.warning("[%s] %d task(s) ignore cancellation", self.id, len([t for t in self.tasks if not t.done()]))
        self.tasks.clear()
        self.link.release_abandoned()

    async def _teardown(self) -> None:
        if self._wdt_task is not None:
            self._wdt_task.cancel()
            self._wdt_task = None
        self._wdt_timeout_ms = None
        self._main_where = None  # a main task cancelled from here on is the reset's (or stop's) doing
        await self._stop_tasks()
        if self.radio is not None:
            self.radio.close()
        g = self._greenlet
        self._greenlet = None
        if g is not None and not g.dead:
            try:
                g.throw(greenlet.GreenletExit)
            except greenlet.GreenletExit:
                pass
            except BaseException:
                pass

    # -- called by the fakes ---------------------------------------------------------

    def create_task(self, coro) -> asyncio.Task:
        # Every task of a boot shares the board's context (only the emulator's
        # context variable is in it; firmware has no contextvars): a copy per
        # task would cost ~600 bytes a task, a few thousand a board.
        context = self.modules.context
        # Named after the board (its id string, shared): else CPython makes a
        # "Task-N" string for each task (uvloop's create_task too, even given a name).
        t = asyncio.Task(coro, loop=self.loop, name=self.id, context=context)
        self.tasks[t] = None
        # the board's context, not a copy of it per task (and its bound method)
        t.add_done_callback(self._on_task_done, context=context)
        return t

    def _task_done(self, t: asyncio.Task) -> None:
        self.tasks.pop(t, None)
        if t is self._main_task and self._main_where is not None:
            self._main_ended(t)
            return
        if t.cancelled() or t is self._main_task:
            return
        # Like MicroPython, report only if nobody retrieves the exception
        # meanwhile: a task awaiting `t` (or gather) was queued before this check.
        self.loop.call_soon(self._check_task_exception, t)

    def _check_task_exception(self, t: asyncio.Task) -> None:
        if not t._log_traceback:  # retrieved by an awaiting task, gather, .exception()
            return
        exc = t.exception()
        if exc is None or isinstance(exc, BoardReset):
            return
        self.report_task_exception({"message": "Task exception wasn't retrieved", "exception": exc, "future": t})

    def report_task_exception(self, context: dict) -> None:
        if self.task_exception_handler is not None:
            self.modules.context.copy().run(self.task_exception_handler, None, context)
            return
        self.console(context.get("message", "Task exception"))
        exc = context.get("exception")
        if exc is not None:
            self.console(format_micropython_exception(exc))

    def request_reset(self, cause: int, sleep_ms: int | None = None, power_loss: bool = False) -> None:
        pending = self._reset_request
        if pending is not None:
            # The first reset wins, except that losing power beats anything
            # and a board on its way into deep sleep can still be reset.
            if not (power_loss and not pending[2]) and pending[0] != DEEPSLEEP_RESET:
                return
        self._reset_request = (cause, sleep_ms, power_loss)
        self.log_event("reset", f"cause {cause}" + (f", sleep {sleep_ms} ms" if sleep_ms else ""))
        if self._reset_event is not None:
            self._reset_event.set()

    def arm_watchdog(self, timeout_ms: int) -> None:
        self._wdt_timeout_ms = timeout_ms
        self._wdt_fed = time.monotonic()
        if self._wdt_task is not None:
            self._wdt_task.cancel()  # it may be asleep until the old, longer deadline
        self._wdt_task = self.loop.create_task(self._watchdog())
        self.log_event("wdt", f"armed, timeout {timeout_ms} ms")

    def feed_watchdog(self) -> None:
        self._wdt_fed = time.monotonic()

    async def _watchdog(self) -> None:
        while self._wdt_timeout_ms is not None:
            deadline = self._wdt_fed + self._wdt_timeout_ms / 1000
            left = deadline - time.monotonic()
            if left <= 0:
                self.console("E (%d) task_wdt: Task watchdog got triggered." % self.clock.ticks_ms())
                self.request_reset(WDT_RESET)
                return
            await asyncio.sleep(left)

    # -- external controls (tests, scenarios, CLI) --------------------------------------

    def hang(self) -> None:
        """The firmware stops running (a deadlock, a stuck driver): nothing is
        sent any more, the sockets stay open at the broker, and only an armed
        watchdog (or a reset) brings the board back."""
        if self.loop is None or not self.running or self.hung:
            return
        self.hung = True
        self.log_event("hang", "firmware hung")
        self.loop.create_task(self._stop_tasks())

    def hard_reset(self) -> None:
        """The EN button: reset without warning, connections left half-open."""
        self.request_reset(HARD_RESET)

    def power_cycle(self, off_s: float = 0.0) -> None:
        """Power loss: no FIN, RTC memory gone, boots with PWRON_RESET after off_s."""
        self.request_reset(PWRON_RESET, sleep_ms=int(off_s * 1000) or None, power_loss=True)

    def press_button(self, pin: int = BUTTON_PIN) -> bool:
        """Press a button wired to `pin`; runs its IRQ handler if the firmware set one."""
        handler = self.pin_irqs.get(pin)
        self.pins[pin] = 0
        if handler is None or self.loop is None:
            return False
        pin_obj = MachineModule(self).Pin(pin)
        self.loop.call_soon(handler, pin_obj, context=self.modules.context.copy())
        return True
