"""Behaviour of one emulated board, without a broker: clocks, console and
tracebacks, resets and their causes, RTC memory and NVS, the watchdog,
blocking calls, `asyncio.run`, module isolation and the flash filesystem.

Each test boots a tiny firmware image of its own (a temp directory holding a
boot.py/main.py written for the test) on the `emu` fixture's event loop, and
waits on the board's console with deadlines. The helpers here (`Console`,
`image`, `boot_board`) are imported by the other tests/test_emulator_*.py.
"""

from __future__ import annotations

import ast
import logging
import re
import textwrap
import threading
import time
from pathlib import Path


from emulator.board.board import Board
from emulator.board.clock import UNIX_2000
from emulator.board.loader import FirmwareImage

# -- helpers -------------------------------------------------------------------------


class Console:
    """A board's console lines (with arrival times) and waits with deadlines."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.times: list[float] = []
        self._cond = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._cond:
            self.lines.append(line)
            self.times.append(time.monotonic())
            self._cond.notify_all()

    def wait(self, pattern: str, timeout: float = 5.0, start: int = 0) -> int:
        """Index of the first line at or after `start` matching `pattern`."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            i = start
            while True:
                while i < len(self.lines):
                    if rx.search(self.lines[i]):
                        return i
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "\n".join(self.lines[-40:])
                    raise AssertionError(f"no console line matching {pattern!r} within {timeout} s; last lines:\n{tail}")
                self._cond.wait(left)

    def match(self, pattern: str, timeout: float = 5.0, start: int = 0) -> re.Match:
        i = self.wait(pattern, timeout, start)
        m = re.search(pattern, self.lines[i])
        assert m is not None
        return m

    def value(self, name: str, timeout: float = 5.0, start: int = 0):
        """The Python literal a firmware printed as `print(name, repr(x))`."""
        i = self.wait(rf"^{re.escape(name)} ", timeout, start)
        return ast.literal_eval(self.lines[i][len(name) + 1 :])

    def snapshot(self) -> list[str]:
        with self._cond:
            return list(self.lines)


_images = 0


def image(tmp_path: Path, files: dict[str, str]) -> FirmwareImage:
    """A firmware image made of the given sources (dedented)."""
    global _images
    _images += 1
    d = tmp_path / f"image{_images}"
    d.mkdir()
    for name, src in files.items():
        (d / name).write_text(textwrap.dedent(src))
    return FirmwareImage(d)


def boot_board(emu, img: FirmwareImage, device_id: str = "b1", *, start: bool = True, **kwargs) -> tuple[Board, Console]:
    """A board on the emulator's loop with a recording console (stopped at teardown)."""
    console = Console()
    board = Board(device_id, img, emu.state_dir / device_id, console=console, index=len(emu.boards), **kwargs)
    emu.boards[device_id] = board
    if start:
        emu.call(board.start)
    return board, console


# A main.py prelude that prints what the board woke up with (indented like
# the sources below, which image() dedents).
WAKE = textwrap.indent(
    'import machine\nrtc = machine.RTC()\nprint("cause", machine.reset_cause())\nprint("mem", rtc.memory())\n',
    " " * 12,
)


# -- 1. clocks --------------------------------------------------------------------------


def test_ticks_ms_wraps_at_2_30_and_ticks_diff_spans_the_wrap(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import time
            t0 = time.ticks_ms()
            while time.ticks_diff(time.ticks_ms(), t0) < 300:
                time.sleep_ms(20)
            t1 = time.ticks_ms()
            print("ticks", (t0, t1, time.ticks_diff(t1, t0), time.ticks_diff(t0, t1), time.ticks_us() < 2**30))
            """
        },
    )
    board, con = boot_board(emu, img, ticks_offset_ms=2**30 - 150)
    t0, t1, forward, backward, us_in_range = con.value("ticks")
    assert 2**30 - 150 <= t0 < 2**30
    assert 0 <= t1 < 1000, "ticks_ms went past 2**30 instead of wrapping"
    assert 300 <= forward < 1000
    assert backward == -forward
    assert us_in_range


def test_ticks_add_and_ticks_diff_follow_micropython(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import time
            M = 2**30
            print("add", (time.ticks_add(M - 1, 1), time.ticks_add(0, -1), time.ticks_add(M - 10, 20),
                          time.ticks_add(5, 2**29 - 1)))
            print("diff", (time.ticks_diff(0, M - 1), time.ticks_diff(M - 1, 0), time.ticks_diff(2**29 - 1, 0),
                           time.ticks_diff(2**29, 0), time.ticks_diff(time.ticks_add(123, -2**29 + 1), 123)))
            for delta in (2**29, -2**29, 2**31):
                try:
                    time.ticks_add(0, delta)
                    print("overflow", None)
                except OverflowError as e:
                    print("overflow", str(e))
            """
        },
    )
    board, con = boot_board(emu, img)
    assert con.value("add") == (0, 2**30 - 1, 10, 2**29 + 4)
    assert con.value("diff") == (1, -1, 2**29 - 1, -(2**29), -(2**29) + 1)
    first = con.wait("^overflow ")
    con.wait("^overflow ", start=first + 2)
    assert con.lines[first : first + 3] == ["overflow ticks interval overflow"] * 3


