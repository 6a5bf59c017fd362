"""Where a fleet's boards run: a `BoardGroup` is a slice of the fleet on one
asyncio event loop (boot staggered on the fleet's global schedule, an
event-loop lag probe, scenario board events); `LocalBoards` runs one group
in this process, `WorkerPool` runs K groups in K spawned processes so a
fleet can use every core.

Board ids and indices stay global (`dev-00001`... whichever process runs
them): worker w of K runs the boards whose index i has i % K == w, so the
boot order across workers is the fleet's boot order.

No MQTT observing here and no report: fleet.py does those in the parent.
Workers talk to the parent over a multiprocessing Pipe: ("ready", n),
("stats", {...}) every half second, ("done", {...}) or ("error", "reason");
the parent's side is groups.GroupHost, shared with the Ray actors'
host (emulator/cluster/), whose actors run this same `_worker_main`.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from emulator.fleet.gcpolicy import Collector
from emulator.fleet.groups import GroupHost, WorkerError, hold_sockets
from emulator.run.scenario import ScenarioRunError

SETTLE_S = 5.0  # after the last board powers on, before the collector takes over
FREEZE_EVERY = 500  # boards booted between collector checkpoints (each walks only what those built)
STATS_EVERY_S = 0.5
BOARDS_PER_WORKER = 2500


@dataclass(frozen=True)
class GroupSpec:
    """Everything a process needs to build and run its boards (picklable)."""

    indices: tuple[int, ...]  # global board indices: board i is dev-{i+1:05d}
    devices: int  # the whole fleet's size (scenario selections are fleet-wide)
    host: str
    port: int
    tls: bool
    keepalive: int
    interval: float
    seed: int
    state_dir: Path
    certs_dir: Path
    boot_rate: float  # fleet-wide boards powered on per second
    scenario: Path | None = None
    vm: str | None = None  # None: CPython boards; "micropython": one interpreter process per board
    heap: str | None = None  # the VM boards' heap (emulator/board/vm/)
    username: str | None = None  # MQTT credentials from --broker mqtt://user:password@host
    password: str | None = None
    firmware: Path | None = None  # the firmware folder (default: the bundled one)
    loop: str = "asyncio"  # the event loop: "uvloop" or "asyncio" (loop_name())
    release_pub: bytes | None = None  # every board's release.pub (OTA manifests verify against it)


def auto_workers(devices: int, cores: int | None = None) -> int:
    """The default --workers: one process per BOARDS_PER_WORKER boards, at
    most one per core (measured: 5,000 boards at 500 msg/s take ~45 % of a
    core, loop lag p99 13 ms)."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, math.ceil(devices / BOARDS_PER_WORKER)))


LOOPS = ("uvloop", "asyncio")


def loop_name() -> str:
    """The event loop the fleet's boards run on: $ESP32EMU_LOOP ("uvloop" or
    "asyncio"), by default uvloop when it is installed (`pip install
    esp32emu[fast]`), else the standard library's."""
    want = os.environ.get("ESP32EMU_LOOP", "").strip().lower()
    if want and want not in LOOPS:
        raise ValueError(f"ESP32EMU_LOOP={want!r}: use one of {', '.join(LOOPS)}")
    if want == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if want == "uvloop":
            raise ValueError("ESP32EMU_LOOP=uvloop but uvloop is not installed (pip install uvloop)") from None
        return "asyncio"
    return "uvloop"


