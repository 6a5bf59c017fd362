"""What issue 15 made cheaper keeps behaving the same: a fleet on uvloop and
on the standard library's loop ($ESP32EMU_LOOP), the lean Event the boards'
firmware and links use, the fake classes shared by every board, and (round
3) sleeps that share loop timers, the shared ticks_ms and an observer without
a reference cycle per message."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emulator.board.fakes import BoundClass
from emulator.board.fakes.machinefake import MachineModule, Pin
from emulator.fleet.workers import loop_name, run_loop, worker_cpus
from emulator.net.event import Event

ESP32EMU = [sys.executable, "-m", "emulator"]
REPO = Path(__file__).resolve().parent.parent


def test_the_loop_is_uvloop_by_default_and_the_environment_picks_either(monkeypatch):
    pytest.importorskip("uvloop")
    monkeypatch.delenv("ESP32EMU_LOOP", raising=False)
    assert loop_name() == "uvloop"
    monkeypatch.setenv("ESP32EMU_LOOP", "asyncio")
    assert loop_name() == "asyncio"
    assert run_loop(_loop_type()) == "_UnixSelectorEventLoop"
    monkeypatch.setenv("ESP32EMU_LOOP", "UVLOOP")
    assert loop_name() == "uvloop"
    assert run_loop(_loop_type()) == "Loop"  # uvloop.Loop
    monkeypatch.setenv("ESP32EMU_LOOP", "trio")
    with pytest.raises(ValueError, match="ESP32EMU_LOOP='trio'"):
        loop_name()


async def _loop_type() -> str:
    return type(asyncio.get_running_loop()).__name__


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_fleet_runs_the_same_on_either_loop(tmp_path, broker, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    report = tmp_path / "r.json"
    r = subprocess.run(
        ESP32EMU
        + ["--state", str(tmp_path / "s"), "fleet", "--devices", "4", "--workers", "2", "--broker", broker.url]
        + ["--interval", "1", "--keepalive", "5", "--duration", "5", "--report", str(report), "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), "ESP32EMU_LOOP": loop},
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    assert data["loop"] == loop
    assert data["online_at_end"] == 4 and data["telemetry_lost"] == 0 and data["telemetry_received"] >= 4 * 2
    assert data["commands_ok"] == data["commands_sent"] > 0
    steady = data["steady"]
    assert steady is not None and steady["boards_cpu_s_per_1000_msgs"] is not None
    assert 0 < steady["boards_cpu_s_per_1000_msgs"] <= steady["cpu_s_per_1000_msgs"]
    # each group's RSS before its boards, next to its RSS: the workers' share of rss_per_board_kb
    assert all(0 < g["rss_base_mb"] < g["rss_mb"] for g in data["groups"]) and len(data["groups"]) == 2
    # each worker pinned to a CPU of its own (as the worker itself sees its affinity), where there are two
    pinned = worker_cpus(2)
    want = [[c] for c in pinned] if pinned else [sorted(os.sched_getaffinity(0))] * 2
    assert [g["cpus"] for g in data["groups"]] == want


def test_workers_are_pinned_one_per_cpu_unless_told_not_to(monkeypatch):
    monkeypatch.delenv("ESP32EMU_PIN", raising=False)
    cpus = sorted(os.sched_getaffinity(0))
    assert worker_cpus(1) is None and worker_cpus(len(cpus) + 1) is None
    if len(cpus) >= 2:
        assert worker_cpus(2) == [cpus[0], cpus[len(cpus) // 2]]
        assert worker_cpus(len(cpus)) == cpus
    monkeypatch.setenv("ESP32EMU_PIN", "0")
    assert worker_cpus(2) is None
    monkeypatch.setenv("ESP32EMU_PIN", "yes")
    with pytest.raises(ValueError, match="ESP32EMU_PIN='yes'"):
        worker_cpus(2)


@pytest.mark.parametrize("var,value", [("ESP32EMU_LOOP", "trio"), ("ESP32EMU_PIN", "yes")])
def test_an_unknown_loop_or_pinning_is_a_one_line_usage_error(tmp_path, var, value):
    r = subprocess.run(
        ESP32EMU + ["--state", str(tmp_path), "fleet", "--devices", "1", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO), var: value},
    )
    assert r.returncode == 2, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and var in lines[0], r.stderr


def test_event_wakes_every_waiter_and_forgets_a_cancelled_one():
    async def main():
        ev = Event()
        assert not ev.is_set()
        waiters = [asyncio.create_task(ev.wait()) for _ in range(3)]
        gone = asyncio.create_task(ev.wait())
        await asyncio.sleep(0)
        assert len(ev._waiters) == 4
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert len(ev._waiters) == 3  # a cancelled wait leaves nothing behind
        ev.set()
        assert await asyncio.gather(*waiters) == [True, True, True]
        assert ev.is_set() and ev._waiters is None
        assert await ev.wait() is True  # set: returns at once
        ev.clear()
        late = asyncio.create_task(ev.wait())
        await asyncio.sleep(0)
        assert not late.done()
        ev.set()
        ev.set()  # twice: harmless
        assert await late is True

    asyncio.run(main())


def test_event_set_before_a_cancelled_waiter_resumes_keeps_the_others():
    async def main():
        ev = Event()
        a = asyncio.create_task(ev.wait())
        b = asyncio.create_task(ev.wait())
        await asyncio.sleep(0)
        a.cancel()
        ev.set()  # b's future is resolved, a's was cancelled
        results = await asyncio.gather(a, b, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError) and results[1] is True

    asyncio.run(main())


def test_event_future_is_done_once_set():
    async def main():
        ev = Event()
        fut = ev.future()
        assert not fut.done()
        ev.set()
        assert fut.done() and fut.result() is True
        assert ev.future().result() is True  # already set: done at once
        ev.clear()
        gone = ev.future()
        gone.cancel()
        ev.set()  # a cancelled one is skipped
        assert gone.cancelled()

    asyncio.run(main())


class _Board:
    def __init__(self):
        self.pins: dict[int, int] = {}
        self.pin_writes: dict[int, int] = {}
        self.pin_irqs: dict = {}


def test_a_shared_fake_class_is_bound_to_each_board():
    a, b = _Board(), _Board()
    ma, mb = MachineModule(a), MachineModule(b)
    assert isinstance(ma.Pin, BoundClass) and ma.Pin is ma.Pin  # made once a board
    pa, pb = ma.Pin(2, ma.Pin.OUT), mb.Pin(2, mb.Pin.OUT)
    pa.on()
    assert a.pins == {2: 1} and b.pins == {} and pb.value() == 0
    assert isinstance(pa, ma.Pin) and isinstance(pa, mb.Pin) and isinstance(pa, Pin)
    assert not isinstance(object(), ma.Pin)
    assert ma.Pin.IRQ_FALLING == 2 and ma.Pin.__name__ == "Pin" and repr(ma.Pin) == "<class 'Pin'>"
    with pytest.raises(ValueError, match="invalid pin"):
        ma.Pin(40)
    with pytest.raises(AttributeError):
        ma.NoSuchPeripheral  # noqa: B018


# -- round 2: what a board keeps and what a message costs ------------------------------


def test_a_board_keeps_its_attributes_in_slots_and_still_takes_new_ones(tmp_path):
    from emulator.board.board import Board
    from emulator.board.loader import FirmwareImage

    board = Board("dev-00001", FirmwareImage(), tmp_path)
    assert board.__dict__ == {}, f"attributes outside Board.__slots__ (each board pays a dict): {sorted(board.__dict__)}"
    board.console_lines = []  # a test or tool may still hang its own things on a board
    assert board.__dict__ == {"console_lines": []}


def test_a_shared_module_keeps_what_is_the_same_on_every_board_and_asks_for_the_rest(tmp_path):
    from emulator.board.loader import BoardModules, FirmwareImage, ModuleProxy

    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "dev.py").write_text("import machine\n\ndef where():\n    return machine.label, machine.same(), machine.shape\n")
    img = FirmwareImage(fw)
    assert "dev" in img.shareable

    class Hw:
        SHARED = frozenset({"same"})
        shape = "per board"  # not named in SHARED: looked up on each board, even though equal

        def __init__(self, label):
            self.label = label

        @staticmethod
        def same():
            return "shared"

    boards = []
    for label in "AB":
        (tmp_path / label).mkdir()
        boards.append(BoardModules(img, tmp_path / label, {"machine": lambda label=label: Hw(label)}, print, open))
    a, b = boards
    dev = a.context.run(a.load, "dev")
    assert b.context.run(b.load, "dev") is dev
    assert a.context.run(dev.where) == ("A", "shared", "per board")
    assert b.context.run(dev.where) == ("B", "shared", "per board")
    proxy = dev.machine
    assert isinstance(proxy, ModuleProxy)
    assert set(vars(proxy)) == {"_name", "same"}, "only SHARED names are kept on the proxy"
    b.modules["machine"].label = "B2"  # a per-board value is read afresh each time
    assert b.context.run(dev.where)[0] == "B2"


def test_the_real_fakes_only_call_shared_what_is_one_object_on_every_board():
    from emulator.board.fakes.asynciofake import AsyncioModule
    from emulator.board.fakes.timefake import TimeModule

    a, b = _Board(), _Board()
    a.clock = b.clock = None
    for cls in (AsyncioModule, TimeModule):
        ma, mb = cls(a), cls(b)
        for name in cls.SHARED:
            assert getattr(ma, name) is getattr(mb, name), f"{cls.__name__}.{name} differs between boards"
    assert "create_task" not in AsyncioModule.SHARED and "ticks_us" not in TimeModule.SHARED


def test_wait_for_ms_arms_no_timer_for_work_that_never_waits_and_keeps_its_deadline_otherwise():
    from emulator.board.fakes.asynciofake import AsyncioModule

    wait_for_ms = AsyncioModule.wait_for_ms
    trail: list[str] = []

    async def at_once(x):
        return x * 2

    async def later(x):
        await asyncio.sleep(0.01)
        return x + 1

    async def forever():
        try:
            await asyncio.sleep(3600)
        finally:
            trail.append("forever cleaned up")

    async def fails_later():
        await asyncio.sleep(0)
        raise KeyError("inner")

    async def main():
        loop = asyncio.get_running_loop()
        assert await wait_for_ms(at_once(21), 1000) == 42
        assert not loop._scheduled, "no deadline timer for a call that never waited"
        assert await wait_for_ms(later(1), 1000) == 2
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await wait_for_ms(forever(), 50)
        assert 0.04 <= loop.time() - t0 < 2 and trail == ["forever cleaned up"]
        with pytest.raises(KeyError, match="inner"):
            await wait_for_ms(fails_later(), 1000)
        # cancelling the waiting task cancels the awaited coroutine (not a timeout)
        task = asyncio.ensure_future(wait_for_ms(forever(), 10_000))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert trail == ["forever cleaned up"] * 2
        # an Event's wait (the client's serve loop) times out and is woken the same
        ev = Event()
        with pytest.raises(asyncio.TimeoutError):
            await wait_for_ms(ev.wait(), 20)
        loop.call_later(0.01, ev.set)
        assert await wait_for_ms(ev.wait(), 1000) is True
        assert ev._waiters is None, "no waiter left behind"

    asyncio.run(main())


@pytest.mark.parametrize("seed", range(4))
def test_the_bme280_raw_words_solved_in_closed_form_are_the_bisections(seed):
    from emulator.board import sensors as S
    from emulator.rng import SmallRandom

    rng = SmallRandom(seed)
    for i in range(150):
        cal_t = tuple(v + rng.randint(-d, d) for v, d in zip(S._CAL_T, (300, 300, 50)))
        cal_p = tuple(v + rng.randint(-d, d) for v, d in zip(S._CAL_P, (400, 200, 100, 300, 20, 1, 100, 200, 100)))
        cal_h = tuple(v + rng.randint(-d, d) for v, d in zip(S._CAL_H, (5, 20, 0, 20, 5, 3)))
        t, p = rng.uniform(-40, 85), rng.uniform(300, 1100)
        h = (0.0, 100.0)[i % 2] if i % 7 == 0 else rng.uniform(0, 100)
        adc_t = S._invert_by_bisection(lambda a: S.float_t(a, cal_t)[0], t, 20, True)
        t_fine = S.float_t(adc_t, cal_t)[1]
        adc_p = S._invert_by_bisection(lambda a: S.float_p(a, t_fine, cal_p), p * 100, 20, False)
        adc_h = S._invert_by_bisection(lambda a: S.float_h(a, t_fine, cal_h), h, 16, True)
        assert S.raw_words(t, p, h, cal_t, cal_p, cal_h) == (adc_t, adc_p, adc_h)
        # the closed form alone lands on the answer or next to it (the search then costs 2 evaluations)
        assert abs(S._guess_t(t, cal_t, None) - adc_t) <= 1
        assert abs(S._guess_p(p * 100, t_fine, cal_p, None) - adc_p) <= 1
        if 0 < h < 100:
            assert abs(S._guess_h(h, t_fine, cal_h, None) - adc_h) <= 1


def test_a_hint_on_or_next_to_the_answer_costs_two_evaluations_and_gives_the_bisections():
    from emulator.board import sensors as S
    from emulator.rng import SmallRandom

    rng = SmallRandom(11)
    calls = [0]

    def counted(fn):
        def f(a):
            calls[0] += 1
            return fn(a)

        return f

    cal_t, cal_p, cal_h = S._CAL_T, S._CAL_P, S._CAL_H
    for _ in range(200):
        t, p, h = rng.uniform(-40, 85), rng.uniform(300, 1100) * 100, rng.uniform(0, 100)
        t_fine = S.float_t(S._invert_by_bisection(lambda a: S.float_t(a, cal_t)[0], t, 20, True), cal_t)[1]
        for fn, target, bits, rising in (
            (lambda a: S.float_t(a, cal_t)[0], t, 20, True),
            (lambda a: S.float_p(a, t_fine, cal_p), p, 20, False),
            (lambda a: S.float_h(a, t_fine, cal_h), h, 16, True),
        ):
            want = S._invert_by_bisection(fn, target, bits, rising)
            lo = want + 1 if (fn(want) < target) == rising else want  # the first word not below the target
            for hint in (want - 2, want - 1, want, want + 1, want + 2):
                calls[0] = 0
                assert S._invert(counted(fn), target, bits, rising, hint) == want
                if lo - 1 <= hint <= lo:  # on the answer or next to it
                    assert calls[0] == 2, (hint, want, calls[0])
    # the ends of the range, from either side
    fn = lambda a: S.float_t(a, cal_t)[0]  # noqa: E731
    for target in (-1e9, 1e9):
        want = S._invert_by_bisection(fn, target, 20, True)
        for hint in (0, 1, (1 << 20) - 2, (1 << 20) - 1):
            assert S._invert(fn, target, 20, True, hint) == want


def test_the_air_at_one_instant_is_what_the_three_readings_say():
    import random

    from emulator.board.environment import Environment
    from emulator.board.sensors import manual_clock

    clock = manual_clock()
    reads = [0]

    def now():
        reads[0] += 1
        return clock()

    env = Environment(random.Random(3), now=now)
    for _ in range(5):
        clock.advance(1800.0)
        reads[0] = 0
        t, p, h = env.air()
        assert reads[0] == 1, "one clock read for the three"
        assert (t, p, h) == (env.temperature(), env.pressure(), env.humidity())


def test_sensor_noise_is_a_seeded_standard_normal_six_draws_a_word():
    import statistics

    from emulator.board.environment import Noise
    from emulator.rng import SmallRandom

    class Counting(SmallRandom):
        __slots__ = ("words",)

        def getrandbits(self, k):
            self.words += 1
            return super().getrandbits(k)

    rng = Counting(5)
    rng.words = 0
    noise = Noise(rng)
    xs = [noise() for _ in range(60_000)]
    assert rng.words == 10_000
    assert abs(statistics.fmean(xs)) < 0.02 and abs(statistics.pstdev(xs) - 1) < 0.02
    assert max(map(abs, xs)) < 3.4 and len(set(xs)) > 1000
    again = Noise(SmallRandom(5))
    assert [again() for _ in range(100)] == xs[:100]

# -- main.py's closing asyncio.run without a greenlet (third round) --------------------

_MAIN = """\
import asyncio
async def killer(t):
    await asyncio.sleep_ms(20)
    t.cancel()
