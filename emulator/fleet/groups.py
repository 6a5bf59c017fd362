"""What every host of a fleet's `BoardGroup`s shares (workers.py: local
processes; emulator/cluster/: Ray actors): the parent's side of the worker
protocol (`GroupHost`: each group's messages, the fleet's stats summed over
the groups, per-group figures, groups lost on the way) and what a group
does when its node "dies" (`hold_sockets`).

A group's messages, whichever way they travel: ("ready", {...}) once built,
("stats", {...}) every half second, ("done", {...}) after a stop,
("error", "reason") when its boards' side failed.

A node that dies sends no FIN: its boards' sockets must not close when the
process running them goes away (the kernel would close them, and a FIN
makes the broker publish every Will at once). So the group abandons its
links (emulator/net/faults.py: no FIN, no more bytes), hands the sockets to
a small holder process that keeps them open until the broker drops them
(its keepalive, SPEC §4 item 5) or `hold_s` passes, and only then exits.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field

from emulator.observe.counting import percentile

# The holder: no emulator import (it must start anywhere the interpreter does);
# reads and drops what the broker sends, closes each socket once the broker has.
_HOLDER = """
import os, select, sys, time
deadline = time.monotonic() + float(sys.argv[1])
fds = {int(a) for a in sys.argv[2:]}
poll = select.poll()
for fd in fds:
    poll.register(fd, select.POLLIN)
while fds and time.monotonic() < deadline:
    for fd, _ in poll.poll(500):
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data and fd in fds:
            poll.unregister(fd)
            os.close(fd)
            fds.discard(fd)