def test_time_counts_from_2000_and_ntptime_needs_wifi(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import time, network, ntptime
            print("epoch", time.gmtime(0)[:6])
            print("before", time.time())
            try:
                ntptime.settime()
                print("offline", "synced")
            except OSError as e:
                print("offline", e.args[0])
            sta = network.WLAN(network.STA_IF)
            sta.active(True)
            sta.connect("esp32emu", "emulated")
            while not sta.isconnected():
                time.sleep_ms(20)
            ntptime.settime()
            print("after", (time.time(), time.gmtime()[0]))
            """
        },
    )
    board, con = boot_board(emu, img)
    assert con.value("epoch") == (2000, 1, 1, 0, 0, 0)
    assert 0 <= con.value("before") < 5, "a freshly powered RTC starts at 2000-01-01"
    assert con.value("offline") == 116, "ntptime without WiFi fails with ETIMEDOUT (ESP32 errno)"
    now, year = con.value("after")
    assert abs(now - (time.time() - UNIX_2000)) <= 2
    assert year == time.gmtime().tm_year


# -- 2. console, tracebacks, task exceptions -------------------------------------------


def test_print_goes_to_console_and_uncaught_exception_halts_at_repl(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "boot.py": 'print("boot", "ran", sep="-")\n',
            "main.py": """\
            print("main", 1, end="!\\n")
            def check(x):
                raise ValueError("bad value %d" % x)
            check(7)
            print("not reached")
            """,
        },
    )
    board, con = boot_board(emu, img)
    i = con.wait("^>>> $")
    lines = con.lines[: i + 1]
    assert lines[:2] == ["boot-ran", "main 1!"]
    tb = lines.index("Traceback (most recent call last):")
    assert lines[tb + 1 : tb + 4] == [
        '  File "main.py", line 4, in <module>',
        '  File "main.py", line 3, in check',
        "ValueError: bad value 7",
    ]
    assert "not reached" not in lines
    assert lines[-3].startswith("MicroPython v1.")
    assert board.halted is True
    assert not any("board.py" in line or "loader.py" in line for line in lines), "emulator frames leaked"


def test_uncaught_exception_from_asyncio_run_shows_both_frames(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import asyncio
            async def fail():
                await asyncio.sleep_ms(5)
                raise OSError(113)
            asyncio.run(fail())
            """
        },
    )
    board, con = boot_board(emu, img)
    i = con.wait("^>>> $")
    tb = con.lines.index("Traceback (most recent call last):")
    assert con.lines[tb + 1 : tb + 4] == [
        '  File "main.py", line 5, in <module>',
        '  File "main.py", line 4, in fail',
        "OSError: 113",
    ]
    assert i > tb and board.halted