async def main():
    print("running")
    asyncio.create_task(killer(asyncio.current_task()))
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@pytest.mark.parametrize("after", ["", "x = 1\n"], ids=["main.py ends in asyncio.run", "code after asyncio.run"])
def test_main_py_ending_in_asyncio_run_runs_without_its_greenlet_and_halts_the_same(emu, tmp_path, after):
    """A main.py whose last act is asyncio.run leaves no greenlet (nor its
    saved C stack) nor task waiting while its coroutine runs; one with code after the
    call keeps main.py waiting in it. Both print the same traceback and halt
    the same way when the firmware cancels its own main task."""
    from tests.test_emulator_board import boot_board, image

    board, con = boot_board(emu, image(tmp_path, {"main.py": _MAIN + after}))
    con.wait("^running$")
    waiting = emu.call(lambda: board._greenlet is not None and not board._greenlet.dead)
    assert waiting is bool(after)
    # ... nor a task waiting for the main task (the boot's runner ended once it started it)
    runner = type(board)._run_scripts.__qualname__
    runners = emu.call(lambda: [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == runner])
    assert len(runners) == (1 if after else 0)
    # the firmware's tasks are named after their board (one shared string, not a "Task-N" each)
    assert emu.call(lambda: {t.get_name() for t in board.tasks}) == {board.id}
    i = con.wait("^>>> $")
    tb = con.lines.index("Traceback (most recent call last):")
    assert con.lines[tb + 1 : tb + 3] == ['  File "main.py", line 9, in <module>', "CancelledError"]
    assert con.lines[tb + 3].startswith("MicroPython v1.") and i > tb  # then the REPL
    assert board.halted is True
    assert any(kind == "halt" and "CancelledError" in msg for _, kind, msg in board.events)


