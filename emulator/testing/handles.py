"""What a firmware test holds: the classes behind the pytest plugin's fixtures.

- `Console`: a board's captured output; `expect("text", timeout)` waits for
  the next line containing it, like pytest-embedded's `dut.expect`.
- `BoardHandle`: one emulated board seen from a test thread — `.config`
  (edit before `boot()`), `.flash` (its files), `.console`, `.link` (fault
  controls), `power_loss()`, `reboot()`, and the scenario files' board
  actions under the same names (`power_cycle`, `reset`, `shutdown`, `hang`,
  `sensor_fault`; `link.blackhole`, `link.heal`, `link.kill_connections`,
  `link.wifi_down`, `link.dns_fail`, `link.partition`, `link(profile=...)`).
  Two backends behind it: `vm=None`/"cpython" (emulator/board/board.py, the
  firmware under CPython with fakes) and "micropython" (emulator/board/vm/, one
  real MicroPython process per board); a fault a backend cannot show
  raises an error naming it.
- `ObserverClient` (from `emulator/observe/recording.py`): a paho-mqtt client that
  records what it receives; `expect(topic, predicate, timeout)` and
  `collect(...)` fail with what was expected, what arrived and when.

Every wait has a deadline and sleeps on a condition, never in a polling
loop. Every control call runs on the emulator's event loop thread
(`Emulator.call`), where the boards live. This module does not import
pytest; `emulator/testing/plugin.py` builds fixtures from it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator, MutableMapping

from emulator.board.board import Board
from emulator.board.fakes.machinefake import PWRON_RESET
from emulator.board.fakes.misc import FlashFS
from emulator.observe.recording import Message, ObserverClient, clock_text
from emulator.run.scenario import BOARD_ACTIONS, apply_board_action
from emulator.testing.harness import Emulator

# A board that "stays off" after power_loss() without off_s: off this long,
# or until power_on()/reset().
_OFF_FOR_GOOD_S = 10**6


BACKENDS = ("cpython", "micropython")


def backend_name(vm: str | None) -> str:
    """The board backend for a `vm=` setting: None or "cpython" (the firmware
    under CPython with fakes) or "micropython" (the real interpreter, emulator/board/vm/)."""
    name = vm or "cpython"
    if name not in BACKENDS:
        raise ValueError(f"unknown vm {vm!r} (known: {', '.join(BACKENDS)})")
    return name


def will_deadline(keepalive: float) -> int:
    """SPEC §4: Mosquitto sends the Will within floor(1.5·KA) + 7 s of the last packet."""
    return int(1.5 * keepalive) + 7


# -- console ------------------------------------------------------------------------


class Console:
    """A board's console lines; `expect` consumes them in order (pexpect-like):
    each match moves the cursor past the matched line."""

    def __init__(self, scale: float = 1.0) -> None:
        self.lines: list[str] = []
        self._times: list[float] = []
        self._cursor = 0
        self._cond = threading.Condition()
        self.scale = scale

    def __call__(self, line: str) -> None:  # the board's console sink (loop thread)
        with self._cond:
            self.lines.append(line)
            self._times.append(time.monotonic())
            self._cond.notify_all()

    def expect(self, text: str, timeout: float = 10.0) -> str:
        """The next line (after the last match) containing `text`; fails with the tail."""
        __tracebackhide__ = True
        limit = timeout * self.scale
        t0 = time.monotonic()
        with self._cond:
            while True:
                for i in range(self._cursor, len(self.lines)):
                    if text in self.lines[i]:
                        self._cursor = i + 1
                        return self.lines[i]
                left = t0 + limit - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"console: no line containing {text!r} within {limit:g} s "
                        f"({len(self.lines) - self._cursor} new line(s) since the last match)\n"
                        + self.tail(20, t0)
                    )
                self._cond.wait(left)

    def tail(self, n: int = 30, t0: float | None = None) -> str:
        with self._cond:
            rows = list(zip(self._times, self.lines))[-n:]
        if not rows:
            return "  (no output)"
        return "\n".join(f"  {clock_text(t, t0) + ' | ' if t0 else ''}{line}" for t, line in rows)

    def __str__(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


# -- a board ----------------------------------------------------------------------------


class Flash(MutableMapping):
    """The board's filesystem root as a mapping of file name -> bytes.
    `.path` is the host directory behind it. A write or delete here tells the
    board's flash to count its used bytes again (its free space is what the
    firmware's `os.statvfs` and the OTA updater see)."""

    def __init__(self, fs: FlashFS) -> None:
        self.path: Path = fs.root
        self._fs = fs

    def _file(self, name: str) -> Path:
        p = (self.path / name.lstrip("/")).resolve()
        if self.path.resolve() not in p.parents:
            raise KeyError(name)
        return p

    def __getitem__(self, name: str) -> bytes:
        try:
            return self._file(name).read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise KeyError(name) from None

    def __setitem__(self, name: str, data: bytes | str) -> None:
        p = self._file(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        self._fs.recount()

    def __delitem__(self, name: str) -> None:
        try:
            self._file(name).unlink()
        except FileNotFoundError:
            raise KeyError(name) from None
        self._fs.recount()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class LinkControls:
    """A board's network faults, named as in scenario files. Each call with a
    `duration` undoes itself after that many seconds."""

    def __init__(self, handle: "BoardHandle") -> None:
        self._h = handle

    def blackhole(self, rx: bool = True, tx: bool = True, duration: float | None = None) -> None:
        """Bytes stop (one way or both), nothing is closed; `rx=True, tx=False` is a dead broker."""
        self._h.apply("blackhole", rx=rx, tx=tx, duration=duration)

    def heal(self) -> None:
        self._h.apply("heal")

    def kill_connections(self, rst: bool = True) -> None:
        """Close the board's connections now (RST, or FIN with rst=False); the broker sees it."""
        self._h.apply("kill_connections", rst=rst)

    def wifi_down(self, duration: float | None = None) -> None:
        """The access point disappears (until `wifi_up()` or `duration`)."""
        self._h.apply("wifi_down", duration=duration)

    def wifi_up(self) -> None:
        self._h.emu.call(self._h.board.ap.set_up, True)

    def dns_fail(self, duration: float | None = None) -> None:
        """Every DNS lookup fails (until `dns_ok()` or `duration`)."""
        self._h.apply("dns_fail", duration=duration)

    def dns_ok(self) -> None:
        self._h.emu.call(setattr, self._h.board.link, "dns_fail", False)

    def partition(self, duration: float | None = None) -> None:
        """The broker is unreachable (both ways) until `heal()` or `duration`."""
        self._h.apply("partition", duration=duration)

    def __call__(self, profile: str | dict) -> None:
        """Switch the link profile, as the scenario action `link`: `board.link(profile="nb-iot")`."""
        self._h.apply("link", profile=profile)

    @property
    def log(self) -> list[str]:
        """The link's fault log (every fault decision, in order)."""
        return [m for _, kind, m in self._h.events() if kind == "link"]


class BoardHandle:
    """One emulated board, driven from the test thread."""

    def __init__(self, emu: Emulator, device_id: str, config: dict, *, seed: int = 0, scale: float = 1.0,
                 certs: Path | None = None, vm: str | None = None, heap: str | None = None) -> None:
        self.emu = emu
        self.id = device_id
        self.console = Console(scale)
        self.backend = backend_name(vm)
        broker = config["broker"]
        overrides = {k: v for k, v in config.items() if k not in ("id", "broker")}
        self.board: Board = emu.add_board(device_id, broker["host"], broker["port"], seed=seed, console=self.console,
                                          start=False, certs=certs, vm=self.backend, heap=heap, **overrides)
        self.config: dict = json.loads(self.board.fs.host_path("/config.json").read_text())
        self.config["broker"] = {**self.config["broker"], **broker}
        self.flash = Flash(self.board.fs)
        self.link = LinkControls(self)
        self.booted = False
        self._t0 = time.monotonic()
        self.last_sent_at: float | None = None  # time.monotonic() of the last byte the board sent
        self.board.link.taps.append(self._tap)

    def _tap(self, direction: str, data: bytes, t: float) -> None:
        if direction == "tx":
            self.last_sent_at = t

    # -- topics and timing

    @property
    def prefix(self) -> str:
        return self.config.get("prefix", "devices")

    def topic(self, suffix: str) -> str:
        """`board.topic("status")` -> `devices/<id>/status`."""
        return f"{self.prefix}/{self.id}/{suffix}"

    @property
    def keepalive(self) -> int:
        return int(self.config.get("keepalive", 30))

    @property
    def will_deadline(self) -> int:
        """Seconds after the last packet by which the broker sends the Will (SPEC §4)."""
        return will_deadline(self.keepalive)

    # -- power

    def _write_config(self) -> None:
        self.flash["config.json"] = json.dumps(self.config, indent=2) + "\n"

    def boot(self) -> "BoardHandle":
        """Write `.config` to the board's `config.json` and power it on."""
        if self.booted:
            raise RuntimeError(f"{self.id} is already booted (use reboot() or power_cycle())")
        self._write_config()
        self.emu.call(self.board.start)
        self.booted = True
        return self

    def reboot(self) -> None:
        """The EN button (hard reset, connections left half-open), with `.config` rewritten first."""
        self._write_config()
        self.apply("reset")

    def power_loss(self, off_s: float | None = None, *, during: str | None = None, after_bytes: int | None = None,
                   after_ops: int | None = None) -> None:
        """Power gone without warning: no FIN, no DISCONNECT, RTC memory lost.
        Stays off for `off_s` seconds, or until `power_on()` when omitted.
        With `during` ("download" or "install", the scenario action
        `power_loss`): not now but at a flash write of the board's next OTA
        update (after `after_bytes`, or the `after_ops`-th operation of the
        install), back on at once."""
        if during is not None:
            self.apply("power_loss", during=during, after_bytes=after_bytes, after_ops=after_ops)
            return
        self.apply("power_cycle", off_s=_OFF_FOR_GOOD_S if off_s is None else off_s)

    def power_on(self) -> None:
        """Power back after `power_loss()`: boots with reset cause power_on."""
        self.emu.call(self.board.request_reset, PWRON_RESET, None, True)

    # -- the scenario files' board actions

    def apply(self, action: str, **params: Any) -> None:
        """Run a scenario board action on this board (`duration`, when given,
        undoes it after that many seconds, as in a scenario file)."""
        if action not in BOARD_ACTIONS:
            raise ValueError(f"unknown board action {action!r} (known: {', '.join(sorted(BOARD_ACTIONS))})")
        duration = params.pop("duration", None)
        params = {k: v for k, v in params.items() if v is not None}

        def go() -> None:
            undo = apply_board_action(action, params, [self.board])
            if undo is not None and duration is not None:
                self.board.loop.call_later(duration, undo)

        self.emu.call(go)

    def power_cycle(self, off_s: float = 0.0) -> None:
        self.apply("power_cycle", off_s=off_s)

    def reset(self) -> None:
        self.apply("reset")

    def shutdown(self) -> None:
        """The BOOT button: the firmware's planned offline and DISCONNECT."""
        self.apply("shutdown")

    def hang(self) -> None:
        """The firmware stops running; only an armed watchdog (or a reset) recovers."""
        self.apply("hang")

    def sensor_fault(self, sensor: str, fault: str, duration: float | None = None) -> None:
        self.apply("sensor_fault", sensor=sensor, fault=fault, duration=duration)

    # -- what happened

    def events(self) -> list[tuple[float, str, str]]:
        return list(self.board.events)

    def report(self, lines: int = 30) -> str:
        """Console tail and fault log, for a failed test's report."""
        t0 = self._t0
        ev = [f"  {clock_text(t, t0)} {kind}: {msg}" for t, kind, msg in self.events()
              if kind in ("link", "power", "reset", "boot", "halt", "hang", "wdt")][-lines:]
        return (f"console (last {lines} lines):\n{self.console.tail(lines, t0)}\n"
                f"link and power log (s since the board was made):\n" + ("\n".join(ev) or "  (nothing)"))

    def __repr__(self) -> str:
        return f"<BoardHandle {self.id} {self.backend} {'booted' if self.booted else 'not booted'}>"


__all__ = ["BACKENDS", "BoardHandle", "backend_name", "Console", "Flash", "LinkControls", "Message", "ObserverClient", "will_deadline"]
