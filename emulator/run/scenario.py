"""Scenario files: a TOML timeline of faults aimed at boards and the broker.

    seed = 7                         # optional: seeds selections

    [groups]                         # optional named groups of boards
    east = ["dev-00001", "dev-00002"]
    half = "fraction:0.5"

    [[event]]
    at = 5                           # seconds after the fleet starts
    target = "broker"                # the broker...
    action = "kill"                  # kill | stop | start | restart | pause | resume

    [[event]]
    at = 8
    select = "group:east"            # ...or boards: all | fraction:F | first:N | ids:a,b | group:NAME
    action = "blackhole"             # see BOARD_ACTIONS
    duration = 10                    # undone after 10 s (blackhole, wifi_down, dns_fail, partition, hang...)

    [[event]]
    at = 20
    action = "sensor_fault"          # a sensor misbehaves (emulator/board/sensors.py FAULTS)
    sensor = "bme280"                # bme280 | dht22
    fault = "missing"                # bme280: stuck | spike | missing | bus_errors;
                                     # dht22: spike | bus_errors | unplugged
    duration = 30                    # cleared after 30 s (without: until the run ends)

    [[event]]                        # OTA faults (issue 18)
    at = 0
    select = "fraction:0.05"
    action = "power_loss"            # armed now, cut at a flash write of the next update:
    during = "download"              # download: after `after_bytes` staged bytes (default: drawn in 1..16384)
                                     # install: at the `after_ops`-th flash operation once the
                                     # journal ota.json says "install" (default: drawn in 1..8)

    [[event]]
    at = 0
    target = "release"               # the release server beside the run (tests, bench/ota_rollout.py)
    action = "drop"                  # drop | corrupt | rate | clear
    files = "*.py"                   # fnmatch on the served path (default every file under files/)
    after = 2000                     # drop: bytes of the file's body; corrupt: offset; rate: bytes/s
    times = 3                        # how many responses (default 1; 0: every one)

Parsing is strict: an unknown key, action or selector is an error that
names the line. Running is separate (`Timeline.run`) and logs every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from emulator.run.otafaults import arm_power_loss, check_power_loss, parse_release_event, release_action
from emulator.validation import UsageError

log = logging.getLogger("esp32emu.scenario")

BROKER_ACTIONS = {"kill", "stop", "start", "restart", "pause", "resume"}

# action -> (allowed keys besides at/select/action, whether `duration` undoes it)
BOARD_ACTIONS: dict[str, set[str]] = {
    "power_cycle": {"off_s"},  # power loss: no FIN, boots after off_s
    "reset": set(),  # EN button: hard reset, connections left half-open
    "shutdown": set(),  # BOOT button: planned offline
    "hang": {"duration"},  # firmware stops running; an armed WDT resets the board
    "blackhole": {"rx", "tx", "duration"},  # bytes stop (one way or both), no FIN
    "heal": set(),
    "kill_connections": {"rst"},  # RST (default) or FIN
    "wifi_down": {"duration"},  # the access point disappears
    "dns_fail": {"duration"},
    "link": {"profile"},  # switch link profile (wifi-good, nb-iot, ...)
    "partition": {"duration"},  # the selected boards lose the broker together
    "sensor_fault": {"sensor", "fault", "duration"},  # telemetry shows it in "err"
    "power_loss": {"during", "after_bytes", "after_ops"},  # power cut at a flash write of the next OTA update
}
COMMON_KEYS = {"at", "select", "action", "target"}
MAX_SECONDS = 366 * 86400  # bound for at, duration and off_s: a year (asyncio cannot sleep 1e300 s)


class ScenarioError(ValueError):
    """A bad scenario file; the message names the file and line."""


class ScenarioRunError(RuntimeError):
    """An event failed while the scenario ran; the message names the file and line."""


@dataclass
class Event:
    at: float
    action: str
    line: int
    target: str = "boards"
    select: str = "all"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scenario:
    path: Path
    events: list[Event]
    groups: dict[str, Any]
    seed: int = 0

    @property
    def uses_broker(self) -> bool:
        return any(e.target == "broker" for e in self.events)

    @property
    def uses_release(self) -> bool:
        return any(e.target == "release" for e in self.events)


def _event_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*event\s*\]\]", line)]


def _key_line(text: str, start: int, key: str) -> int:
    """Line of `key = ...` in the table that starts at line `start` (1-based)."""
    lines = text.splitlines()
    for i in range(start, len(lines)):  # lines[start] is the line after the header
        if re.match(r"\s*\[", lines[i]):
            break
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            return i + 1
    return max(start, 1)


def _table_line(text: str, name: str) -> int:
    for i, line in enumerate(text.splitlines()):
        if re.match(rf"\s*\[\s*{re.escape(name)}\s*\]", line):
            return i + 1
    return 0


def load(path: Path | str) -> Scenario:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ScenarioError(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from None
    return parse(raw, text, path)


def parse(raw: dict, text: str, path: Path) -> Scenario:
    def bad(line: int, msg: str) -> ScenarioError:
        return ScenarioError(f"{path}:{line}: {msg}")

    unknown = set(raw) - {"seed", "groups", "event"}
    if unknown:
        key = sorted(unknown)[0]
        raise bad(_key_line(text, 0, key), f"unknown top-level key {key!r} (known: seed, groups, event)")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise bad(_key_line(text, 0, "seed"), "seed must be an integer")
    groups = raw.get("groups", {})
    if not isinstance(groups, dict):
        raise bad(_key_line(text, 0, "groups"), "[groups] must be a table")
    _check_groups(groups, lambda name, msg: bad(_key_line(text, _table_line(text, "groups"), name), msg))
    events_raw = raw.get("event", [])
    if not isinstance(events_raw, list) or not events_raw:
        raise bad(1, "no [[event]] tables: a scenario needs at least one event")
    lines = _event_lines(text)
    events = []
    for i, ev in enumerate(events_raw):
        line = lines[i] if i < len(lines) else _key_line(text, 0, "event")
        if not isinstance(ev, dict):
            raise bad(line, f"event {i + 1} must be a table ([[event]] or {{...}}), got {ev!r}")
        events.append(_parse_event(ev, line, text, bad, groups))
    events.sort(key=lambda e: e.at)
    return Scenario(path, events, groups, seed)


def _parse_event(ev: dict, line: int, text: str, bad, groups: dict) -> Event:
    def where(key: str) -> int:
        return _key_line(text, line, key)

    action = ev.get("action")
    if not isinstance(action, str):
        raise bad(line, "event has no action")
    at = ev.get("at")
    if not _is_seconds(at, zero=True):
        raise bad(where("at") if "at" in ev else line, f"'at' must be a number of seconds 0..{MAX_SECONDS}, got {at!r}")
    target = ev.get("target", "boards")
    if target == "broker":
        if action not in BROKER_ACTIONS:
            raise bad(where("action"), f"unknown broker action {action!r} (known: {', '.join(sorted(BROKER_ACTIONS))})")
        extra = set(ev) - COMMON_KEYS
        if extra:
            raise bad(where(sorted(extra)[0]), f"broker events take no {sorted(extra)[0]!r}")
        return Event(float(at), action, line, target="broker")
    if target == "release":
        params = parse_release_event(ev, action, line, where, bad, COMMON_KEYS)
        return Event(float(at), action, line, target="release", params=params)
    if target != "boards":
        raise bad(where("target"), f"target must be 'broker', 'boards' or 'release', got {target!r}")
    allowed = BOARD_ACTIONS.get(action)
    if allowed is None:
        raise bad(where("action"), f"unknown board action {action!r} (known: {', '.join(sorted(BOARD_ACTIONS))})")
    extra = set(ev) - COMMON_KEYS - allowed
    if extra:
        key = sorted(extra)[0]
        raise bad(where(key), f"action {action!r} takes no {key!r} (takes: {', '.join(sorted(allowed)) or 'nothing'})")
    select = ev.get("select", "all")
    if not isinstance(select, str):
        raise bad(where("select"), "select must be a string")
    _check_selector(select, groups, lambda msg: bad(where("select"), msg))
    params = {k: v for k, v in ev.items() if k in allowed}
    for key in ("duration", "off_s"):
        if key in params and not _is_seconds(params[key], zero=False):
            raise bad(where(key), f"{key!r} must be a positive number of seconds (at most {MAX_SECONDS}), got {params[key]!r}")
    for key in ("rx", "tx", "rst"):
        if key in params and not isinstance(params[key], bool):
            raise bad(where(key), f"{key!r} must be true or false")
    if action == "link":
        from emulator.net.profiles import make_profile

        if not isinstance(params.get("profile"), (str, dict)):
            raise bad(where("profile") if "profile" in ev else line, "action 'link' needs profile = \"name\"")
        try:
            make_profile(params["profile"])
        except (ValueError, TypeError) as e:
            raise bad(where("profile"), str(e)) from None
    if action == "sensor_fault":
        from emulator.board.sensors import FAULTS

        sensor, fault = params.get("sensor"), params.get("fault")
        if not isinstance(sensor, str) or sensor not in FAULTS:
            raise bad(where("sensor") if "sensor" in ev else line, f"sensor_fault needs sensor = one of {', '.join(sorted(FAULTS))}")
        if fault not in FAULTS[sensor]:
            raise bad(where("fault") if "fault" in ev else line, f"{sensor} faults are {', '.join(FAULTS[sensor])}, got {fault!r}")
    if action == "power_loss":
        check_power_loss(params, ev, line, where, bad)
    return Event(float(at), action, line, select=select, params=params)


def _is_seconds(value: Any, zero: bool) -> TypeGuard[float]:
    """A finite int or float in (0 or >0)..MAX_SECONDS (bool is not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value >= 0 if zero else value > 0) and value <= MAX_SECONDS