def test_task_exception_is_reported_and_board_keeps_running(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import asyncio
            async def worker():
                raise ValueError("in task")
            async def main():
                asyncio.create_task(worker())
                await asyncio.sleep_ms(50)
                print("still running")
                await asyncio.sleep(3600)
            asyncio.run(main())
            """
        },
    )
    board, con = boot_board(emu, img)
    alive = con.wait("^still running$")
    report = con.lines.index("Task exception wasn't retrieved")
    assert report < alive
    assert con.lines[report + 1 : report + 4] == [
        "Traceback (most recent call last):",
        '  File "main.py", line 3, in worker',
        "ValueError: in task",
    ]
    assert board.halted is False and board.boots == 1


def test_awaited_task_exception_is_not_reported(emu, tmp_path):
    """MicroPython reports a task's exception only if nobody retrieves it."""
    img = image(
        tmp_path,
        {
            "main.py": """\
            import asyncio
            async def worker():
                await asyncio.sleep_ms(5)
                raise ValueError("handled")
            async def main():
                t = asyncio.create_task(worker())
                try:
                    await t
                except ValueError as e:
                    print("caught", str(e))
                results = await asyncio.gather(worker(), return_exceptions=True)
                print("gathered", repr(results))
                await asyncio.sleep_ms(20)
                print("done")
            asyncio.run(main())
            """
        },
    )
    board, con = boot_board(emu, img)
    con.wait("^done$")
    assert "caught handled" in con.lines
    assert "Task exception wasn't retrieved" not in con.lines
    assert "Traceback (most recent call last):" not in con.lines


def test_partial_lines_are_joined_like_a_serial_console(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import sys
            print("connecting", end="")
            for _ in range(3):
                print(".", end="")
            print(" ok")
            sys.stdout.write("via sys.stdout\\n")
            print("to stderr", file=sys.stderr)
            """
        },
    )
    board, con = boot_board(emu, img)
    con.wait("^>>> $")
    assert con.lines[:3] == ["connecting... ok", "via sys.stdout", "to stderr"]


# -- 3. resets, RTC memory, NVS --------------------------------------------------------


def test_machine_reset_reboots_and_runs_boot_and_main_again(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "boot.py": 'print("boot.py")\n',
            "main.py": WAKE
            + """\
            import asyncio
            async def later():
                await asyncio.sleep_ms(10)
                machine.reset()
            async def main():
                asyncio.create_task(later())
                await asyncio.sleep(3600)
            if rtc.memory() == b"":
                rtc.memory(b"1")
                machine.reset()
            elif rtc.memory() == b"1":
                rtc.memory(b"2")
                asyncio.run(main())  # reset from inside a task
            print("stay")
            """,
        },
    )
    board, con = boot_board(emu, img)
    con.wait("^stay$", 5)
    lines = con.snapshot()
    assert [ln for ln in lines if ln in ("boot.py",) or ln.startswith("cause")] == [
        "boot.py",
        "cause 1",
        "boot.py",
        "cause 2",
        "boot.py",
        "cause 2",
    ]
    assert "Traceback (most recent call last):" not in lines
    assert board.boots == 3


def test_soft_reset_deepsleep_and_power_loss_keep_or_lose_rtc_memory(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": WAKE
            + """\
            print("wake", machine.wake_reason())
            m = rtc.memory()
            if m == b"":
                rtc.memory(b"soft")
                machine.soft_reset()
            elif m == b"soft":
                rtc.memory(b"deep")
                print("sleeping")
                machine.deepsleep(300)
            print("idle")
            """,
        },
    )
    board, con = boot_board(emu, img)
    con.wait("^idle$")
    seen = [ln for ln in con.snapshot() if ln.startswith(("cause", "mem", "wake"))]
    assert seen == [
        "cause 1", "mem b''", "wake 0",
        "cause 5", "mem b'soft'", "wake 0",
        "cause 4", "mem b'deep'", "wake 4",
    ]  # fmt: skip
    slept = con.times[con.lines.index("cause 4")] - con.times[con.lines.index("sleeping")]
    assert 0.3 <= slept < 1.5
    # Power loss: PWRON_RESET, RTC memory gone (the chain starts again).
    mark = len(con.snapshot())
    emu.call(board.power_cycle)
    assert con.lines[con.wait("^cause", start=mark)] == "cause 1"
    assert con.lines[con.wait("^mem", start=mark)] == "mem b''"


def test_external_controls_work_while_the_board_sleeps(emu, tmp_path):
    """A power cycle or the EN button during deep sleep wakes the board at once;
    deepsleep() without a time sleeps until then."""
    img = image(
        tmp_path,
        {
            "main.py": WAKE
            + """\
            print("sleeping")
            machine.deepsleep()
            """,
        },
    )
    board, con = boot_board(emu, img)
    con.wait("^sleeping$")
    assert emu.call(lambda: board.boots) == 1, "deepsleep() without a time must not wake by itself"
    mark = len(con.snapshot())
    emu.call(board.hard_reset)
    assert con.lines[con.wait("^cause", 2, start=mark)] == "cause 2"
    con.wait("^sleeping$", start=mark)
    mark = len(con.snapshot())
    emu.call(board.power_cycle)
    assert con.lines[con.wait("^cause", 2, start=mark)] == "cause 1"


def test_nvs_survives_resets_power_loss_and_a_new_board_object(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": WAKE
            + """\
            import esp32
            a = esp32.NVS("app")
            b = esp32.NVS("app")
            try:
                n = a.get_i32("n")
            except OSError as e:
                print("missing", (e.args[0], e.errno))
                n = 0
            a.set_i32("n", n + 1)
            a.commit()
            b.set_blob("blob", b"x" * (n + 1))
            b.commit()
            buf = bytearray(16)
            print("nvs", (esp32.NVS("app").get_i32("n"), bytes(buf[: a.get_blob("blob", buf)])))
            if machine.reset_cause() == machine.PWRON_RESET and n == 0:
                machine.reset()
            """,
        },
    )
    board, con = boot_board(emu, img)
    assert con.value("missing") == (-4354, -4354)
    assert con.value("nvs") == (1, b"x")
    assert con.value("nvs", start=con.wait("^cause 2")) == (2, b"xx")
    mark = len(con.snapshot())
    emu.call(board.power_cycle)
    assert con.value("nvs", start=mark) == (3, b"xxx")
    emu.run(board.stop())
    # A new Board object on the same state directory: the flash is the same.
    con2 = Console()
    again = Board("b1", img, board.state_dir, console=con2)
    emu.boards["b1-again"] = again
    emu.call(again.start)
    assert con2.value("nvs") == (4, b"xxxx")
    assert not any(ln.startswith("missing") for ln in con2.snapshot())


# -- 4. watchdog -----------------------------------------------------------------------


def test_unfed_watchdog_resets_the_board(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": WAKE
            + """\
            import asyncio
            async def hang():
                while True:
                    await asyncio.sleep_ms(10)  # busy, never feeds
            if machine.reset_cause() != machine.WDT_RESET:
                machine.WDT(timeout=300)
                print("armed")
                asyncio.run(hang())
            print("recovered")
            """,
        },
    )
    board, con = boot_board(emu, img)
    armed = con.wait("^armed$")
    con.wait("^recovered$", 3)
    assert con.lines[con.wait("^cause", start=armed)] == "cause 3"
    assert any("task_wdt" in ln for ln in con.lines)
    fired = con.times[con.wait("^cause 3")] - con.times[armed]
    assert 0.3 <= fired < 1.5


def test_fed_watchdog_does_not_reset_but_a_halted_board_is_reset(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": WAKE
            + """\
            import asyncio
            async def work(wdt):
                for _ in range(12):  # 600 ms, three times the timeout
                    await asyncio.sleep_ms(50)
                    wdt.feed()
            if machine.reset_cause() != machine.WDT_RESET:
                wdt = machine.WDT(timeout=200)
                asyncio.run(work(wdt))
                print("survived")
                raise RuntimeError("crash at top level")
            """,
        },
    )
    board, con = boot_board(emu, img)
    survived = con.wait("^survived$")
    assert [ln for ln in con.lines[:survived] if ln.startswith("cause")] == ["cause 1"]
    assert not any("task_wdt" in ln for ln in con.lines[:survived])
    halted = con.wait("^>>> $", start=survived)
    rebooted = con.wait("^cause 3$", 2, start=halted)
    assert 0.15 <= con.times[rebooted] - con.times[halted] < 1.0


def test_watchdog_cannot_be_disabled_only_retimed(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": WAKE
            + """\
            if machine.reset_cause() != machine.WDT_RESET:
                import time
                machine.WDT(timeout=10000)
                time.sleep_ms(50)  # the watchdog is now waiting on the 10 s deadline
                w = machine.WDT(timeout=200)  # a second WDT retimes the same watchdog
                print("deinit", hasattr(w, "deinit"))
                print("armed")
            """,
        },
    )
    board, con = boot_board(emu, img)
    assert con.value("deinit") is False
    armed = con.wait("^armed$")
    rebooted = con.wait("^cause 3$", 2, start=armed)
    assert con.times[rebooted] - con.times[armed] < 1.0


# -- 5. blocking calls ----------------------------------------------------------------


def test_blocking_sleep_in_a_task_is_reported_with_the_board_id(emu, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="esp32emu")
    img = image(
        tmp_path,
        {
            "main.py": """\
            import asyncio, time
            async def main():
                time.sleep(0.05)
                print("after")
            asyncio.run(main())
            """
        },
    )
    board, con = boot_board(emu, img, "blocker-7")
    con.wait("^after$")
    kinds = emu.call(lambda: [(k, m) for _, k, m in board.events if k == "blocking"])
    assert len(kinds) == 1 and "time.sleep(0.05)" in kinds[0][1]
    assert any("blocker-7" in r.getMessage() and "blocks the event loop" in r.getMessage() for r in caplog.records)


def test_sleep_in_boot_py_does_not_block_other_boards(emu, tmp_path):
    slow = image(tmp_path, {"boot.py": 'import time\nprint("A sleeping")\ntime.sleep(1)\nprint("A awake")\n', "main.py": 'print("A main")\n'})
    fast = image(tmp_path, {"main.py": 'print("B main")\n'})
    a, con_a = boot_board(emu, slow, "a")
    con_a.wait("^A sleeping$")
    b, con_b = boot_board(emu, fast, "b")
    b_main = con_b.times[con_b.wait("^B main$", 0.9)]
    awake = con_a.wait("^A awake$", 3)
    assert b_main < con_a.times[awake]
    assert con_a.times[awake] - con_a.times[0] >= 1.0
    con_a.wait("^A main$")
    assert not any(k == "blocking" for _, k, _m in a.events)


# -- 6. asyncio.run -------------------------------------------------------------------


def test_asyncio_run_blocks_returns_the_value_and_raises_into_main(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            import asyncio
            async def answer():
                await asyncio.sleep_ms(20)
                return 42
            print("returned", asyncio.run(answer()))
            async def fail():
                await asyncio.sleep_ms(5)
                raise OSError(104)
            try:
                asyncio.run(fail())
                print("caught", None)
            except OSError as e:
                print("caught", e.args)
            async def nested():
                try:
                    asyncio.run(answer())
                except RuntimeError:
                    return "refused"
            print("nested", repr(asyncio.run(nested())))
            print("end")
            """
        },
    )
    board, con = boot_board(emu, img)
    assert con.value("returned") == 42
    assert con.value("caught") == (104,)
    assert con.value("nested") == "refused"
    con.wait("^end$")
    assert "Traceback (most recent call last):" not in con.lines


