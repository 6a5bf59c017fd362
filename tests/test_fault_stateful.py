"""Random sequences of faults against real firmware and a real Mosquitto
(hypothesis stateful testing), with the invariants that must survive any
sequence: every board ends online with a correct retained status, `seq`
never goes backwards within a boot, no command is executed twice, and no
board ever crashes.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from emulator.broker.mosquitto import Broker
from emulator.testing.harness import Emulator
from tests.boards import is_birth
from tests.helpers import Observer

pytestmark = pytest.mark.integration

N_BOARDS = 2
KA = 2
LED = 2
_ids = itertools.count()


class FaultSequence(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="esp32emu-stateful-"))
        self.broker = Broker(self.tmp / "broker").start()
        self.emu = Emulator(self.tmp / "boards")
        self.obs = Observer(self.broker.host, self.broker.port, client_id=f"stateful-{next(_ids)}").connect()
        self.obs.subscribe("devices/#")
        self.boards = [
            self.emu.add_board(
                f"dev-f{i}", self.broker.host, self.broker.port, seed=i, keepalive=KA, interval=0.5,
                backoff={"base_ms": 200, "cap_ms": 1500},
            )
            for i in range(N_BOARDS)
        ]
        for b in self.boards:
            self.obs.wait_for(is_birth(b.id), 10)
        self.led_ids: dict[str, set[str]] = {b.id: set() for b in self.boards}

    # -- faults (the scenario file's names) ---------------------------------------

    @rule(i=st.integers(0, N_BOARDS - 1), off=st.sampled_from([0.0, 0.5]))
    def power_cycle(self, i: int, off: float) -> None:
        self.emu.call(self.boards[i].power_cycle, off)

    @rule(i=st.integers(0, N_BOARDS - 1))
    def reset(self, i: int) -> None:
        self.emu.call(self.boards[i].hard_reset)

    @rule(i=st.integers(0, N_BOARDS - 1), rst=st.booleans())
    def kill_connections(self, i: int, rst: bool) -> None:
        self.emu.call(self.boards[i].link.kill_connections, rst)

    @rule(i=st.integers(0, N_BOARDS - 1), rx=st.booleans(), duration=st.sampled_from([1.0, 5.0]))
    def blackhole(self, i: int, rx: bool, duration: float) -> None:
        link = self.boards[i].link
        self.emu.call(lambda: (link.blackhole(rx=rx, tx=True), self.emu.loop.call_later(duration, link.heal)))

    @rule(i=st.integers(0, N_BOARDS - 1))
    def wifi_down(self, i: int) -> None:
        ap = self.boards[i].ap
        self.emu.call(lambda: (ap.set_up(False), self.emu.loop.call_later(1.5, ap.set_up, True)))

    # -- traffic ---------------------------------------------------------------------

    @rule(i=st.integers(0, N_BOARDS - 1), twice=st.booleans())
    def led_command(self, i: int, twice: bool) -> None:
        dev = self.boards[i].id
        cmd_id = f"led-{next(_ids)}"
        self.led_ids[dev].add(cmd_id)
        payload = json.dumps({"id": cmd_id, "op": "led", "args": {"on": True}})
        self.obs.publish(f"devices/{dev}/cmd", payload)
        if twice:  # a redelivery with the same id, right behind the first
            self.obs.publish(f"devices/{dev}/cmd", payload)

    @rule(i=st.integers(0, N_BOARDS - 1))
    def makes_progress(self, i: int) -> None:
        """Liveness mid-sequence: the board publishes telemetry again soon
        after whatever the previous steps did to it."""
        dev = self.boards[i].id
        self.obs.wait_for(lambda m: m.topic == f"devices/{dev}/telemetry", 20, start=len(self.obs.messages))

    # -- the invariants, once every fault has healed ----------------------------------------

    def teardown(self) -> None:
        try:
            for b in self.boards:
                self.emu.call(b.link.heal)
                self.emu.call(b.ap.set_up, True)
            late = Observer(self.broker.host, self.broker.port, client_id=f"late-{next(_ids)}").connect()
            try:
                for b in self.boards:
                    boots = self.emu.call(lambda b=b: b.boots)
                    # settled: the board's latest status is the birth of its current boot
                    self.obs.wait_for(lambda _m, b=b, boots=boots: self._settled(b.id, boots), 20)
                    late.subscribe(f"devices/{b.id}/status")
                    final = late.wait_topic(f"devices/{b.id}/status", 5)
                    assert final.retain and final.json()["online"] is True and final.json()["boot"] == boots
            finally:
                late.close()
            for b in self.boards:
                self._check_seq(b.id)
                executed = self.emu.call(lambda b=b: b.pin_writes.get(LED, 0))
                assert executed <= len(self.led_ids[b.id]), f"{b.id}: {executed} LED executions for {len(self.led_ids[b.id])} ids"
                assert not self.emu.call(lambda b=b: b.halted), b.console_tail[-10:]
                assert not any("Traceback" in line for line in b.console_tail), b.console_tail[-20:]
        finally:
            self.obs.close()
            self.emu.close()
            self.broker.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _settled(self, dev: str, boots: int) -> bool:
        statuses = [m.json() for m in self.obs.messages if m.topic == f"devices/{dev}/status"]
        return bool(statuses) and statuses[-1].get("online") is True and statuses[-1].get("boot") == boots

    def _check_seq(self, dev: str) -> None:
        """Within one boot seq only grows (across reconnects too); it starts
        again only after the birth of a new boot."""
        boot, last = None, None
        for m in self.obs.messages:
            if m.topic == f"devices/{dev}/status" and m.json().get("online") is True:
                if m.json()["boot"] != boot:
                    boot, last = m.json()["boot"], None
            elif m.topic == f"devices/{dev}/telemetry":
                seq = m.json()["seq"]
                assert last is None or seq > last, f"{dev}: seq {seq} after {last} in boot {boot}"
                last = seq


FaultSequence.TestCase.settings = settings(
    max_examples=5,
    stateful_step_count=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
test_random_fault_sequences = FaultSequence.TestCase