def worker_cpus(workers: int) -> list[int] | None:
    """The CPU each of `workers` local worker processes is pinned to, or None
    to leave them to the scheduler ($ESP32EMU_PIN=0, a single worker, or
    more workers than the CPUs this process may run on).

    Left to the scheduler, a worker is preempted a few hundred times a
    second (the broker it just woke runs on its CPU) and resumes wherever a
    CPU is free, with another worker's heap in that core's caches: measured
    on 2 cores, 5,000 boards at 10 s in two workers used 8.3 CPU-s in 30 s
    unpinned and 6.8 pinned (the same boards in one process: 5.4). The
    parent and the broker stay free to run anywhere."""
    want = os.environ.get("ESP32EMU_PIN", "").strip().lower()
    if want not in ("", "1", "0"):
        raise ValueError(f"ESP32EMU_PIN={want!r}: use 1 (pin the workers, the default) or 0")
    cpus = sorted(os.sched_getaffinity(0))
    if want == "0" or not 2 <= workers <= len(cpus):
        return None
    return [cpus[w * len(cpus) // workers] for w in range(workers)]


def run_loop(main, name: str | None = None):
    """asyncio.run(main) on the loop `loop_name()` picks (or `name`)."""
    if (name or loop_name()) == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def device_id(index: int) -> str:
    return f"dev-{index + 1:05d}"


def raise_fd_limit(want: int | None = None) -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard limit, and with `want` above the
    hard limit both up to `want` where the process may (root, or
    CAP_SYS_RESOURCE: up to /proc/sys/fs/nr_open); children (workers, a
    private Mosquitto) inherit it. Returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if want is not None and hard != resource.RLIM_INFINITY and want > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, want
        except (ValueError, OSError):
            pass
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a live process has used (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    """CPU seconds of this process's children that have ended and been waited for."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def rss_kb(pid: int | str = "self", field: str = "VmRSS") -> int:
    """Resident set size of a process in KiB (0 when it is gone); `field`
    "RssAnon": only its own pages, without the shared file mappings."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class _Elsewhere:
    """Stands in for a board that another worker runs: a scenario event
    selected it, so this worker draws the same random selection as every
    other worker, but whatever is done to it here does nothing."""

    def __init__(self, board_id: str | None = None):
        object.__setattr__(self, "id", board_id)

    def __getattr__(self, name):
        return _NOWHERE

    def __setattr__(self, name, value) -> None:
        pass

    def __call__(self, *args, **kwargs):
        return _NOWHERE


_NOWHERE = _Elsewhere()


class BoardGroup:
    """Some of a fleet's boards on the running event loop."""

    def __init__(self, spec: GroupSpec):
        self.spec = spec
        self.boards: list = []
        self.lag_ms: list[float] = []  # every probe's overshoot, in order
        self.rss_base_kb = 0
        self.collector = Collector()
        self._tasks: list[asyncio.Task] = []
        self._vm_cpu0 = 0.0

    def build(self) -> None:
        from emulator.board.loader import FIRMWARE_DIR, FirmwareImage

        image = FirmwareImage(self.spec.firmware or FIRMWARE_DIR)
        self.rss_base_kb = rss_kb()
        for i in self.spec.indices:
            self.boards.append(make_board(self.spec, i, image))
        self._vm_cpu0 = children_cpu_s()  # VM processes that end from here on count (compiling the firmware does not)

    def start(self, t0: float, broker=None, board_events_only: bool = False) -> None:
        """Start booting at monotonic time t0 (the fleet's, shared by every
        worker); `broker` is the private Broker for scenario broker events."""
        self._tasks = [
            asyncio.create_task(self._boot_staggered(t0)),
            asyncio.create_task(self._lag_probe()),
        ]
        if self.spec.scenario is not None:
            self._tasks.append(asyncio.create_task(self._scenario(t0, broker, board_events_only)))

    async def _boot_staggered(self, t0: float) -> None:
        gap = 1.0 / self.spec.boot_rate
        for n, board in enumerate(self.boards, 1):
            delay = t0 + board.index * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            board.start()
            if n % FREEZE_EVERY == 0:
                self.collector.checkpoint()
        await asyncio.sleep(SETTLE_S)
        self.collector.start()

    async def _lag_probe(self) -> None:
        # How late the loop runs a wake: at every slot of the boards' timer
        # wheel (16 a second), after the boards woken there, so a slot's
        # burst of boards counts as lag; no timer or wake of its own.
        from emulator.board.fakes.asynciofake import next_slot

        while True:
            due, fut = next_slot()
            await fut
            await asyncio.sleep(0)  # behind the boards this slot woke (the first futures set run first)
            self.lag_ms.append(max(time.monotonic() - due, 0.0) * 1000)

    async def _scenario(self, t0: float, broker, board_events_only: bool) -> None:
        from emulator.run.scenario import Timeline
        from emulator.run.scenario import load as load_scenario

        scenario = load_scenario(self.spec.scenario)
        if board_events_only:
            scenario = replace(scenario, events=[e for e in scenario.events if e.target != "broker"])
        if len(self.boards) == self.spec.devices:
            slots = self.boards
        else:  # the whole fleet in index order, other workers' boards as stand-ins
            mine = {b.index: b for b in self.boards}
            slots = [mine.get(i) or _Elsewhere(device_id(i)) for i in range(self.spec.devices)]
        delay = t0 - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await Timeline(scenario, slots, broker).run()

    def failed(self) -> str | None:
        """Why one of the group's tasks (boot schedule, lag probe, scenario) ended
        with an error, if one did: the run stops with it."""
        for t in self._tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                e = t.exception()
                return str(e) if isinstance(e, ScenarioRunError) else f"{type(e).__name__}: {e}"
        return None

    def counts(self) -> dict:
        return {
            "booted": sum(1 for b in self.boards if b.running),
            "halted": sum(1 for b in self.boards if b.halted),
            **self.vm_usage(),
        }

    def vm_usage(self) -> dict:
        """The VM boards' interpreter processes (none for CPython boards):
        RSS summed over the live ones, from /proc/<pid>/status; CPU of the
        live ones plus every one that ended since build() (waited for)."""
        if self.spec.vm is None:
            return {"vm_rss_kb": 0, "vm_anon_kb": 0, "vm_procs": 0, "vm_cpu_s": 0.0}
        pids = [b.proc.pid for b in self.boards if b.proc is not None and b.proc.returncode is None]
        rss = [rss_kb(pid) for pid in pids]
        return {
            "vm_rss_kb": sum(rss),
            "vm_anon_kb": sum(rss_kb(pid, "RssAnon") for pid in pids),
            "vm_procs": sum(1 for r in rss if r),
            "vm_cpu_s": children_cpu_s() - self._vm_cpu0 + sum(cpu_s(pid) for pid in pids),
        }

    def blackout(self) -> list[int]:
        """The group's node dies: every board's link abandoned (no FIN, no
        more bytes); returns the file descriptors of the sockets still open,
        for a holder process to keep after this one is gone (groups.py)."""
        fds = []
        for board in self.boards:
            link = getattr(board, "link", None)
            if link is None:
                continue
            link.abandon_connections()
            fds += [sock.fileno() for sock in link.open_sockets()]
        return fds

    async def stop(self) -> None:
        """Cancel the group's own tasks, then shut the boards down the way
        Ctrl-C does (planned offline, then power off)."""
        from emulator.run.stopping import shutdown_gracefully

        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.collector.stop()
        await shutdown_gracefully([b for b in self.boards if b.running], timeout=10)


def make_board(spec: GroupSpec, index: int, image):
    """Board `index` of the fleet on the spec's backend: the one place where
    a fleet makes a board (`image` is the loaded firmware, shared)."""
    from emulator.broker.certs import install_tls
    from emulator.firmware.config import board_broker
    from emulator.firmware.config import default_config
    from emulator.validation import BrokerURL

    did = device_id(index)
    url = BrokerURL("mqtts" if spec.tls else "mqtt", spec.host, spec.port, username=spec.username, password=spec.password)
    cfg = default_config(did, spec.host, spec.port, keepalive=spec.keepalive, interval=spec.interval, broker=board_broker(url))
    if spec.vm == "micropython":
        from emulator.board.vm.board import VmBoard
        from emulator.board.vm.interpreter import DEFAULT_HEAP

        board = VmBoard(did, spec.state_dir / "vm-boards" / did, heap=spec.heap or DEFAULT_HEAP, seed=spec.seed, index=index,
                        config=cfg, firmware=image.directory)
    else:
        from emulator.board.board import Board

        board = Board(did, image, spec.state_dir / "boards" / did, config=cfg, seed=spec.seed, index=index)
    if spec.tls:
        install_tls(board, spec.certs_dir)
    if spec.release_pub is not None:
        board.install_files({"release.pub": spec.release_pub})
    return board


class LocalBoards:
    """The whole fleet in this process (--workers 1)."""

    engine = "local"
    in_process = True

    def __init__(self, spec: GroupSpec):
        self.group = BoardGroup(spec)
        self.devices = len(spec.indices)

    def build(self) -> None:
        self.group.build()

    def start(self, t0: float, broker=None) -> None:
        self.group.start(t0, broker)

    def failed(self) -> str | None:
        return self.group.failed()

    def stats(self) -> dict:
        return {
            **self.group.counts(),
            "lag_ms": self.group.lag_ms,
            "rss_base_kb": self.group.rss_base_kb,
            "worker_rss_kb": 0,  # the parent measures itself
            "worker_cpu_s": 0.0,
        }

    async def stop(self) -> None:
        await self.group.stop()

    def kill(self) -> None:
        pass

    def describe(self) -> dict:
        return {"engine": self.engine, "nodes": 1}


# -- worker processes ------------------------------------------------------------------


def _worker_main(spec: GroupSpec, conn) -> None:
    """A spawned worker: build, report ready, run from the parent's t0 until
    the parent says stop (or goes away), shut down, report done."""
    if threading.current_thread() is threading.main_thread():  # (a Ray actor runs this in a thread)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us in order
    raise_fd_limit()
    try:
        group = BoardGroup(spec)
        group.build()
        ready = {"boards": len(group.boards), "rss_base_kb": group.rss_base_kb, "cpu_s": time.process_time()}
        conn.send(("ready", ready))
        msg = conn.recv()
        if msg[0] != "go":
            return
        run_loop(_worker_loop(group, conn, msg[1]), spec.loop)
    except (EOFError, BrokenPipeError):
        return
    except Exception as e:  # reported to the parent, which exits with it
        try:
            conn.send(("error", f"worker {os.getpid()}: {type(e).__name__}: {e}"))
        except OSError:
            pass


async def _worker_loop(group: BoardGroup, conn, t0: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_message() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = ("stop",)  # the parent is gone
        if msg[0] == "stop":
            loop.remove_reader(conn.fileno())
            stop.set()
        elif msg[0] == "blackout":  # the node dies: sockets held open elsewhere, then this process ends
            hold_sockets(group.blackout(), msg[1])
            os._exit(0)

    loop.add_reader(conn.fileno(), on_message)
    group.start(t0, broker=None, board_events_only=True)
    sent = 0

    def stats() -> dict:
        nonlocal sent
        new = group.lag_ms[sent:]
        sent += len(new)
        return {**group.counts(), "lag_ms": new, "rss_kb": rss_kb(), "cpu_s": time.process_time(),
                "cpus": sorted(os.sched_getaffinity(0))}

    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), STATS_EVERY_S)
        except asyncio.TimeoutError:
            pass
        failed = group.failed()
        if failed is not None:  # the parent stops the run with it
            await group.stop()
            conn.send(("error", failed))
            return
        conn.send(("stats", stats()))
    await group.stop()
    conn.send(("done", stats()))


class WorkerPool(GroupHost):
    """K spawned processes, each running a BoardGroup; stats aggregated (groups.py)."""

    def __init__(self, specs: list[GroupSpec]):
        super().__init__(specs)
        ctx = multiprocessing.get_context("spawn")
        self.conns = []
        self.procs = []
        for spec in specs:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(spec, child), daemon=True, name=f"esp32emu-worker-{len(self.procs)}")
            self.conns.append(parent)
            self.procs.append(proc)

    def build(self, timeout: float = 120.0) -> None:
        """Start the processes and wait until every one has built its boards."""
        self.rss_base_kb = rss_kb()  # this process: the observer and the view, no boards
        cpus = worker_cpus(len(self.procs))
        for w, proc in enumerate(self.procs):
            proc.start()
            if cpus is not None:
                os.sched_setaffinity(proc.pid, {cpus[w]})
        deadline = time.monotonic() + timeout
        for w, conn in enumerate(self.conns):
            if not conn.poll(max(deadline - time.monotonic(), 0)):
                raise WorkerError(f"worker {w} did not build its boards within {timeout:.0f} s")
            try:
                kind, body = conn.recv()
            except EOFError:
                raise WorkerError(f"worker {w} died while building its boards (exit {self.procs[w].exitcode})") from None
            if kind == "error":
                raise WorkerError(body)
            self._ready(w, body)

    def start(self, t0: float, broker=None) -> None:
        loop = asyncio.get_running_loop()
        for w, conn in enumerate(self.conns):
            fut = loop.create_future()
            self._done.append(fut)
            loop.add_reader(conn.fileno(), self._on_message, w, fut)
            conn.send(("go", t0))

    def _on_message(self, w: int, fut: asyncio.Future) -> None:
        conn = self.conns[w]
        try:
            kind, body = conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            self.procs[w].join(timeout=0.5)  # for its exit code
            self._gone(w, f"worker {w} exited (code {self.procs[w].exitcode})")
            return
        if kind == "done":
            asyncio.get_running_loop().remove_reader(conn.fileno())
        self._handle(w, kind, body)

    def _send_blackout(self, w: int, hold_s: float) -> None:
        try:
            self.conns[w].send(("blackout", hold_s))
        except OSError:
            pass

    async def stop(self, timeout: float = 30.0) -> None:
        for conn in self.conns:
            try:
                conn.send(("stop",))
            except OSError:
                pass
        if self._done:
            await asyncio.wait(self._done, timeout=timeout)
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def kill(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()


def split(indices: range, k: int) -> list[tuple[int, ...]]:
    """Round-robin slices: worker w gets the indices i with i % k == w."""
    return [tuple(indices[w::k]) for w in range(k)]