def test_wait_for_times_out_cancels_the_awaitable_and_passes_results(emu, tmp_path):
    """MicroPython's wait_for / wait_for_ms: a result comes back, a timeout
    cancels the awaitable (a coroutine or a task) before TimeoutError is
    raised, None waits for ever, and cancelling the waiter cancels the wait."""
    img = image(
        tmp_path,
        {
            "main.py": """\
            import asyncio
            async def slow(name):
                try:
                    await asyncio.sleep_ms(5000)
                except asyncio.CancelledError:
                    print("cancelled", name)
                    raise
            async def quick():
                await asyncio.sleep_ms(5)
                return 7
            async def main():
                print("value", await asyncio.wait_for_ms(quick(), 500))
                print("seconds", await asyncio.wait_for(quick(), 0.5))
                print("forever", await asyncio.wait_for(quick(), None))
                try:
                    await asyncio.wait_for_ms(slow("coro"), 30)
                except asyncio.TimeoutError:
                    print("timeout", "coro")
                task = asyncio.create_task(slow("task"))
                try:
                    await asyncio.wait_for(task, 0.03)
                except asyncio.TimeoutError:
                    print("timeout", "task")
                print("task done", task.done())
                waiter = asyncio.create_task(asyncio.wait_for_ms(slow("waited"), 5000))
                await asyncio.sleep_ms(20)
                waiter.cancel()
                try:
                    await waiter
                except asyncio.CancelledError:
                    print("waiter", "cancelled")
                print("end")
            asyncio.run(main())
            """
        },
    )
    board, con = boot_board(emu, img)
    con.wait("^end$", timeout=10)
    lines = con.snapshot()
    assert con.value("value") == 7 and con.value("seconds") == 7 and con.value("forever") == 7
    # The awaitable is cancelled first, then TimeoutError reaches the caller.
    assert lines.index("cancelled coro") < lines.index("timeout coro")
    assert lines.index("cancelled task") < lines.index("timeout task")
    assert con.value("task done") is True
    assert lines.index("cancelled waited") < lines.index("waiter cancelled")
    assert "Traceback (most recent call last):" not in lines