def _check_groups(groups: dict, fail) -> None:
    """Every group is a list of device ids or a selector string; a group that
    names a group must end at boards (no cycle, no self-reference)."""
    from emulator.validation import device_id_error

    for name, spec in groups.items():
        if isinstance(spec, list):
            for x in spec:
                why = device_id_error(x)
                if why is not None:
                    raise fail(name, f"group {name!r}: {why}")
        elif isinstance(spec, str):
            _check_selector(spec, groups, lambda msg, name=name: fail(name, f"group {name!r}: {msg}"))
        else:
            raise fail(name, f"group {name!r} must be a list of ids or a selector string")
    for name in groups:
        seen = [name]
        spec = groups[name]
        while isinstance(spec, str) and spec.startswith("group:"):
            nxt = spec.partition(":")[2]
            if nxt in seen:
                raise fail(name, f"group {name!r} refers to itself: {' -> '.join(seen + [nxt])}")
            seen.append(nxt)
            spec = groups[nxt]


def _check_selector(select: str, groups: dict, fail) -> None:
    kind, _, arg = select.partition(":")
    if kind == "all" and not arg:
        return
    if kind == "fraction":
        try:
            f = float(arg)
        except ValueError:
            raise fail(f"fraction needs a number, got {arg!r}") from None
        if not 0 < f <= 1:
            raise fail(f"fraction must be in (0, 1], got {f}")
        return
    if kind == "first":
        if not re.fullmatch(r"[0-9]+", arg) or int(arg) < 1:
            raise fail(f"first needs a positive count, got {arg!r}")
        return
    if kind == "ids":
        from emulator.validation import device_id_error

        ids = [x.strip() for x in arg.split(",") if x.strip()]
        if not ids:
            raise fail("ids needs at least one id")
        for x in ids:
            why = device_id_error(x)
            if why is not None:
                raise fail(f"ids: {why}")
        return
    if kind == "group":
        if arg not in groups:
            raise fail(f"unknown group {arg!r} (defined: {', '.join(sorted(groups)) or 'none'})")
        return
    raise fail(f"bad selector {select!r} (all | fraction:F | first:N | ids:a,b | group:NAME)")


