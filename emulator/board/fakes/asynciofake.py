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
import types as _types

from emulator.net.event import Event

_CoroutineType = _types.CoroutineType


# The context of a sleep's timer: its callback only sets a future and reads no
# context variable, so it needs no copy of the running one (asyncio.sleep makes
# one per sleep; a fleet's boards are mostly asleep, three timers each).
_NO_CONTEXT = _contextvars.Context()
_set_result_unless_cancelled = _aio.futures._set_result_unless_cancelled


@_types.coroutine
def _sleep0():
    yield  # a bare yield: the task runs again at the next loop step


async def _sleep(delay, result=None):
    # asyncio.sleep, without the context copy
    if delay <= 0:
        await _sleep0()
        return result
    loop = _aio.get_running_loop()
    future = loop.create_future()
    h = loop.call_later(delay, _set_result_unless_cancelled, future, result, context=_NO_CONTEXT)
    try:
        return await future
    finally:
        h.cancel()


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

    @staticmethod
    def sleep_ms(ms: int):
        return _sleep(ms / 1000)

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