def test_tasks_stop_when_the_board_halts_at_the_repl(emu, tmp_path):
    """At the REPL no event loop runs: background tasks are frozen, as on hardware."""
    img = image(
        tmp_path,
        {
            "main.py": """\
            import asyncio
            async def ticker():
                while True:
                    await asyncio.sleep_ms(10)
            async def main():
                asyncio.create_task(ticker())
                await asyncio.sleep_ms(30)
                raise ValueError("main died")
            asyncio.run(main())
            """
        },
    )
    board, con = boot_board(emu, img)
    con.wait("^>>> $")
    assert emu.call(lambda: [t for t in board.tasks if not t.done()]) == []


# -- 7. isolation and imports --------------------------------------------------------


def test_module_globals_are_per_board_and_per_boot(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "counter.py": "n = 0\n\ndef bump():\n    global n\n    n += 1\n    return n\n",
            "main.py": WAKE
            + """\
            import counter
            counter.bump()
            print("count", counter.bump())
            if machine.reset_cause() == machine.PWRON_RESET:
                machine.reset()
            """,
        },
    )
    a, con_a = boot_board(emu, img, "a")
    b, con_b = boot_board(emu, img, "b")
    for con in (con_a, con_b):
        first = con.wait("^count ")
        second = con.wait("^count ", start=first + 1)
        assert con.lines[first] == con.lines[second] == "count 2"