def check_backend(scenario: Scenario, backend: str) -> None:
    """ScenarioError naming the first board event the backend cannot do
    ("cpython" does them all; "micropython": see emulator.board.vm.proxy.unsupported_action)."""
    if backend != "micropython":
        return
    from emulator.board.vm.proxy import unsupported_action

    for ev in scenario.events:
        if ev.target != "boards":
            continue
        why = unsupported_action(ev.action, ev.params)
        if ev.action == "power_loss":
            why = "the VM writes its files itself: no flash operation to cut power at (use power_cycle at a moment)"
        if why is not None:
            raise ScenarioError(f"{scenario.path}:{ev.line}: action {ev.action!r} is not supported on the {backend} backend: {why}")


def select_boards(select: str, boards: list, groups: dict, rng: random.Random) -> list:
    kind, _, arg = select.partition(":")
    if kind == "all":
        return list(boards)
    if kind == "fraction":
        n = max(1, round(float(arg) * len(boards)))
        return rng.sample(list(boards), min(n, len(boards)))
    if kind == "first":
        return list(boards)[: int(arg)]
    if kind == "ids":
        want = {x.strip() for x in arg.split(",")}
        return [b for b in boards if b.id in want]
    if kind == "group":
        spec = groups[arg]
        if isinstance(spec, str):
            return select_boards(spec, boards, groups, rng)
        want = set(spec)
        return [b for b in boards if b.id in want]
    raise ValueError(select)