def test_main_ends_in_only_a_closing_call_of_main_py():
    """The bytecode check behind it: the call's result dropped, then a
    return, outside any handler; anything else keeps main.py waiting."""
    from emulator.board.loader import _nothing_after

    def offset(src: str) -> tuple:
        import dis

        code = compile(src, "main.py", "exec")
        return code, next(i.offset for i in dis.get_instructions(code) if i.opname == "CALL")  # asyncio.run(c)

    assert _nothing_after(*offset("import asyncio\nasyncio.run(c)\n"))
    assert _nothing_after(*offset("if c is not None:\n    asyncio.run(c)\n"))
    assert not _nothing_after(*offset("asyncio.run(c)\nprint(1)\n"))
    assert not _nothing_after(*offset("x = asyncio.run(c)\n"))
    assert not _nothing_after(*offset("try:\n    asyncio.run(c)\nexcept OSError:\n    pass\n"))
    assert not _nothing_after(*offset("with m:\n    asyncio.run(c)\n"))


def test_the_fleet_observer_keeps_each_devices_last_payload_only_when_asked(broker, observer_factory):
    """`esp32emu fleet` without a dashboard keeps no parsed last payload per
    device (~1 KiB each in the parent); the dashboard's keep() turns it on.
    Counting is the same either way."""
    from emulator.observe.counting import FleetObserver

    obs = FleetObserver(broker.host, broker.port)
    obs.keep_last = False  # as the fleet sets it
    obs.start()
    try:
        device = observer_factory(broker, subscribe=None)
        device.publish("devices/d1/telemetry", {"seq": 0, "t": 21.5}, qos=0)
        assert obs.wait_until(lambda d: "d1" in d and d["d1"].received == 1, 10)
        assert obs.devices["d1"].last is None and obs.devices["d1"].last_at is not None
        obs.keep(0, 0)  # what the dashboard asks for
        device.publish("devices/d1/telemetry", {"seq": 1, "t": 21.6}, qos=0)
        assert obs.wait_until(lambda d: d["d1"].received == 2, 10)
        assert obs.devices["d1"].last == {"seq": 1, "t": 21.6}
        assert obs.summary()["telemetry_lost"] == 0 and obs.summary()["telemetry_sent"] == 2
    finally:
        obs.stop()