"""


def will_bound_s(keepalive: float) -> float:
    """SPEC §4: a Will arrives within D = floor(1.5·KA) + 7 s of the last packet."""
    return math.floor(1.5 * keepalive) + 7


def hold_sockets(fds: list[int], hold_s: float) -> int:
    """Keep `fds` open in a new process (its own session: not ended with
    ours) for at most `hold_s`; returns its pid (0 when there is nothing)."""
    if not fds:
        return 0
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(hold_s), *map(str, fds)], pass_fds=fds,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc.pid


class WorkerError(RuntimeError):
    """The boards' side of a run failed (a worker process, or a scenario
    event in one); the message says why."""


@dataclass
class LostGroup:
    """A group that went away during the run: killed on purpose
    (`kill_group`: no FIN) or died by itself."""

    group: int
    indices: tuple[int, ...]
    at: float  # time.monotonic() of the kill, or when its death was noticed
    how: str  # "killed" | "died"
    reason: str = ""


@dataclass
class _Group:
    indices: tuple[int, ...]
    where: dict = field(default_factory=dict)  # node, host, pid: from the host
    ready: dict = field(default_factory=dict)
    latest: dict = field(default_factory=dict)
    lag_ms: list = field(default_factory=list)
    killing_at: float | None = None
    lost: LostGroup | None = None


class GroupHost:
    """The parent's side of K groups: subclasses move the messages (a Pipe
    per process, Ray calls per actor) and call `_handle` with each one."""

    engine = "processes"
    in_process = False  # the boards run elsewhere: this process only observes
    tolerate_loss = False  # a group that dies by itself: reported and the run goes on (else: the run fails)

    def __init__(self, specs: list):
        self.specs = specs
        self.devices = sum(len(s.indices) for s in specs)
        self.groups = [_Group(tuple(s.indices)) for s in specs]
        self.lag_ms: list[float] = []
        self.rss_base_kb = 0
        self.cpu_base_s = 0.0  # what building the boards cost: not part of the run
        self._done: list[asyncio.Future] = []
        self.lost: list[LostGroup] = []

    # -- subclasses -------------------------------------------------------------------

    def _send_blackout(self, w: int, hold_s: float) -> None:
        raise NotImplementedError

    # -- messages ---------------------------------------------------------------------

    def _ready(self, w: int, body: dict) -> None:
        self.groups[w].ready = body
        self.rss_base_kb += body["rss_base_kb"]
        self.cpu_base_s += body["cpu_s"]

    def _handle(self, w: int, kind: str, body) -> None:
        fut = self._done[w]
        if kind in ("stats", "done"):
            lag = body.pop("lag_ms")
            self.lag_ms.extend(lag)
            self.groups[w].lag_ms.extend(lag)
            self.groups[w].latest = body
            if kind == "done" and not fut.done():
                fut.set_result(body)
        elif kind == "error" and not fut.done():
            fut.set_exception(WorkerError(body))

    def _gone(self, w: int, reason: str) -> None:
        """Group w's process went away: lost (killed, or tolerated), or the
        run's failure."""
        g = self.groups[w]
        fut = self._done[w]
        if fut.done():
            return
        if g.killing_at is None and not self.tolerate_loss:
            fut.set_exception(WorkerError(reason))
            return
        how = "died" if g.killing_at is None else "killed"
        g.lost = LostGroup(w, g.indices, time.monotonic() if g.killing_at is None else g.killing_at, how,
                           "" if how == "killed" else reason)
        self.lost.append(g.lost)
        # its boards are gone: nothing booted, no memory (nor the base its process had
        # before them); the CPU it used stays counted
        g.latest = {**g.latest, "booted": 0, "halted": 0, "rss_kb": 0, "vm_rss_kb": 0, "vm_anon_kb": 0, "vm_procs": 0}
        self.rss_base_kb -= g.ready.get("rss_base_kb", 0)
        fut.set_result(g.latest)

    def kill_group(self, w: int, keepalive: float) -> None:
        """Group w's node dies now: its boards' sockets go silent without FIN,
        then its process ends (the report lists the boards that went with it)."""
        if not 0 <= w < len(self.groups):
            raise ValueError(f"there is no group {w} (groups 0..{len(self.groups) - 1})")
        g = self.groups[w]
        if g.killing_at is not None or g.lost is not None:
            return
        g.killing_at = time.monotonic()
        self._send_blackout(w, will_bound_s(keepalive) + 5.0)

    # -- figures ----------------------------------------------------------------------

    def failed(self) -> str | None:
        """Why a group stopped early, if one did (a lost group is not a failure)."""
        for fut in self._done:
            if fut.done() and not fut.cancelled() and fut.exception() is not None:
                return str(fut.exception())
        return None

    def stats(self) -> dict:
        latest = [g.latest for g in self.groups]
        return {
            "booted": sum(s.get("booted", 0) for s in latest),
            "halted": sum(s.get("halted", 0) for s in latest),
            "lag_ms": self.lag_ms,
            "rss_base_kb": self.rss_base_kb,
            "vm_rss_kb": sum(s.get("vm_rss_kb", 0) for s in latest),
            "vm_anon_kb": sum(s.get("vm_anon_kb", 0) for s in latest),
            "vm_procs": sum(s.get("vm_procs", 0) for s in latest),
            "vm_cpu_s": sum(s.get("vm_cpu_s", 0.0) for s in latest),
            "worker_rss_kb": sum(s.get("rss_kb", 0) for s in latest),
            "worker_cpu_s": max(sum(s.get("cpu_s", 0.0) for s in latest) - self.cpu_base_s, 0.0),
        }

    def describe(self) -> dict:
        """The report's `engine`, `nodes` and one row per group."""
        rows = []
        for w, g in enumerate(self.groups):
            lag = sorted(g.lag_ms)
            rows.append({
                "group": w,
                "node": g.where.get("node", "local"),
                "cpus": g.latest.get("cpus"),  # the CPUs the group's process may run on, as it sees them
                "boards": len(g.indices),
                "state": "running" if g.lost is None else g.lost.how,
                "rss_mb": round(g.latest.get("rss_kb", 0) / 1024, 1),
                "rss_base_mb": round(g.ready.get("rss_base_kb", 0) / 1024, 1),  # before its boards: rss_mb - this is theirs
                "cpu_s": round(max(g.latest.get("cpu_s", 0.0) - g.ready.get("cpu_s", 0.0), 0.0), 1),
                "loop_lag_p99_ms": percentile(lag, 99),
            })
        return {"engine": self.engine, "nodes": len({r["node"] for r in rows}), "groups": rows}