class Timeline:
    """Runs a scenario's events against boards and (optionally) a Broker."""

    def __init__(self, scenario: Scenario, boards: list, broker=None, release=None):
        """`release`: the release server beside the run (emulator/ota/serve.py ReleaseServer: its `faults`)."""
        if scenario.uses_broker and broker is None:
            raise ScenarioError(f"{scenario.path}: broker events need the private broker (omit --broker)")
        if scenario.uses_release and release is None:
            raise ScenarioError(f"{scenario.path}: release events need a release server run beside the boards "
                                f"(bench/ota_rollout.py, tests; or `esp32emu release serve --drop-after/--corrupt-at/--rate`)")
        self.scenario = scenario
        self.boards = boards
        self.broker = broker
        self.release = release
        self.rng = random.Random(scenario.seed)
        self.log: list[tuple[float, str]] = []

    def _note(self, t0: float, msg: str) -> None:
        self.log.append((time.monotonic() - t0, msg))
        log.info("scenario +%.1fs: %s", time.monotonic() - t0, msg)

    async def run(self) -> None:
        t0 = time.monotonic()
        undo: list[asyncio.Task] = []
        try:
            for ev in self.scenario.events:
                delay = t0 + ev.at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if ev.target == "broker":
                    self._note(t0, f"broker {ev.action} (line {ev.line})")
                    with self._failing(ev):
                        await asyncio.to_thread(self._broker_action, ev.action)
                    continue
                if ev.target == "release":
                    self._note(t0, f"release {ev.action} {ev.params} (line {ev.line})")
                    with self._failing(ev):
                        release_action(self.release.faults, ev.action, ev.params)
                    continue
                with self._failing(ev):
                    chosen = select_boards(ev.select, self.boards, self.scenario.groups, self.rng)
                    self._note(t0, f"{ev.action} {ev.params or ''} on {len(chosen)} board(s) [{ev.select}] (line {ev.line})")
                    undo_fn = apply_board_action(ev.action, ev.params, chosen, self.rng)
                if undo_fn is not None and "duration" in ev.params:
                    undo.append(asyncio.create_task(self._later(ev.params["duration"], undo_fn, t0, ev)))
            if undo:
                await asyncio.gather(*undo)
        finally:
            for t in undo:
                t.cancel()

    async def _later(self, seconds: float, fn, t0: float, ev: Event) -> None:
        await asyncio.sleep(seconds)
        self._note(t0, f"end of {ev.action} (line {ev.line})")
        with self._failing(ev, "undoing "):
            fn()

    @contextlib.contextmanager
    def _failing(self, ev: Event, doing: str = ""):
        """An event that raises stops the timeline with ScenarioRunError naming its line."""
        try:
            yield
        except Exception as e:
            raise ScenarioRunError(
                f"{self.scenario.path}:{ev.line}: scenario stopped: {doing}{ev.action} failed: {type(e).__name__}: {e}"
            ) from e

    def _broker_action(self, action: str) -> None:
        b = self.broker
        if action == "kill":
            b.kill()
        elif action == "stop":
            b.stop()
        elif action == "start":
            b.start()
        elif action == "restart":
            b.restart(graceful=True)
        elif action == "pause":
            b.pause()
        elif action == "resume":
            b.resume()