# -- round 3: the cost of a wake ---------------------------------------------------------


def _loops():
    loops = [("asyncio", asyncio.new_event_loop)]
    try:
        import uvloop
    except ImportError:
        return loops
    return loops + [("uvloop", uvloop.new_event_loop)]


@pytest.mark.parametrize("name,new_loop", _loops(), ids=[n for n, _ in _loops()])
def test_long_sleeps_share_loop_timers_and_end_at_their_deadline_never_before(name, new_loop):
    from emulator.board.fakes import asynciofake as A

    sleep_ms = A.AsyncioModule.sleep_ms
    late: list[float] = []

    async def sleeper(ms):
        t0 = time.monotonic()
        await sleep_ms(ms)
        late.append(time.monotonic() - t0 - ms / 1000)

    async def main():
        loop = asyncio.get_running_loop()
        timers = _timer_count(loop)
        # 40 sleeps of 600-630 ms, started together: at most 2 slots of 1/16 s
        tasks = [asyncio.ensure_future(sleeper(600 + i % 31)) for i in range(40)]
        await asyncio.sleep(0)  # each task makes its sleep now
        if timers is not None:
            assert _timer_count(loop) - timers <= 2, "one loop timer per slot, not per sleep"
        assert sum(len(v) for v in loop.esp32emu_wheel.values()) == 40
        await asyncio.gather(*tasks)
        assert not loop.esp32emu_wheel, "a slot is dropped once it fired"
        # and short sleeps keep a timer of their own, to the loop's precision
        await asyncio.gather(*(sleeper(ms) for ms in (1, 5, 20, 150, 400)))

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert len(late) == 45
    assert min(late) >= 0, f"a sleep ended {-min(late) * 1000:.2f} ms early"
    # never early; late by at most a slot plus what this (shared, busy) machine adds
    assert max(late[:40]) < A.GRAIN_S + 0.5