def test_imports_behave_like_micropython(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": """\
            def can_import(name):
                try:
                    __import__(name)
                    return True
                except ImportError:
                    return False
            print("missing", [n for n in ("threading", "socket", "subprocess", "emulator", "os.path", "pathlib") if can_import(n)])
            print("present", [n for n in ("time", "machine", "network", "esp32", "asyncio", "json", "struct", "gc") if not can_import(n)])
            import time, utime, uasyncio, asyncio, ujson, json, uos, os
            print("aliases", (utime is time, uasyncio is asyncio, ujson is json, uos is os, hasattr(utime, "ticks_ms")))
            try:
                from json import no_such_name
                print("fromlist", repr("imported"))
            except ImportError:
                print("fromlist", repr("ImportError"))
            """
        },
    )
    board, con = boot_board(emu, img)
    assert con.value("missing") == []
    assert con.value("present") == []
    assert con.value("aliases") == (True, True, True, True, True)
    assert con.value("fromlist") == "ImportError"


# -- 8. filesystem ---------------------------------------------------------------------


def test_filesystem_is_rooted_at_the_flash_dir_and_persists(emu, tmp_path):
    img = image(
        tmp_path,
        {
            "main.py": WAKE
            + """\
            import os, json
            print("cwd0", repr(os.getcwd()))
            try:
                with open("/count.txt") as f:
                    n = int(f.read())
            except OSError as e:
                print("absent", (e.args[0], e.errno))
                n = 0
            with open("/count.txt", "w") as f:
                f.write(str(n + 1))
            print("count", n + 1)
            with open("/config.json") as f:
                print("config", repr(json.load(f)["id"]))
            if machine.reset_cause() == machine.PWRON_RESET:
                with open("/../../escape.txt", "w") as f:
                    f.write("x")
                os.rename("/escape.txt", "moved.txt")
                print("listed", sorted(os.listdir("/")))
                os.remove("/moved.txt")
                print("after", sorted(os.listdir()))
                os.mkdir("/sub")
                os.chdir("sub")
                print("cwd", repr(os.getcwd()))
                machine.reset()
            """,
        },
    )
    board, con = boot_board(emu, img, config={"id": "fs-1"})
    assert con.value("absent") == (2, 2)
    assert con.value("cwd0") == "/"
    assert con.value("count") == 1
    assert con.value("config") == "fs-1"
    assert con.value("listed") == ["config.json", "count.txt", "moved.txt"]
    assert con.value("after") == ["config.json", "count.txt"]
    assert con.value("cwd") == "/sub"
    second = con.wait("^cause 2$")
    assert con.value("cwd0", start=second) == "/", "a reset starts again in /"
    assert con.value("count", start=second) == 2, "a file written by one boot is read by the next"
    assert (board.flash_dir / "count.txt").read_text() == "2"
    assert not list(tmp_path.rglob("escape.txt")) and not list(tmp_path.rglob("moved.txt"))


def test_module_copied_into_flash_overrides_the_image(emu, tmp_path):
    img = image(tmp_path, {"greet.py": 'MSG = "from image"\n', "main.py": 'import greet\nprint("msg", repr(greet.MSG))\n'})
    board, con = boot_board(emu, img)
    assert con.value("msg") == "from image"
    # What `mpremote cp greet.py :` does, then the EN button.
    (board.flash_dir / "greet.py").write_text('MSG = "from flash"\n')
    (board.flash_dir / "lib").mkdir()
    (board.flash_dir / "lib" / "extra.py").write_text("VALUE = 5\n")
    (board.flash_dir / "main.py").write_text('import greet, extra\nprint("msg", repr((greet.MSG, extra.VALUE)))\n')
    mark = len(con.snapshot())
    emu.call(board.hard_reset)
    assert con.value("msg", start=mark) == ("from flash", 5)
