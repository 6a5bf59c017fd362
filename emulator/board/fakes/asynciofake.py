"""The board's `asyncio` module: MicroPython's asyncio API on the shared
CPython event loop.

Tasks are tracked per board (a reset cancels them all), `open_connection`
goes through the board's link, `run()` hands the coroutine to the board's
runner (the top-level script waits in its greenlet, as on hardware), and the
MicroPython-only helpers (`sleep_ms`, `wait_for_ms`, `ThreadSafeFlag`) exist.
"""

from __future__ import annotations

import asyncio as _aio
import contextvars as _contextvars
import time as _time
import types as _types

from emulator.net.event import Event

_CoroutineType = _types.CoroutineType


# The context of a sleep's timer: its callback only sets a future and reads no
# context variable, so it needs no copy of the running one (asyncio.sleep makes
# one per sleep; a fleet's boards are mostly asleep, three timers each).
_NO_CONTEXT = _contextvars.Context()

# The timer wheel. A fleet's boards wake about once a second each (the
# firmware's chores), and a loop timer per sleep (an event-loop timer handle,
# its heap entry and a callback) was the biggest part of a wake. A sleep of
# at least WHEEL_MIN_S shares its loop timer with every other sleep, on any
# board of this loop, whose deadline falls in the same GRAIN_S slot: the
# timer fires at the slot's end and wakes them all in one callback. A sleep
# thus ends at its deadline or at most GRAIN_S after it (plus the loop's own
# lateness), never before: MicroPython's asyncio promises no more (its
# sleeps end when the scheduler gets round to them), and a fixed-rate
# schedule (device.py's next_due) does not drift from it. Shorter sleeps (a
# sensor's conversion, a write's back-off) keep a timer of their own.
# Every slot that fires is a wake of the whole process, and on a virtual
# machine a wake from idle costs ~50-150 µs of CPU before any Python runs
# (cold caches; measured: an asyncio.sleep of 15.6 ms in a loop costs ~150
# CPU-µs a wake here): 16 slots a second instead of 64 cut an idle board's
# second by ~14 % at 1,000 boards a process. WHEEL_MIN_S keeps a sleep's
# lateness under an eighth of its length.
GRAIN_S = 1 / 16
WHEEL_MIN_S = 0.5
# uvloop counts timers in whole milliseconds of a clock it reads once per
# loop iteration, so a timer can fire up to ~1 ms before its deadline by
# time.monotonic. Each timer is armed this much late, and one that still
# fires early waits at least this long again: re-armed for the few
# microseconds left, it fired at once, early again, and the loop spun until
# the deadline (measured: ~58 re-arms per wheel slot, 64 slots a second).
_MARGIN_S = 0.001
_SLOTS_PER_S = 16  # 1 / GRAIN_S
_monotonic = _time.monotonic  # the clock of the board's ticks (emulator/board/clock.py)


def _sleep_future(delay):
    """A future that is done `delay` seconds (> 0) from now, never sooner.
    Returned as it is (no coroutine around it): awaiting it is the task's
    only suspension, and cancelling the task cancels it."""
    loop = _aio.get_running_loop()
    fut = loop.create_future()
    now = _monotonic()
    if delay < WHEEL_MIN_S:
        loop.call_later(delay + _MARGIN_S, _wake_one, loop, fut, now + delay, context=_NO_CONTEXT)
        return fut
    _join_slot(loop, fut, int((now + delay) * _SLOTS_PER_S) + 1, now)  # the first slot end at or after the deadline
    return fut


def _join_slot(loop, fut, slot, now):
    try:
        wheel = loop.esp32emu_wheel
    except AttributeError:
        wheel = loop.esp32emu_wheel = {}  # slot -> the futures due in it
    due = wheel.get(slot)
    if due is None:
        wheel[slot] = [fut]
        loop.call_later(slot * GRAIN_S - now + _MARGIN_S, _wake_slot, loop, wheel, slot, context=_NO_CONTEXT)
    else:
        due.append(fut)


def next_slot():
    """(deadline, future): a future of the running loop that is done when
    the timer wheel's next slot fires, after the boards' sleeps that end
    there, and the time.monotonic() that slot is armed for. A fleet's lag
    probe waits on it: it then shares the boards' wakes instead of making
    one of its own (on a VM each costs ~150 CPU-µs from idle)."""
    loop = _aio.get_running_loop()
    fut = loop.create_future()
    now = _monotonic()
    slot = int(now * _SLOTS_PER_S) + 1
    _join_slot(loop, fut, slot, now)
    return slot * GRAIN_S + _MARGIN_S, fut


def _wake_one(loop, fut, deadline):
    # A loop may run a timer a little early by the host's clock (uvloop's
    # timers count whole milliseconds of a cached time): then wait on.
    left = deadline - _monotonic()
    if left > 0:
        loop.call_later(left + _MARGIN_S, _wake_one, loop, fut, deadline, context=_NO_CONTEXT)
    elif not fut.done():
        fut.set_result(None)


