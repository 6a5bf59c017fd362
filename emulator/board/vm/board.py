"""One board on the real MicroPython interpreter: the host side.

A `VmBoard` owns what survives a reset (the flash directory, NVS, RTC memory
unless power is lost, the environment and its sensor chips, the link proxy)
and runs one `micropython -X heapsize=<heap>` process per boot, its cwd a
copy of the flash directory in which config.json points at the link proxy
(emulator/board/vm/proxy.py). The process's ESP32 modules (emulator/board/vm/shims/)
ask this object for board state over a loopback channel, and the answers
come from the same fakes as the CPython boards' (emulator/board/fakes/: NVS, ADC,
I2C onto emulator/board/sensors.py chips, the WiFi radio, the RTC clock).

Resets: the process never resets itself. `machine.reset()`/`deepsleep()`
ask the host, which abandons the board's connections (no FIN reaches the
broker), kills the process and starts the next boot with the cause. Power
loss and the watchdog do the same; a hang is SIGSTOP (the host's watchdog,
when armed, then resets it). The process's stdout is the console.

It has the surface `BoardHandle`, scenarios and `esp32emu run` use on a CPython
`emulator.board.board.Board` (`start`, `stop`, `power_cycle`, `hard_reset`,
`press_button`, `hang`, `sensor_fault`, `request_reset`, `link`, `ap`,
`events`, `flash_dir`, `fs`), so one board API drives both backends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Callable

from emulator.board.board import Board, BUTTON_PIN
from emulator.board.clock import BoardClock
from emulator.board.environment import Environment
from emulator.board.fakes.dhtfake import DhtModule
from emulator.board.fakes.esp32fake import Esp32Module
from emulator.board.fakes.machinefake import DEEPSLEEP_RESET, HARD_RESET, PWRON_RESET, MachineModule
from emulator.board.fakes.misc import FlashFS, NtptimeModule
from emulator.board.fakes.networkfake import STA_IF, AccessPoint, NetworkModule, Radio
from emulator.board.sensors import wire as wire_sensors
from emulator.board.vm.interpreter import DEFAULT_HEAP, compiled_shims, shim_overhead, deploy_firmware, micropython_command, micropython_executable
from emulator.board.vm.proxy import LinkProxy
from emulator.rng import SmallRandom
from emulator.validation import check_heap, heap_bytes


# Files of the flash directory the VM process does not need a copy of.
_NOT_COPIED = {"config.json"}


class VmBoard:
    backend = "micropython"

    def __init__(
        self,
        device_id: str,
        state_dir: Path,
        *,
        heap: str = DEFAULT_HEAP,
        seed: int = 0,
        index: int = 0,
        console: Callable[[str], None] | None = None,
        config: dict | None = None,
        firmware: Path | None = None,
    ) -> None:
        self.id = device_id
        self.index = index
        self.heap = check_heap(heap)
        self.heap_limit = heap_bytes(heap)
        self.command: list[str] = []  # the last boot's command line, as `micropython ...`
        self.state_dir = Path(state_dir)
        self.flash_dir = self.state_dir / "flash"
        self.flash_dir.mkdir(parents=True, exist_ok=True)
        if config is not None:
            (self.flash_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if firmware is not None:
            deploy_firmware(Path(firmware), self.flash_dir, mpy=True)
        self.run_dir = self.state_dir / "vm-root"  # the process's cwd: flash + the proxy's address
        self.seed = seed
        self.rng = SmallRandom(f"{seed}:{device_id}")
        # The same identity a CPython board of this id and seed has.
        digest = hashlib.sha256(f"{seed}:{device_id}".encode()).digest()
        self.mac = bytes([0x24, 0x0A, 0xC4]) + digest[:3]
        host = index + 2
        self.ip = f"10.42.{(host >> 8) & 0xFF}.{host & 0xFF}"
        self.gateway = "10.42.0.1"
        self.clock = BoardClock()
        self.env = Environment(SmallRandom(f"env:{seed}:{device_id}"))
        self.ap = AccessPoint()
        self.fs = FlashFS(self.flash_dir)
        self.flash = self.fs  # no power cuts at a flash operation here: the VM writes its files itself
        self.link = LinkProxy(device_id, seed, self.log_event)
        self.link.taps.append(lambda direction, data, t: direction == "tx" and self.env.radio_transmit(len(data)))
        self._console = console or (lambda line: None)
        self.console_tail: list[str] = []
        self.events: list[tuple[float, str, str]] = []
        self.nvs: dict[str, dict] = self._load_nvs()
        self.rtc_memory = b""
        self.pins: dict[int, int] = {}
        self.pin_writes: dict[int, int] = {}
        self.pin_irqs: dict[int, bool] = {}
        self.reset_cause = PWRON_RESET
        self.boots = 0
        self.halted = False
        self.hung = False
        self.running = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.radio: Radio | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.base_events.Server | None = None
        self._ctl_port = 0
        self._evt_writer: asyncio.StreamWriter | None = None
        self._reset_request: tuple[int, int | None, bool] | None = None
        self._reset_event: asyncio.Event | None = None
        self._wdt_timeout_ms: int | None = None
        self._wdt_fed = 0.0
        self._wdt_task: asyncio.Task | None = None
        self._run_task: asyncio.Task | None = None
        self._channel_tasks: set[asyncio.Task] = set()
        # The host-side fakes the shims' requests are answered with.
        self._machine = MachineModule(self)
        self._esp32 = Esp32Module(self)
        self._network = NetworkModule(self)
        self._ntptime = NtptimeModule(self)
        self._dht = DhtModule(self)
        self._wlan = None
        self._at_boot: dict[str, tuple[int, int]] = {}

    # What is not about running code is the CPython board's own logic, used
    # on this object (same attribute names): NVS kept in state_dir/nvs.json,
    # reset requests (first wins, power loss beats all), the time between
    # boots (deep sleep, power off; RTC memory lost with power), the
    # watchdog's deadline, installing certificates.
    _nvs_path = Board._nvs_path
    _load_nvs = Board._load_nvs
    save_nvs = Board.save_nvs
    request_reset = Board.request_reset
    _between_boots = Board._between_boots
    arm_watchdog = Board.arm_watchdog
    _watchdog = Board._watchdog
    install_files = Board.install_files

    # -- console and log -----------------------------------------------------------

    _emit = Board._emit
    log_event = Board.log_event

    def console(self, line: str) -> None:
        for part in str(line).split("\n"):
            self._emit(part)

    # -- what the fakes ask of a board ----------------------------------------------

    rssi = Board.rssi

    def i2c_bus(self, bus_id: int):
        return self.env.i2c_bus(bus_id)

    def sensor_fault(self, sensor: str, fault: str):
        from emulator.board.sensors import apply_fault

        return apply_fault(self.env, sensor, fault)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self.loop = asyncio.get_running_loop()
        self._run_task = self.loop.create_task(self.run(), name=f"vm-board:{self.id}")
        return self._run_task

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.running = True
        await self.link.start()
        self._server = await asyncio.start_server(self._channel, "127.0.0.1", 0)
        self._ctl_port = self._server.sockets[0].getsockname()[1]
        cause = PWRON_RESET
        self.clock.power_on()
        try:
            while True:
                request = await self._boot_once(cause)
                cause = await self._between_boots(*request)
        finally:
            self.running = False
            await self._kill()
            self._server.close()
            await self.link.close()

    async def stop(self) -> None:
        """Take the board away for good."""
        if self._run_task is not None and not self._run_task.done():
            self._run_task.cancel()
            try:
                await self._run_task
            except asyncio.CancelledError:
                pass

    def _prepare_root(self) -> None:
        """The process's filesystem: the flash files, config.json pointing at the proxy."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        for p in self.flash_dir.iterdir():
            if p.name in _NOT_COPIED:
                continue
            if p.is_dir():
                shutil.copytree(p, self.run_dir / p.name)
            else:
                shutil.copy2(p, self.run_dir / p.name)
        cfg_path = self.flash_dir / "config.json"
        try:
            text = cfg_path.read_text()
            cfg = json.loads(text)
        except (OSError, ValueError):
            if cfg_path.exists():
                shutil.copy2(cfg_path, self.run_dir / "config.json")  # the firmware says what is wrong
            return
        broker = cfg.get("broker") if isinstance(cfg, dict) else None
        if isinstance(broker, dict) and isinstance(broker.get("port"), int):
            self.link.upstream = (str(broker.get("host", "127.0.0.1")), broker["port"])
            broker["host"], broker["port"] = "127.0.0.1", self.link.port
        (self.run_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        specs = cfg.get("sensors", []) if isinstance(cfg, dict) else []
        try:
            wire_sensors(self.env, specs)
        except Exception:  # noqa: BLE001 - the firmware's validation reports a bad config
            wire_sensors(self.env, [])

    def _snapshot(self) -> dict[str, tuple[int, int]]:
        """Size and mtime of every file and folder in the process's root."""
        out = {}
        for p in self.run_dir.rglob("*"):
            st = p.stat()
            out[p.relative_to(self.run_dir).as_posix()] = (-1, 0) if p.is_dir() else (st.st_size, st.st_mtime_ns)
        return out

    def _keep_writes(self) -> None:
        """What the process changed in its root (its copy of the flash) goes
        to the flash: files it wrote or made, files and folders it removed;
        config.json (the proxy's copy) and what the host changed in the
        flash meanwhile stay. The process writes with plain POSIX calls, so
        a power loss (SIGKILL) can leave a file cut short: harsher than
        littlefs, whose writes only count at close (the CPython boards'
        FlashFS models that)."""
        run, flash, before = self.run_dir, self.flash_dir, self._at_boot
        if not run.is_dir():
            return
        now = self._snapshot()
        for rel in sorted(before, reverse=True):  # children before their folders
            if rel not in now and rel not in _NOT_COPIED:
                target = flash / rel
                if target.is_dir():
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    target.unlink(missing_ok=True)
        for rel in sorted(now):
            if rel in _NOT_COPIED or before.get(rel) == now[rel]:
                continue
            src, dst = run / rel, flash / rel
            if now[rel][0] < 0:
                dst.mkdir(parents=True, exist_ok=True)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)

    async def _boot_once(self, cause: int) -> tuple[int, int | None, bool]:
        self.boots += 1
        self.reset_cause = cause
        self.halted = False
        self.hung = False
        self.pin_irqs.clear()
        self.clock.reboot()
        self._reset_request = None
        self._reset_event = asyncio.Event()
        self.radio = Radio(self)
        self._wlan = self._network.WLAN(STA_IF)
        self._prepare_root()
        self._at_boot = self._snapshot()  # what the process's writes are told apart from
        shims = compiled_shims()
        # The firmware gets `heap`; the shims (C in flash on a board) get theirs on top.
        heapsize = self.heap_limit + shim_overhead(shims)
        args = ["-X", f"heapsize={heapsize}", str(shims / "_vmboot.py"), str(self._ctl_port)]
        self.command = [micropython_executable(), *args]  # what to type to run this boot by hand
        cmd = [*micropython_command(), *args]  # the same interpreter, started leaner (interpreter.py)
        self.log_event("boot", f"boot #{self.boots}, reset cause {cause} (micropython, heap {self.heap})")
        self.proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=self.run_dir, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            # Its own session: Ctrl-C in a terminal (SIGINT to the foreground
            # process group) reaches the emulator, which takes the board
            # offline as planned, not the interpreter (a KeyboardInterrupt
            # there would end main.py and leave a Will instead).
            start_new_session=True,
        )
        reader = self.loop.create_task(self._read_console(self.proc))
        waiter = self.loop.create_task(self._reset_event.wait())
        exited = self.loop.create_task(self.proc.wait())
        try:
            await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
            if not waiter.done():
                # The interpreter itself ended (a crash of the process): the
                # board is stuck until something resets it.
                self.halted = True
                self.log_event("halt", f"micropython exited with {self.proc.returncode}")
                await waiter
        finally:
            waiter.cancel()
            self.link.abandon_connections()
            await self._kill()
            self._keep_writes()
            exited.cancel()
            try:
                await asyncio.wait_for(reader, 2)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                reader.cancel()
            self._teardown()
        return self._reset_request or (HARD_RESET, None, False)

    def _teardown(self) -> None:
        if self._wdt_task is not None:
            self._wdt_task.cancel()
            self._wdt_task = None
        self._wdt_timeout_ms = None
        if self.radio is not None:
            self.radio.close()
        for t in list(self._channel_tasks):
            t.cancel()
        self._evt_writer = None

    async def _kill(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()

    async def _read_console(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                return
            self.console(line.decode("utf-8", "replace").rstrip("\r\n"))

    # -- the channel to the shims ---------------------------------------------------

    async def _channel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._channel_tasks.add(task)
        try:
            kind = (await reader.readline()).strip()
            if kind == b"evt":
                self._evt_writer = writer
                await reader.read()  # until the process goes away
                return
            while True:
                line = await reader.readline()
                if not line:
                    return
                reply = self._answer(line)
                if reply is None:
                    continue  # reset or deep sleep: the process is about to go
                writer.write(reply)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._channel_tasks.discard(task)
            writer.close()

    def _answer(self, line: bytes) -> bytes | None:
        try:
            req = json.loads(line)
            value = self._handle(req[0], req[1:])
            if value is _NO_REPLY:
                return None
            return json.dumps(["ok", value]).encode() + b"\n"
        except OSError as e:
            code = e.errno if e.errno is not None else (e.args[0] if e.args else 5)
            return json.dumps(["err", code]).encode() + b"\n"
        except (ValueError, TypeError, OverflowError) as e:  # the fake refused the call: same type in the VM
            return json.dumps(["exc", type(e).__name__, str(e)]).encode() + b"\n"
        except Exception as e:  # noqa: BLE001 - a host-side bug must not hang the board: say it there
            return json.dumps(["exc", "RuntimeError", f"esp32emu host: {type(e).__name__}: {e}"]).encode() + b"\n"

    def _handle(self, op: str, a: list):
        if op == "hello":
            return [self.reset_cause, self._rtc_delta(), list(self.mac)]
        if op == "feed":
            self.feed_watchdog()
            return None
        if op == "wlan":
            return self._wlan_op(a)
        if op == "nvs":
            return self._nvs_op(a)
        if op == "pin":
            if len(a) == 1:
                return self.pins.get(a[0], 1 if a[0] == BUTTON_PIN else 0)
            self.pins[a[0]] = a[1]
            self.pin_writes[a[0]] = self.pin_writes.get(a[0], 0) + 1
            return None
        if op == "irq":
            self.pin_irqs[a[0]] = bool(a[1])
            return None
        if op == "adc":
            pin, atten, method = a
            return getattr(self._machine.ADC(pin, atten=atten), method)()
        if op == "i2c_read":
            return list(self._machine.I2C(a[0]).readfrom_mem(a[1], a[2], a[3]))
        if op == "i2c_write":
            self._machine.I2C(a[0]).writeto_mem(a[1], a[2], bytes(a[3]))
            return None
        if op == "i2c_scan":
            return self._machine.I2C(a[0]).scan()
        if op == "mcu":
            return self._esp32.mcu_temperature()
        if op == "dht":
            buf = bytearray(5)
            self._dht.dht_readinto(a[0], buf)
            return list(buf)
        if op == "rtc_memory":
            if not a:
                return list(self.rtc_memory)
            self.rtc_memory = bytes(a[0])
            return None
        if op == "rtc_set":
            self.clock.set_rtc(a[0])
            return self._rtc_delta()
        if op == "ntp":
            if a and a[0]:
                self._ntptime.settime()
                return self._rtc_delta()
            return self._ntptime.time()
        if op == "wdt":
            self.arm_watchdog(int(a[0]))
            return None
        if op == "reset":
            self.request_reset(int(a[0]))
            return _NO_REPLY
        if op == "deepsleep":
            self.request_reset(DEEPSLEEP_RESET, sleep_ms=int(a[0]) or None)
            return _NO_REPLY
        if op == "halt":
            self.halted = True
            self.log_event("halt", "main.py ended; the board sits at the REPL")
            return _NO_REPLY
        raise ValueError(f"unknown request {op!r}")

    def _rtc_delta(self) -> float:
        # ESP32-epoch seconds minus the host's unix time (the VM adds its own time.time()).
        return self.clock.rtc_seconds() - time.time()

    def _wlan_op(self, a: list):
        w = self._wlan
        what, rest = a[0], a[1:]
        if what == "active":
            return w.active(*rest) if rest else w.active()
        if what == "connect":
            return w.connect(rest[0], rest[1])
        if what == "disconnect":
            return w.disconnect()
        if what == "isconnected":
            return w.isconnected()
        if what == "status":
            return w.status(*rest)
        if what == "ifconfig":
            return list(w.ifconfig())
        if what == "config":
            return w.config(rest[0])
        raise ValueError(f"unknown WLAN request {what!r}")

    def _nvs_op(self, a: list):
        ns, what, rest = a[0], a[1], a[2:]
        nvs = self._esp32.NVS(ns)
        if what == "open":
            return None
        if what == "get_blob":
            buf = bytearray(rest[1])
            n = nvs.get_blob(rest[0], buf)
            return list(buf[:n])
        if what == "set_blob":
            return nvs.set_blob(rest[0], bytes(rest[1]))
        if what in ("set_i32", "get_i32", "erase_key", "commit"):
            return getattr(nvs, what)(*rest)
        raise ValueError(f"unknown NVS request {what!r}")

    # -- resets, the watchdog -------------------------------------------------------

    def feed_watchdog(self) -> None:
        self._wdt_fed = time.monotonic()

    # -- external controls ----------------------------------------------------------

    def hang(self) -> None:
        """The firmware stops running: the process is frozen (SIGSTOP); its
        sockets stay open and silent. Only the watchdog or a reset recovers."""
        if self.proc is None or self.proc.returncode is not None or self.hung:
            return
        self.hung = True
        self.log_event("hang", "process frozen (SIGSTOP)")
        try:
            os.kill(self.proc.pid, signal.SIGSTOP)
        except ProcessLookupError:
            pass

    def hard_reset(self) -> None:
        self.request_reset(HARD_RESET)

    def power_cycle(self, off_s: float = 0.0) -> None:
        """Power loss: the process is killed, no FIN reaches the broker, RTC
        memory is gone; boots with PWRON_RESET after off_s."""
        self.request_reset(PWRON_RESET, sleep_ms=int(off_s * 1000) or None, power_loss=True)

    def press_button(self, pin: int = BUTTON_PIN) -> bool:
        """Press a button wired to `pin`: the VM's IRQ handler runs if the firmware set one."""
        self.pins[pin] = 0
        w = self._evt_writer
        if not self.pin_irqs.get(pin) or w is None or w.is_closing() or self.hung:
            return False
        w.write(b"%d\n" % pin)
        return True


_NO_REPLY = object()


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when the thread that started it ends
    (Linux PR_SET_PDEATHSIG), so no board outlives a crashed emulator."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001 - not Linux: the channel's EOF still ends the board
        pass