def _timer_count(loop):
    scheduled = getattr(loop, "_scheduled", None)  # the standard loop's timer heap (uvloop keeps its own)
    return None if scheduled is None else len([h for h in scheduled if not h.cancelled()])


def test_a_slot_timer_that_fires_early_waits_on_and_a_cancelled_sleep_leaves_its_slot_working():
    from emulator.board.fakes import asynciofake as A

    async def main():
        loop = asyncio.get_running_loop()
        a = A.AsyncioModule.sleep_ms(600)
        b = asyncio.ensure_future(_await(A.AsyncioModule.sleep(0.6)))
        await asyncio.sleep(0)
        (slot, due), = loop.esp32emu_wheel.items()
        assert due[0] is a and len(due) == 2
        # the slot's timer run before the slot's end (a loop timer a little
        # early by the host's clock): nothing wakes, it waits on
        A._wake_slot(loop, loop.esp32emu_wheel, slot)
        assert not a.done() and loop.esp32emu_wheel[slot] is due
        b.cancel()  # the firmware cancels a sleeping task (set_interval, a disconnect)
        with pytest.raises(asyncio.CancelledError):
            await b
        t0 = time.monotonic()
        assert await a is None
        assert time.monotonic() >= slot * A.GRAIN_S > t0
        assert slot not in loop.esp32emu_wheel

    asyncio.run(main())