def _wake_slot(loop, wheel, slot):
    left = slot * GRAIN_S - _monotonic()
    if left > 0:
        loop.call_later(left + _MARGIN_S, _wake_slot, loop, wheel, slot, context=_NO_CONTEXT)
        return
    for fut in wheel.pop(slot):
        if not fut.done():  # a cancelled sleep stays in its slot until then
            fut.set_result(None)


@_types.coroutine
def _sleep0():
    yield  # a bare yield: the task runs again at the next loop step


async def _sleep_result(delay, result):
    await _sleep_future(delay)
    return result


def _sleep(delay, result=None):
    # asyncio.sleep, without the context copy, and as the future itself
    if delay <= 0:
        return _sleep0() if result is None else _sleep0_result(result)
    if result is not None:
        return _sleep_result(delay, result)
    return _sleep_future(delay)


async def _sleep0_result(result):
    await _sleep0()
    return result


def _sleep_ms(ms):
    # the same in milliseconds: the firmware's every wait
    if ms <= 0:
        return _sleep0()
    return _sleep_future(ms / 1000)


async def _wait_for(aw, timeout):
    # MicroPython's wait_for: `aw` is cancelled when the time is up, and
    # TimeoutError raised. Run in the calling task under a deadline rather
    # than CPython's wait_for (a new task, context copy and waiter per call):
    # a fleet makes thousands of these calls a second.
    if timeout is None:
        return await aw
    if type(aw) is not _CoroutineType:
        async with _aio.timeout(timeout):
            return await aw
    # Most calls (a publish: write, drain) finish without ever waiting: run
    # the coroutine's first step now, and only if it has to wait arm the
    # deadline (a timer, a Timeout, a reschedule and a cancel saved per
    # message). No loop time passes in between, so the deadline is the same.
    try:
        first = aw.send(None)
    except StopIteration as e:
        return e.value
    async with _aio.timeout(timeout):
        return await _resume(aw, first)


@_types.coroutine
def _resume(coro, yielded):
    """The rest of `coro`, whose first step (which yielded `yielded`) ran
    already: what `yield from coro` would have done from there on."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as e:  # thrown in (a cancel): into the coroutine
            try:
                yielded = coro.throw(e)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class ThreadSafeFlag:
    def __init__(self):
        self._event = Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    async def wait(self) -> None:
        await self._event.wait()
        self._event.clear()


class _Loop:
    """What `asyncio.get_event_loop()` returns on MicroPython."""

    def __init__(self, module: "AsyncioModule"):
        self._m = module

    def create_task(self, coro):
        return self._m.create_task(coro)

    def run_until_complete(self, awaitable):
        return self._m.run(awaitable)

    def run_forever(self):
        return self._m.run(_aio.Event().wait())

    def stop(self) -> None:
        pass

    def close(self) -> None:
        pass

    def set_exception_handler(self, handler) -> None:
        self._m._board.task_exception_handler = handler

    def get_exception_handler(self):
        return self._m._board.task_exception_handler

    def call_exception_handler(self, context) -> None:
        self._m._board.report_task_exception(context)


class AsyncioModule:
    __name__ = "asyncio"
    CancelledError = _aio.CancelledError
    TimeoutError = _aio.TimeoutError
    Event = Event  # asyncio.Event's API, a board's dozen of them in a fraction of the memory
    Lock = _aio.Lock
    Task = _aio.Task
    ThreadSafeFlag = ThreadSafeFlag
    sleep = staticmethod(_sleep)
    wait_for = staticmethod(_wait_for)
    gather = staticmethod(_aio.gather)
    current_task = staticmethod(_aio.current_task)

    # The same on every board (a shared firmware module's proxy keeps them:
    # emulator/board/loader.py ModuleProxy).
    SHARED = frozenset({"CancelledError", "TimeoutError", "Event", "Lock", "Task", "ThreadSafeFlag", "sleep", "wait_for",
                        "gather", "current_task", "sleep_ms", "wait_for_ms"})

    def __init__(self, board):
        self._board = board

    sleep_ms = staticmethod(_sleep_ms)

    @staticmethod
    def wait_for_ms(aw, timeout_ms: int):
        return _wait_for(aw, timeout_ms / 1000)

    def create_task(self, coro):
        return self._board.create_task(coro)

    def run(self, coro):
        return self._board.run_main_coroutine(coro)

    def get_event_loop(self, *args):
        return _Loop(self)

    def new_event_loop(self):
        return _Loop(self)

    async def open_connection(self, host, port, ssl=None, server_hostname=None):
        return await self._board.link.open_connection(host, port, ssl=ssl, server_hostname=server_hostname)

    async def start_server(self, *args, **kwargs):
        raise OSError("start_server is not emulated")
