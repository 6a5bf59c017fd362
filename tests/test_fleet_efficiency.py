"""What issue 15 made cheaper keeps behaving the same: a fleet on uvloop and
on the standard library's loop ($ESP32EMU_LOOP), the lean Event the boards'
firmware and links use, and the fake classes shared by every board."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.board.fakes import BoundClass
from emulator.board.fakes.machinefake import MachineModule, Pin
from emulator.fleet.workers import loop_name, run_loop
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


def test_an_unknown_loop_is_a_one_line_usage_error(tmp_path):
    r = subprocess.run(
        ESP32EMU + ["--state", str(tmp_path), "fleet", "--devices", "1", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO), "ESP32EMU_LOOP": "trio"},
    )
    assert r.returncode == 2, r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ESP32EMU_LOOP" in lines[0], r.stderr


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