async def _await(aw):
    return await aw


@pytest.mark.parametrize("name,new_loop", _loops(), ids=[n for n, _ in _loops()])
def test_a_sleep_costs_one_loop_timer_not_a_spin_until_its_deadline(name, new_loop, monkeypatch):
    """uvloop can run a timer up to ~1 ms early by time.monotonic; a sleep's
    timer that then re-armed for the microseconds left fired at once, early
    again, over and over until the deadline (a busy loop of ~10 timer runs a
    short sleep and ~58 a wheel slot). Now each timer runs once, twice at
    most, and no sleep ends early."""
    from emulator.board.fakes import asynciofake as A

    runs = {"one": 0, "slot": 0}
    wake_one, wake_slot = A._wake_one, A._wake_slot

    def counted_one(*args):
        runs["one"] += 1
        wake_one(*args)

    def counted_slot(*args):
        runs["slot"] += 1
        wake_slot(*args)

    monkeypatch.setattr(A, "_wake_one", counted_one)
    monkeypatch.setattr(A, "_wake_slot", counted_slot)
    early: list[float] = []

    async def sleeper(ms):
        t0 = time.monotonic()
        await A.AsyncioModule.sleep_ms(ms)
        early.append(t0 + ms / 1000 - time.monotonic())

    async def main():
        # A loop that always has work (a fleet's does) runs a timer as soon as
        # its millisecond clock says so: up to ~1 ms early by time.monotonic.
        ticking = True

        async def ticker():
            while ticking:
                await asyncio.sleep(0)

        busy = asyncio.ensure_future(ticker())
        for ms in (3, 7, 12, 30, 90):
            await sleeper(ms)
        for ms in (520, 700):  # a wheel slot each
            await sleeper(ms)
        ticking = False
        await busy

    loop = new_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert max(early) <= 0, f"a sleep ended {max(early) * 1000:.2f} ms early"
    assert runs["one"] <= 2 * 5 and runs["slot"] <= 2 * 2, runs


