"""A board's scripts: each boot runs `boot.py` then `main.py` in a greenlet,
so top-level code that blocks (`asyncio.run`, `time.sleep` in boot.py) waits
there while the board's tasks run on the one shared event loop; Ctrl-C at
the console raises KeyboardInterrupt where they wait; an unhandled exception
halts the board at its REPL. An `asyncio.run` that is main.py's last act
does not wait: main.py and the greenlet end, and the main task runs on by
itself (`_start_main`, `_main_ended`).

`BootScripts` holds that job for `board.Board`, which derives from it (the
state it works on is the board's: `_greenlet`, `_main_task`, `repl`...).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

import greenlet

from emulator.board.fakes.machinefake import BoardReset
from emulator.board.loader import format_micropython_exception, main_ends_in

log = logging.getLogger("esp32emu")

REPL_BANNER = 'MicroPython v1.24.1 on esp32emu; ESP32 module with ESP32\nType "help()" for more information.'


class _MainEnds(BaseException):
    """main.py's last act is `asyncio.run(coro)`: carries the coroutine out
    of main.py and its greenlet (loader.main_ends_in), which end at once."""

    def __init__(self, coro, where: tuple[str, int, str]):
        super().__init__()
        self.coro, self.where = coro, where


class BootScripts:
    __slots__ = ()  # Board has the slots

    async def _run_scripts(self) -> None:
        g = greenlet.greenlet(self._scripts_body)
        g.gr_context = self.modules.context.copy()  # firmware code knows its board
        self._greenlet = g
        msg = g.switch()
        while not g.dead:
            kind, arg = msg
            if kind == "run":
                task = self.create_task(arg)
                self._main_task = task
                self._interrupted = False
                try:
                    if self.repl is not None and (not await self._done_or_interrupted(task) or self._interrupted):
                        # Ctrl-C: KeyboardInterrupt now, whether or not the
                        # firmware lets its task be cancelled; the REPL stops the rest.
                        self._interrupted = False
                        msg = g.throw(KeyboardInterrupt())
                        continue
                    result = await task
                except asyncio.CancelledError:
                    if self.hung:
                        await asyncio.Event().wait()  # stuck until a reset
                    # The board is going away (reset, stop): leave the firmware
                    # suspended for _teardown. Only a main task cancelled by the
                    # firmware itself raises CancelledError into main.py.
                    if self._reset_request is not None or asyncio.current_task().cancelling():
                        raise
                    interrupted, self._interrupted = self._interrupted, False
                    msg = g.throw(KeyboardInterrupt() if interrupted else asyncio.CancelledError())
                    continue
                except BaseException as e:  # noqa: BLE001 - handed back to the firmware's stack
                    msg = g.throw(type(e), e, e.__traceback__)  # keeps the coroutine's frames
                    continue
                msg = g.switch(result)
            elif kind == "sleep":
                sleeper = self._main_task = self.create_task(asyncio.sleep(arg))
                try:
                    await sleeper
                except asyncio.CancelledError:
                    if self.hung:
                        await asyncio.Event().wait()
                    if not self._interrupted or asyncio.current_task().cancelling():
                        raise
                    self._interrupted = False
                    msg = g.throw(KeyboardInterrupt())
                    continue
                msg = g.switch()
            else:
                raise RuntimeError(f"unknown greenlet request {kind!r}")
        g = self._greenlet = None  # dead: its saved stack is gone
        if msg[0] == "main":
            self._start_main(*msg[1:])  # and this task ends: _main_ended takes the main task's outcome
            self._runner = None  # (a task done keeps its coroutine: let both go)
            return
        if self.halted and self.repl is None:
            await self._at_repl()

    async def _at_repl(self) -> None:
        # At the REPL no event loop runs: the board's tasks stop where they
        # are (their sockets stay open until the broker gives up on them).
        await self._stop_tasks()
        self.console(REPL_BANNER)
        self.console(">>> ")

    def _start_main(self, coro, where: tuple[str, int, str]) -> None:
        """main.py's closing `asyncio.run(coro)`, with neither main.py waiting
        in a greenlet (2.4 KiB of saved C stack a board) nor a task waiting
        for it: `_main_ended` does what main.py would do with the outcome
        (nothing more: it ends there), the same way _scripts_body does it."""
        self._main_where = where
        self._main_task = self.create_task(coro)

    def _main_ended(self, task: asyncio.Task) -> None:
        where, self._main_where = self._main_where, None
        if task.cancelled():
            if self.hung or self._reset_request is not None:
                return  # stuck until a reset / the reset is under way
            e: BaseException | None = asyncio.CancelledError()  # the firmware cancelled its own main task
        else:
            e = task.exception()
        if isinstance(e, BoardReset):
            return
        if e is not None and not isinstance(e, SystemExit):
            self._unhandled(e, where)
        self.halted = True
        if self.repl is None:
            self.loop.create_task(self._at_repl())

    def _unhandled(self, e: BaseException, *outer: tuple[str, int, str]) -> None:
        self.console(format_micropython_exception(e, outer))
        self.log_event("halt", f"unhandled {type(e).__name__}: {e}")

    def _scripts_body(self) -> tuple:
        repl = self.repl
        try:
            if repl is not None:
                repl.booting(self)
            self.modules.run_script("boot.py")
            if repl is None or repl.runs_main():  # not after a soft reset from the raw REPL
                self.modules.run_script("main.py")
        except _MainEnds as ends:
            return ("main", ends.coro, ends.where)
        except BoardReset:
            return ("done", None)
        except greenlet.GreenletExit:
            raise
        except SystemExit:
            pass
        except BaseException as e:  # noqa: BLE001 - an unhandled firmware exception halts the board
            self._unhandled(e)
        self.halted = True  # _run_scripts stops the tasks and shows the REPL
        if repl is not None:
            try:
                repl.serve(self)  # the REPL runs in this greenlet until a reset
            except BoardReset:
                pass
        return ("done", None)

    def run_main_coroutine(self, coro):
        g = self._greenlet
        if g is None or greenlet.getcurrent() is not g:
            coro.close()
            raise RuntimeError("asyncio.run() cannot be called from a running event loop")
        if self.repl is None:  # (at a REPL, Ctrl-C raises KeyboardInterrupt in main.py: it waits)
            where = main_ends_in(sys._getframe())
            if where is not None:  # main.py ends here: no need to keep it (and the greenlet) waiting
                raise _MainEnds(coro, where)
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

    async def _done_or_interrupted(self, task: asyncio.Task) -> bool:
        waiter = self._interrupt_waiter = self.loop.create_future()
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()  # as `await task` would have
            raise
        finally:
            self._interrupt_waiter = None
        return task.done()

    def interrupt(self) -> bool:
        """Ctrl-C on the console: KeyboardInterrupt where boot.py/main.py (or
        code run at the REPL) waits in `asyncio.run` or `time.sleep`; False if
        nothing is running. Its sockets are left half-open; the REPL
        (emulator/realboard/serial_board.py) stops the firmware's other tasks."""
        task = self._main_task
        if self._greenlet is None or self._greenlet.dead or task is None or task.done():
            return False
        self._interrupted = True
        self.log_event("interrupt", "KeyboardInterrupt (Ctrl-C on the console)")
        self.link.abandon_connections()  # no firmware `finally` reaches the network
        if self._interrupt_waiter is not None and not self._interrupt_waiter.done():
            self._interrupt_waiter.set_result(None)
        task.cancel()
        return True