def apply_board_action(action: str, params: dict, boards: list, rng: random.Random | None = None):
    """Do `action` to `boards`; return a function that undoes it (or None)."""
    if action == "power_loss":
        for b in boards:
            arm_power_loss(b, params["during"], params.get("after_bytes"), params.get("after_ops"), rng)
        return None
    if action == "power_cycle":
        for b in boards:
            b.power_cycle(params.get("off_s", 0.0))
        return None
    if action == "reset":
        for b in boards:
            b.hard_reset()
        return None
    if action == "shutdown":
        for b in boards:
            b.press_button()
        return None
    if action == "hang":
        for b in boards:
            b.hang()
        return None
    if action == "kill_connections":
        for b in boards:
            b.link.kill_connections(params.get("rst", True))
        return None
    if action == "link":
        for b in boards:
            b.link.set_profile(params["profile"])
        return None
    if action in ("blackhole", "partition"):
        rx, tx = params.get("rx", True), params.get("tx", True)
        for b in boards:
            b.link.blackhole(rx=rx, tx=tx)

        def heal() -> None:
            for b in boards:
                b.link.heal()

        return heal
    if action == "heal":
        for b in boards:
            b.link.heal()
        return None
    if action == "wifi_down":
        # Every board has its own view of the access point.
        for b in boards:
            b.ap.set_up(False)

        def back() -> None:
            for b in boards:
                b.ap.set_up(True)

        return back
    if action == "sensor_fault":
        undos = [b.sensor_fault(params["sensor"], params["fault"]) for b in boards]

        def clear() -> None:
            for u in undos:
                u()

        return clear
    if action == "dns_fail":
        for b in boards:
            b.link.dns_fail = True

        def undo() -> None:
            for b in boards:
                b.link.dns_fail = False

        return undo
    raise ValueError(action)


def load_scenario(path: Path, private_broker: bool, backend: str = "cpython", release_server: bool = False) -> Scenario:
    """Parse a scenario file up front: a bad one, or one with a board action
    the board backend cannot do, is a usage error naming the line."""
    try:
        scenario = load(path)
        check_backend(scenario, backend)
    except ScenarioError as e:
        raise UsageError(str(e)) from None
    if scenario.uses_broker and not private_broker:
        raise UsageError(f"{path}: broker events need the private broker (omit --broker)")
    if scenario.uses_release and not release_server:
        line = next(e.line for e in scenario.events if e.target == "release")
        raise UsageError(f"{path}:{line}: release events need a release server run beside the boards (bench/ota_rollout.py, "
                         f"tests); here use `esp32emu release serve --drop-after/--corrupt-at/--rate`")
    return scenario