def test_sleep_zero_yields_once_and_sleep_passes_its_result():
    from emulator.board.fakes.asynciofake import AsyncioModule as M

    trail = []

    async def other():
        trail.append("other")

    async def main():
        asyncio.ensure_future(other())
        await M.sleep_ms(0)
        trail.append("after sleep_ms(0)")
        assert await M.sleep(0.25, "r") == "r" and await M.sleep(0, "z") == "z"
        assert await M.sleep(-1) is None and await M.sleep_ms(-5) is None
        with pytest.raises(asyncio.TimeoutError):
            await M.wait_for_ms(M.sleep_ms(5000), 20)  # a sleep is an awaitable like any other

    asyncio.run(main())
    assert trail == ["other", "after sleep_ms(0)"]


def test_shared_ticks_ms_reads_the_running_boards_clock(tmp_path):
    from emulator.board.clock import BoardClock
    from emulator.board.fakes.timefake import TimeModule
    from emulator.board.loader import BoardModules, FirmwareImage

    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "dev.py").write_text("import time\n\ndef now():\n    return time.ticks_ms()\n")
    img = FirmwareImage(fw)
    boards = []
    for i, offset in enumerate((0, 500_000_000)):
        b = _Board()
        b.clock = BoardClock(offset)
        (tmp_path / str(i)).mkdir()
        boards.append(BoardModules(img, tmp_path / str(i), {"time": lambda b=b: TimeModule(b)}, print, open))
    a, b = boards
    dev = a.context.run(a.load, "dev")
    assert b.context.run(b.load, "dev") is dev  # one shared module, one shared ticks_ms
    ta, tb = a.context.run(dev.now), b.context.run(dev.now)
    assert ta < 10_000 and 500_000_000 <= tb < 500_010_000
    assert "ticks_ms" in vars(dev.time), "kept on the proxy"
    # a board's own `import time` (main.py) gets the same answers in its context
    own = b.context.run(b.load, "time")
    assert 500_000_000 <= b.context.run(own.ticks_ms) < 500_010_000


def test_the_observer_leaves_no_reference_cycle_per_message():
    """paho matches each message against its per-topic callbacks with a
    recursive closure (a cycle per message, ~100,000 a minute for the
    collector of a 3,000-board fleet in one process); the observer has none."""
    import gc

    from emulator.observe.connection import BrokerConnection

    conn = BrokerConnection("127.0.0.1", 1, "test-observer", on_message=lambda *a: None)
    matcher = conn.client._on_message_filtered
    was = gc.isenabled()
    gc.disable()
    try:
        gc.collect()
        for i in range(100):
            assert list(matcher.iter_match(f"devices/dev-{i:05d}/telemetry")) == []
        assert gc.collect() == 0, "a message left cyclic garbage"
    finally:
        if was:
            gc.enable()
    # paho's per-topic callbacks still work where someone adds one
    conn.client.message_callback_add("devices/+/status", print)
    assert list(matcher.iter_match("devices/dev-00001/status")) == [print]


def test_the_lag_probe_wakes_with_the_boards_timer_slots_not_on_its_own():
    from emulator.board.fakes import asynciofake as A
    from emulator.fleet.workers import BoardGroup

    group = BoardGroup.__new__(BoardGroup)
    group.lag_ms = []

    async def main():
        loop = asyncio.get_running_loop()
        probe = asyncio.ensure_future(group._lag_probe())
        await asyncio.sleep(0)
        # the probe waits in the wheel's next slot, with whatever boards' sleeps end there
        (slot, due), = loop.esp32emu_wheel.items()
        assert len(due) == 1 and slot * A.GRAIN_S > time.monotonic()
        board = A.AsyncioModule.sleep_ms(1000)  # a board's: in a slot of its own, later
        assert len(loop.esp32emu_wheel) == 2
        await board
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)

    asyncio.run(main())
    assert 13 <= len(group.lag_ms) <= 18, len(group.lag_ms)  # 16 slots a second
    assert all(lag >= 0 for lag in group.lag_ms)


