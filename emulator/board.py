"""One emulated ESP32 board.

A board owns what survives a reset (flash directory, NVS, RTC memory unless
power is lost, the link and the environment) and recreates what a reset
wipes (module table, tasks, radio state, ticks). Each boot runs `boot.py`
then `main.py` in a greenlet: top-level code that blocks (`asyncio.run`,
`time.sleep` in boot.py) waits there while the board's tasks run on the one
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
import random
import time
from pathlib import Path
from typing import Callable

import greenlet

from emulator.clock import BoardClock
from emulator.environment import Environment
from emulator.fakes.asynciofake import AsyncioModule
from emulator.fakes.esp32fake import Esp32Module
from emulator.fakes.machinefake import (
    DEEPSLEEP_RESET,
    HARD_RESET,
    PWRON_RESET,
    WDT_RESET,
    BoardReset,
    MachineModule,
)
from emulator.fakes.misc import (
    FlashFS,
    GcModule,
    MicropythonModule,
    NtptimeModule,
    OsModule,
    RandomModule,
    SysModule,
)
from emulator.fakes.networkfake import AccessPoint, NetworkModule, Radio
from emulator.fakes.timefake import TimeModule
from emulator.link import Link
from emulator.loader import BoardModules, FirmwareImage, format_micropython_exception

log = logging.getLogger("esp32emu")

REPL_BANNER = 'MicroPython v1.24.1 on esp32emu; ESP32 module with ESP32\nType "help()" for more information.'
BUTTON_PIN = 0  # the BOOT button of ESP32 dev kits


def default_config(device_id: str, host: str, port: int, **overrides) -> dict:
    """The config.json the emulator writes for a board (SPEC §2)."""
    cfg = {
        "id": device_id,
        "wifi": {"ssid": "esp32emu", "password": "emulated"},
        "broker": {"host": host, "port": port, "tls": False},
        "prefix": "devices",
        "keepalive": 30,
        "interval": 10,
        "backoff": {"base_ms": 500, "cap_ms": 30000},
        "wdt_ms": 0,
        "sensors": [],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class Board:
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
        self.rng = random.Random(f"{seed}:{device_id}")
        digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
        self.mac = bytes([0x24, 0x0A, 0xC4]) + digest[:3]
        host = index + 2  # .0.1 is the gateway
        self.ip = f"10.42.{(host >> 8) & 0xFF}.{host & 0xFF}"
        self.gateway = "10.42.0.1"
        self.clock = BoardClock(ticks_offset_ms)
        self.env = Environment(random.Random(f"env:{seed}:{device_id}"))
        self.ap = ap or AccessPoint()
        self.link = Link(self)
        self.fs = FlashFS(self.flash_dir)
        self._console = console or (lambda line: None)
        self.console_tail: list[str] = []
        self.events: list[tuple[float, str, str]] = []
        self.nvs: dict[str, dict] = self._load_nvs()
        self.rtc_memory = b""
        self.pins: dict[int, int] = {}
        self.pin_irqs: dict[int, Callable] = {}
        self.reset_cause = PWRON_RESET
        self.boots = 0
        self.halted = False
        self.running = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.modules: BoardModules | None = None
        self.radio: Radio | None = None
        self.tasks: set[asyncio.Task] = set()
        self.task_exception_handler = None
        self._main_task: asyncio.Task | None = None
        self._greenlet: greenlet.greenlet | None = None
        self._reset_request: tuple[int, int | None, bool] | None = None
        self._reset_event: asyncio.Event | None = None
        self._wdt_timeout_ms: int | None = None
        self._wdt_fed = 0.0
        self._wdt_task: asyncio.Task | None = None
        self._run_task: asyncio.Task | None = None

    # -- console and logging ---------------------------------------------------

    def console(self, line: str) -> None:
        for part in str(line).split("\n"):
            self.console_tail.append(part)
            if len(self.console_tail) > 200:
                del self.console_tail[:100]
            self._console(part)

    def _print(self, *args, sep=" ", end="\n", file=None) -> None:
        text = sep.join(str(a) for a in args) + end
        if file is not None and hasattr(file, "write"):
            file.write(text)
            return
        if text.endswith("\n"):
            text = text[:-1]
        self.console(text)

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

    def rssi(self) -> int:
        return int(-58 + self.rng.gauss(0, 3))

    def heap_alloc(self) -> int:
        return 30_000 + 400 * len(self.tasks) + self.rng.randrange(0, 2_000)

    def i2c_bus(self, bus_id: int):
        return self.env.i2c_bus(bus_id)

    # -- the fakes table ----------------------------------------------------------------

    def _fakes(self) -> dict[str, Callable[[], object]]:
        return {
            "machine": lambda: MachineModule(self),
            "network": lambda: NetworkModule(self),
            "esp32": lambda: Esp32Module(self),
            "time": lambda: TimeModule(self),
            "asyncio": lambda: AsyncioModule(self),
            "gc": lambda: GcModule(self),
            "micropython": lambda: MicropythonModule(self),
            "ntptime": lambda: NtptimeModule(self),
            "sys": lambda: SysModule(self),
            "random": lambda: RandomModule(self),
            "os": lambda: OsModule(self),
        }

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
                cause, sleep_ms, power_loss = await self._boot_once(cause)
                if power_loss:
                    self.rtc_memory = b""
                    self.clock.power_on()
                if sleep_ms:
                    self.log_event("power", f"sleeping {sleep_ms} ms")
                    await asyncio.sleep(sleep_ms / 1000)
        finally:
            self.running = False

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
        self._reset_event = asyncio.Event()
        self.pin_irqs.clear()
        self.radio = Radio(self)
        self.modules = BoardModules(self.image, self.flash_dir, self._fakes(), self._print, self.fs.open)
        self.log_event("boot", f"boot #{self.boots}, reset cause {cause}")
        runner = self.loop.create_task(self._run_scripts())
        waiter = self.loop.create_task(self._reset_event.wait())
        try:
            await asyncio.wait({runner, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                await waiter  # halted at the REPL: only a reset (WDT, button, power) moves on
        finally:
            runner.cancel()
            waiter.cancel()
            await self._teardown()
        req = self._reset_request or (HARD_RESET, None, False)
        return req

    async def _teardown(self) -> None:
        # The board is gone before any firmware cleanup can run: abandon the
        # sockets first so a `finally: sock.close()` cannot send a FIN.
        self.link.abandon_connections()
        if self._wdt_task is not None:
            self._wdt_task.cancel()
            self._wdt_task = None
        self._wdt_timeout_ms = None
        tasks = [t for t in self.tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        self.tasks.clear()
        self.link.release_abandoned()
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

    async def _run_scripts(self) -> None:
        g = greenlet.greenlet(self._scripts_body)
        self._greenlet = g
        msg = g.switch()
        while not g.dead:
            kind, arg = msg
            if kind == "run":
                task = self.create_task(arg)
                self._main_task = task
                try:
                    result = await task
                except asyncio.CancelledError:
                    if self._reset_request is not None or task is asyncio.current_task():
                        raise
                    msg = g.throw(asyncio.CancelledError())
                    continue
                except BaseException as e:  # noqa: BLE001 - handed back to the firmware's stack
                    msg = g.throw(e)
                    continue
                msg = g.switch(result)
            elif kind == "sleep":
                await asyncio.sleep(arg)
                msg = g.switch()
            else:
                raise RuntimeError(f"unknown greenlet request {kind!r}")

    def _scripts_body(self) -> tuple:
        try:
            self.modules.run_script("boot.py")
            self.modules.run_script("main.py")
        except BoardReset:
            return ("done", None)
        except greenlet.GreenletExit:
            raise
        except SystemExit:
            pass
        except BaseException as e:  # noqa: BLE001 - an unhandled firmware exception halts the board
            self.console(format_micropython_exception(e))
            self.log_event("halt", f"unhandled {type(e).__name__}: {e}")
        self.halted = True
        self.console(REPL_BANNER)
        self.console(">>> ")
        return ("done", None)

    # -- called by the fakes ---------------------------------------------------------

    def run_main_coroutine(self, coro):
        g = self._greenlet
        if g is None or greenlet.getcurrent() is not g:
            coro.close()
            raise RuntimeError("asyncio.run() cannot be called from a running event loop")
        return g.parent.switch(("run", coro))

    def blocking_sleep(self, seconds: float, what: str) -> None:
        g = self._greenlet
        if g is not None and greenlet.getcurrent() is g:
            g.parent.switch(("sleep", seconds))
            return
        # Inside a task: on hardware this stalls the board's event loop; here
        # it stalls every board in the process. Say so, then do it.
        msg = f"{what} blocks the event loop; use 'await asyncio.sleep'"
        self.log_event("blocking", msg)
        log.warning("[%s] %s", self.id, msg)
        time.sleep(seconds)

    def create_task(self, coro) -> asyncio.Task:
        t = self.loop.create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self._task_done)
        return t

    def _task_done(self, t: asyncio.Task) -> None:
        self.tasks.discard(t)
        if t.cancelled() or t is self._main_task:
            return
        exc = t.exception()
        if exc is None or isinstance(exc, BoardReset):
            return
        self.report_task_exception({"message": "Task exception wasn't retrieved", "exception": exc, "future": t})

    def report_task_exception(self, context: dict) -> None:
        if self.task_exception_handler is not None:
            self.task_exception_handler(None, context)
            return
        self.console(context.get("message", "Task exception"))
        exc = context.get("exception")
        if exc is not None:
            self.console(format_micropython_exception(exc))

    def request_reset(self, cause: int, sleep_ms: int | None = None, power_loss: bool = False) -> None:
        if self._reset_request is not None:
            return
        self._reset_request = (cause, sleep_ms, power_loss)
        self.log_event("reset", f"cause {cause}" + (f", sleep {sleep_ms} ms" if sleep_ms else ""))
        if self._reset_event is not None:
            self._reset_event.set()

    def arm_watchdog(self, timeout_ms: int) -> None:
        self._wdt_timeout_ms = timeout_ms
        self._wdt_fed = time.monotonic()
        if self._wdt_task is None:
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
        self.loop.call_soon(handler, pin_obj)
        return True

    @property
    def deep_sleep_reset(self) -> bool:
        return self.reset_cause == DEEPSLEEP_RESET
