"""`esp32emu fleet --ray [ADDRESS]`: a fleet's board groups as Ray actors.

One group = one async actor (`GroupActor`) that runs workers.py's
`_worker_main` -- the very function a `--workers` process runs -- in a
thread of the actor's process, over a Pipe whose other end the actor's
methods hold: `build` waits for ("ready", ...), `go` passes the fleet's t0,
`poll` hands the driver every message since the last call, `stop` asks for
("done", ...). The driver side (`RayPool`) is a groups.GroupHost like the
local `WorkerPool`: same stats, same report, plus the nodes the groups ran
on. Ids, seeds, the boot schedule and scenario board events are the
worker's, so a `--ray` fleet and a `--workers K` fleet of the same size
are the same fleet.

Placement: a placement group of K bundles with strategy SPREAD (groups on
as many nodes as the cluster has, best effort), each bundle a core when
the cluster has K of them, else an equal share. Each actor raises its own
process's open-file limit and refuses (`GroupRefused`, one line naming the
node) when its node's hard limit cannot hold its boards.

The boot schedule's t0 crosses machines as wall-clock time (each node's
monotonic clock has its own origin): nodes are expected to keep NTP time.

A group whose actor dies (its node went away, the OOM killer, `kill_group`)
is reported with its boards (groups.LostGroup) and the fleet goes on.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
import multiprocessing
import os
import socket
import sys
import threading
import time
from dataclasses import replace

from emulator.fleet.groups import GroupHost, WorkerError
from emulator.fleet.run import FD_RESERVE, FDS_PER_BOARD, FDS_PER_VM_BOARD
from emulator.fleet.workers import BOARDS_PER_WORKER, STATS_EVERY_S, _worker_main, raise_fd_limit, rss_kb
from emulator.validation import UsageError

INSTALL = "pip install 'esp32emu[ray]'"
BUILD_TIMEOUT_S = 300.0  # building the groups' boards
PLACE_TIMEOUT_S = 60.0  # the cluster finding room for the groups
# A local instance: Ray's workers (the groups' actors, so their boards) at the
# driver's priority, not Ray's default nice 15, under which the boards' loops
# lagged whenever the machine was busy (loop lag p99 24-44 ms against 4-10 ms
# with --workers); and no idle worker started ahead of time (the actors get
# theirs when they are created): one ~79 MB process fewer.
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0, "prestart_worker_first_driver": False, "enable_worker_prestart": False}


def need_ray():
    """The `ray` module, or the one-line UsageError (exit 2) that says how to get it."""
    try:
        import ray
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed here: {INSTALL}") from None
    return ray


def default_groups(devices: int) -> int:
    """--groups by default: one per BOARDS_PER_WORKER boards (what one event loop holds well)."""
    return max(1, math.ceil(devices / BOARDS_PER_WORKER))


def bundle_cpu(node_cpus: list[float], k: int) -> float:
    """The CPU each of k groups asks for: a core when the nodes have k to
    give, else the largest equal share that still packs k bundles onto the
    nodes as they are (a bundle does not span nodes); at least 0.01."""
    best = 0.01
    for cpu in node_cpus:
        for per_node in range(1, k + 1):
            share = min(1.0, math.floor(cpu / per_node * 100) / 100)
            if share > best and sum(int(c // share) for c in node_cpus) >= k:
                best = share
    return best


def fds_needed(spec) -> int:
    return len(spec.indices) * (FDS_PER_VM_BOARD if spec.vm else FDS_PER_BOARD) + FD_RESERVE


class GroupRefused(RuntimeError):
    """A group cannot run where Ray placed it (its node's open-file limit,
    its boards did not build); the message names the node."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class GroupActor:
    """One BoardGroup on a Ray node (made a Ray actor by `RayPool`: Ray stays
    an optional import). Its methods are async: Ray runs them on the actor's
    own event loop while the boards run on theirs, in `_worker_main`'s thread."""

    def __init__(self, spec, group: int):
        self.spec = spec
        self.group = group
        self.conn = None
        self.thread: threading.Thread | None = None

    async def where(self) -> dict:
        import ray

        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id(), "host": socket.gethostname(), "ip": ray.util.get_node_ip_address(), "pid": os.getpid(),
                "nice": os.nice(0)}

    async def build(self, timeout: float) -> dict:
        need = fds_needed(self.spec)
        soft, hard = raise_fd_limit(need)
        if soft < need:
            raise GroupRefused(
                f"group {self.group} on {socket.gethostname()}: {len(self.spec.indices)} boards need about {need} open files "
                f"but this node's limit is {hard}: raise it on the node before `ray start` (ulimit -n {need}, "
                f"LimitNOFILE) or use more --groups"
            )
        parent, child = multiprocessing.Pipe()
        self.conn = parent
        self.thread = threading.Thread(target=_worker_main, args=(self.spec, child), daemon=True,
                                       name=f"esp32emu-group-{self.group}")
        self.thread.start()
        if not await asyncio.to_thread(parent.poll, timeout):
            raise GroupRefused(f"group {self.group} on {socket.gethostname()} did not build its boards within {timeout:.0f} s")
        kind, body = parent.recv()
        if kind != "ready":
            raise GroupRefused(f"group {self.group} on {socket.gethostname()}: {body}")
        return body

    async def go(self, t0_wall: float) -> None:
        self.conn.send(("go", time.monotonic() + (t0_wall - time.time())))

    def _take(self) -> list:
        out = []
        try:
            while self.conn.poll():
                out.append(self.conn.recv())
        except (EOFError, OSError):
            out.append(("error", f"group {self.group}: its boards' thread ended without a word"))
        return out

    async def poll(self) -> list:
        """Every message the group sent since the last call."""
        return self._take()

    async def stop(self, timeout: float) -> list:
        """Stop the boards the way a worker does; the messages up to ("done", ...)."""
        self.conn.send(("stop",))
        out: list = []
        deadline = time.monotonic() + timeout
        while not any(kind in ("done", "error") for kind, _ in out):
            left = deadline - time.monotonic()
            if left <= 0 or not await asyncio.to_thread(self.conn.poll, left):
                break
            out.extend(self._take())
        await asyncio.to_thread(self.thread.join, 5)
        return out

    async def blackout(self, hold_s: float) -> None:
        """The node dies: the group's thread holds its sockets elsewhere and
        ends this process (workers.py); this call never returns."""
        self.conn.send(("blackout", hold_s))
        await asyncio.sleep(3600)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class RayPool(GroupHost):
    """K groups as Ray actors, placed SPREAD over the cluster's nodes."""

    engine = "ray"
    tolerate_loss = True

    def __init__(self, specs: list, address: str | None = None):
        super().__init__([_absolute(s) for s in specs])
        self.ray = need_ray()
        self.address = address  # None: a local instance; "auto", "host:port", "ray://host:port": join it
        self.actors: list = []
        self.pg = None
        self._connected_here = False
        self._pump: asyncio.Task | None = None
        self._blackouts: list = []

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():  # the caller connected (a test session, a notebook): theirs to end
            return
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.address is None:
                ray.init(address="local", **quiet, _system_config=LOCAL_SYSTEM_CONFIG)  # a new instance, never one found running
            else:
                ray.init(address=self.address, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise WorkerError(f"--ray {self.address or ''}: cannot start or join Ray: {_first_line(e)}".replace("  ", " ")) from None
        self._connected_here = True

    def build(self, timeout: float = BUILD_TIMEOUT_S) -> None:
        ray = self.ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._connect()
        self.rss_base_kb = rss_kb()  # this process: the observer, the view and Ray's driver side, no boards
        k = len(self.specs)
        node_cpus = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        share = bundle_cpu(node_cpus, k)
        cpus = sum(node_cpus)
        self.pg = placement_group([{"CPU": share}] * k, strategy="SPREAD")
        try:
            ray.get(self.pg.ready(), timeout=min(timeout, PLACE_TIMEOUT_S))
        except ray.exceptions.GetTimeoutError:
            raise WorkerError(f"Ray could not place {k} groups of {share} CPU within {min(timeout, PLACE_TIMEOUT_S):.0f} s "
                              f"(the cluster has {cpus:g} CPUs)") from None
        actor = ray.remote(GroupActor)
        for w, spec in enumerate(self.specs):
            strategy = PlacementGroupSchedulingStrategy(placement_group=self.pg, placement_group_bundle_index=w)
            self.actors.append(actor.options(num_cpus=share, scheduling_strategy=strategy, max_restarts=0).remote(spec, w))
        try:
            wheres = ray.get([a.where.remote() for a in self.actors], timeout=timeout)
            ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}  # the address Ray knows the node by
            for g, where in zip(self.groups, wheres):
                g.where = {**where, "node": where["node"][:12], "ip": ips.get(where["node"], where["ip"])}
            readies = ray.get([a.build.remote(timeout) for a in self.actors], timeout=timeout)
        except ray.exceptions.RayTaskError as e:
            raise WorkerError(_first_line(e.cause if e.cause is not None else e)) from None
        except ray.exceptions.RayError as e:
            raise WorkerError(f"a group's actor failed while building its boards: {_first_line(e)}") from None
        for w, body in enumerate(readies):
            self._ready(w, body)
        for w, g in enumerate(self.groups):
            print(f"esp32emu: group {w}: {len(g.indices)} boards on node {g.where['node']} ({g.where['host']}, "
                  f"{g.where['ip']}, nice {g.where['nice']}, pid {g.where['pid']})", file=sys.stderr, flush=True)
        niced = sorted({g.where["nice"] for g in self.groups} - {0})
        if niced:
            print(f"esp32emu: warning: Ray runs the groups' boards at nice {niced[-1]} (its worker_niceness): their loops lag "
                  f"whenever a node is busy; start the nodes with RAY_worker_niceness=0 in `ray start`'s environment",
                  file=sys.stderr, flush=True)
        host = self.specs[0].host if self.specs else "127.0.0.1"
        if _is_loopback(host) and any(not _is_loopback(g.where["ip"]) for g in self.groups) and len({g.where["ip"] for g in self.groups}) > 1:
            print(f"esp32emu: warning: the broker is {host}, a loopback address, but the groups run on several "
                  f"machines: give --broker an address every node reaches", file=sys.stderr, flush=True)

    def start(self, t0: float, broker=None) -> None:
        loop = asyncio.get_running_loop()
        self._done = [loop.create_future() for _ in self.actors]
        t0_wall = time.time() + (t0 - time.monotonic())
        self.ray.get([a.go.remote(t0_wall) for a in self.actors])
        self._pump = asyncio.create_task(self._pump_messages())

    async def _pump_messages(self) -> None:
        while True:
            await asyncio.sleep(STATS_EVERY_S)
            live = [w for w, fut in enumerate(self._done) if not fut.done()]
            calls = [self.actors[w].poll.remote() for w in live]
            for w, messages in zip(live, await asyncio.gather(*calls, return_exceptions=True)):
                self._take(w, messages)

    def _take(self, w: int, messages) -> None:
        if isinstance(messages, BaseException):
            if isinstance(messages, self.ray.exceptions.RayError):
                where = self.groups[w].where
                self._gone(w, f"group {w} on node {where.get('node')} ({where.get('host')}): {_first_line(messages)}")
                return
            raise messages
        for kind, body in messages:
            self._handle(w, kind, body)

    def _send_blackout(self, w: int, hold_s: float) -> None:
        self._blackouts.append(self.actors[w].blackout.remote(hold_s))

    async def stop(self, timeout: float = 30.0) -> None:
        if self._pump is not None:
            self._pump.cancel()
            await asyncio.gather(self._pump, return_exceptions=True)
        live = [w for w, fut in enumerate(self._done) if not fut.done()]
        results = await asyncio.gather(*(self.actors[w].stop.remote(timeout) for w in live), return_exceptions=True)
        for w, messages in zip(live, results):
            self._take(w, messages)

    def kill(self) -> None:
        """End the actors and the placement group; leave Ray (a local instance ends with us)."""
        ray = self.ray
        if not ray.is_initialized():
            return
        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # already gone
                pass
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.pg)
            except Exception:
                pass
        if self._connected_here:
            ray.shutdown()

    def describe(self) -> dict:
        out = super().describe()
        for row, g in zip(out["groups"], self.groups):
            row["host"] = g.where.get("host")
        return out


def _absolute(spec):
    """Paths as every node sees them (an actor's working directory is Ray's, not ours)."""
    def absolute(p):
        return None if p is None else p.resolve()

    return replace(spec, state_dir=spec.state_dir.resolve(), certs_dir=spec.certs_dir.resolve(),
                   scenario=absolute(spec.scenario), firmware=absolute(spec.firmware))


def ray_host(address: str | None):
    """FleetOptions.host for `--ray [ADDRESS]` (Ray checked now: exit 2 without it)."""
    need_ray()
    return lambda specs: RayPool(specs, None if address in (None, "", "local") else address)