# Round 4: a publish whose bytes the socket takes at once arms no deadline.
_SEND_MP = """\
import sys
sys.path.insert(0, sys.argv[1])
import asyncio
import time
import mqtt_client

made = []
_create = asyncio.create_task


def counting(coro):
    made.append(1)
    return _create(coro)


asyncio.create_task = counting


class Session:
    def __init__(self, chunk, times):
        self.chunk = chunk
        self.left = times

    def has_data_to_send(self):
        return self.left > 0

    def data_to_send(self):
        if self.left <= 0:
            return b""
        self.left -= 1
        return self.chunk


async def main():
    r, w = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    c = mqtt_client.MqttClient(Session(b"p" * 200, 3), None)
    c._writer = w
    for _ in range(3):
        c.session.left = 1
        await c._flush()
    print("taken", c.session.left, len(made))
    # a peer that reads nothing: the socket fills, drain waits, and what is
    # left of the deadline (9,950 ms of 10,000 gone at `start`) ends it
    c.session = Session(b"q" * 65536, 400)
    t0 = time.ticks_ms()
    try:
        await c._send(time.ticks_add(t0, -9950))
        print("no timeout")
    except mqtt_client.LinkError as e:
        print(e, len(made), c._writing, c._tx_since, time.ticks_diff(time.ticks_ms(), t0) < 5000)
    # another writer at work: the wait for it has the deadline too
    c._writing = True
    try:
        await c._send(time.ticks_add(time.ticks_ms(), -9950))
        print("no timeout")
    except mqtt_client.LinkError as e:
        print("waiting:", e, len(made))


asyncio.run(main())
"""


def test_a_write_the_socket_takes_at_once_arms_no_alarm_and_a_stalled_one_keeps_its_deadline(tmp_path):
    # On the real MicroPython VM, over a real socket to a peer that never
    # reads: firmware/mqtt_client.py's writes create an alarm Task only when
    # asyncio's Stream kept bytes back (out_buf), and the deadline still
    # counts from the start of the flush.
    from emulator.board.vm.interpreter import micropython_executable

    script = tmp_path / "send.py"
    script.write_text(_SEND_MP)
    with socket.socket() as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        r = subprocess.run([micropython_executable(), "-X", "heapsize=256k", str(script), str(REPO / "firmware"),
                            str(lsock.getsockname()[1])], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines() == ["taken 0 0", "write stalled for 10000 ms 1 False None True",
                                   "waiting: write stalled for 10000 ms 2"], r.stdout + r.stderr


def test_shared_time_reads_the_running_boards_rtc_and_runtime_imports_find_its_modules(tmp_path):
    from emulator.board.clock import BoardClock
    from emulator.board.fakes.timefake import TimeModule
    from emulator.board.loader import BoardModules, FirmwareImage

    fw = tmp_path / "fw"
    fw.mkdir()
    (fw / "dev.py").write_text("import time\n\ndef now():\n    return time.time()\n\n"
                               "def mod():\n    import time as t\n    return t\n")
    img = FirmwareImage(fw)
    boards = []
    for i, rtc in enumerate((0, 700_000_000)):
        b = _Board()
        b.clock = BoardClock(0)
        b.clock.set_rtc(rtc)
        (tmp_path / str(i)).mkdir()
        boards.append(BoardModules(img, tmp_path / str(i), {"time": lambda b=b: TimeModule(b)}, print, open))
    a, b = boards
    dev = a.context.run(a.load, "dev")
    assert b.context.run(b.load, "dev") is dev
    assert 0 <= a.context.run(dev.now) < 100 and 700_000_000 <= b.context.run(dev.now) < 700_000_100
    assert "time" in vars(dev.time), "kept on the proxy"
    assert a.context.run(dev.mod) is a.modules["time"] and b.context.run(dev.mod) is b.modules["time"]
    assert a.context.run(a.modules["time"].gmtime)[0] == 2000

