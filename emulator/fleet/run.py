"""`esp32emu fleet`: N emulated boards against one broker — in this process
(one asyncio event loop) or spread over `--workers K` processes — with a live
view and a JSON report whose numbers come from an independent paho-mqtt
observer in this process (see emulator/observe/counting.py), never from the boards counting
themselves.

Boards boot staggered on one fleet-wide schedule (`--boot-rate` per second),
each with its own flash directory, identity (`dev-00001`...) and seed; with
`--vm micropython` each is one MicroPython process (emulator/board/vm/, made by
workers.make_board: the rest of the fleet does not know the backend). Where
the boards run is workers.py; the live view's pieces are shared with
`esp32emu watch` (watch.py).

Scenario files work with any K: broker events run here, board events run in
every worker against the whole fleet's index order with the scenario's seed,
so each worker draws the same random selection and acts on its own boards.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from emulator.board.backends import board_modules
from emulator.broker.certs import provision_tls, release_files
from emulator.broker.pick import broker_for, check_inputs
from emulator.dashboard.server import beside
from emulator.firmware.folder import pick_firmware
from emulator.fleet.groups import will_bound_s
from emulator.fleet.workers import GroupSpec, LocalBoards, WorkerError, WorkerPool, device_id, loop_name, rss_kb, run_loop, split, worker_cpus
from emulator.observe.counting import FleetObserver, percentile
from emulator.observe.watch import Rate, rtt_text, worst_table
from emulator.run import scenario as scenario_mod
from emulator.run.scenario import load_scenario
from emulator.run.stopping import wait_for_stop_signal
from emulator.validation import BOOT_RATE, DEVICES, DURATION, INTERVAL, KEEPALIVE, WORKERS, writable_file
from emulator.validation import UsageError

FDS_PER_BOARD = 1  # one MQTT socket per board
FD_RESERVE = 64  # broker probe, observer, log files, worker pipes, the interpreter itself
# A VM board in the process that runs it: the link proxy's listening socket and
# both ends of its connection, the shims' channel (listener, request and event
# connections), the console pipe, and one spare for a reconnect's overlap.
FDS_PER_VM_BOARD = 8
# What VM boards cost in memory, measured with bench/vm_fleet.py (README "Fleets
# on the real interpreter"): each interpreter process has ~10.7 MB VmRSS, of
# which ~7.9 MB are file pages every process shares (libpython, the extension
# module) and ~2.9 MB its own (RssAnon, with a 160k heap); the host adds ~0.1 MB
# per board (link proxy, shim channel). Estimated with margin:
VM_SHARED_KB = 8 * 1024  # once for the fleet
VM_BOARD_BASE_KB = 3 * 1024 + 512  # per board, plus its heap
VM_MEMORY_SHARE = 0.8  # of MemAvailable: the rest is left to the broker and the machine
# CPU of one VM board (its interpreter, link proxy and shim channel), % of a core:
# idle plus a share per telemetry message a second. bench/vm_fleet.py --sizes 10
# --heaps 100k --window 30 --interval 10 (and --interval 1): 0.09 % and 0.38 %.
VM_BOARD_IDLE_CPU_PCT = 0.06
VM_BOARD_CPU_PCT_PER_MSG_S = 0.32


def vm_board_cpu_pct(interval: float) -> float:
    return VM_BOARD_IDLE_CPU_PCT + VM_BOARD_CPU_PCT_PER_MSG_S / interval


@dataclass
class FleetOptions:
    devices: int
    broker: str | None
    interval: float
    keepalive: int
    duration: float | None
    seed: int
    report: Path | None
    state_dir: Path
    boot_rate: float = 200.0  # boards powered on per second, fleet-wide
    cmd_sample: int = 10  # online boards pinged by the observer every interval
    quiet: bool = False
    certs_dir: Path = Path("certs")  # the PKI for mqtts:// (one client cert per board)
    scenario: Path | None = None  # a TOML timeline of faults (emulator/run/scenario.py)
    workers: int = 1  # processes running boards
    vm: str | None = None  # "micropython": every board one interpreter process (emulator/board/vm/)
    heap: str | None = None  # their heap (default emulator.board.vm.interpreter.DEFAULT_HEAP)
    firmware: Path | None = None  # --firmware (firmware.folder.pick_firmware: else ./firmware, else the bundled one)
    dashboard: int | None = None  # --dashboard PORT: the web backend on this fleet's observer (emulator/dashboard/)
    # Another host for the `workers` groups than local processes: called with their
    # GroupSpecs, returns a groups.GroupHost (emulator/cluster/: Ray actors, --ray)
    host: Callable[[list[GroupSpec]], object] | None = None
    kill_group: tuple[int, float] | None = None  # --kill-group G@S: group G's node dies S s into the run


def check_fd_limit(devices: int, workers: int = 1, private_broker: bool = True, per_board: int = FDS_PER_BOARD) -> None:
    """Raise the soft open-file limit to the hard one if needed; UsageError
    if even that is too low. A private Mosquitto inherits our limit and holds
    every board's connection, so then the whole fleet counts; a process
    running boards holds `per_board` for each of its own."""
    need = math.ceil(devices / workers) * per_board + FD_RESERVE
    if private_broker:
        need = max(need, devices * FDS_PER_BOARD + FD_RESERVE)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return
    raise UsageError(
        f"{devices} boards need about {need} open files but the open-file limit is {hard}: "
        f"raise it (`ulimit -n {need}` in the shell, or LimitNOFILE / limits.conf) or use fewer --devices"
    )


def mem_available_kb() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def check_vm_capacity(devices: int, heap: str, interval: float) -> None:
    """UsageError when the machine cannot host `devices` interpreter
    processes: their estimated memory against what is available, and the
    per-user process limit (open files: check_fd_limit)."""
    from emulator.validation import heap_bytes

    per_board_kb = VM_BOARD_BASE_KB + heap_bytes(heap) // 1024
    available = mem_available_kb()
    need_kb = VM_SHARED_KB + devices * per_board_kb
    if available is not None and need_kb > available * VM_MEMORY_SHARE:
        fit = max(int((available * VM_MEMORY_SHARE - VM_SHARED_KB) // per_board_kb), 0)
        raise UsageError(
            f"{devices} VM boards need about {need_kb / 1024:.0f} MB "
            f"({per_board_kb / 1024:.1f} MB each with heap {heap}) but {available / 1024:.0f} MB is available: "
            f"this machine hosts about {fit}; use fewer --devices or a smaller --heap"
        )
    cores = os.cpu_count() or 1
    pct = vm_board_cpu_pct(interval)
    if devices * pct > cores * 100:
        print(f"esp32emu: warning: {devices} VM boards need about {devices * pct / 100:.1f} cores "
              f"({pct:.2f} % each) and this machine has {cores}: expect late telemetry and timeouts",
              file=sys.stderr, flush=True)
    need = 2 * devices + 64  # each board's process and the thread that waits for it (plus ours)
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise UsageError(f"{devices} VM boards need about {need} processes and threads but the process limit "
                             f"(ulimit -u) is {hard}: raise it or use fewer --devices")
        resource.setrlimit(resource.RLIMIT_NPROC, (hard, hard))


def validate(opts: FleetOptions) -> None:
    DEVICES.check("--devices", opts.devices)
    WORKERS.check("--workers", opts.workers)
    if opts.host is None and opts.workers > max(64, os.cpu_count() or 1):
        raise UsageError(f"--workers must be 1..{max(64, os.cpu_count() or 1)}, got {opts.workers}")
    if opts.workers > opts.devices:
        raise UsageError(f"--workers ({opts.workers}) cannot exceed --devices ({opts.devices})")
    KEEPALIVE.check("--keepalive", opts.keepalive)
    INTERVAL.check("--interval", opts.interval)
    if opts.duration is not None:
        DURATION.check("--duration", opts.duration)
    BOOT_RATE.check("--boot-rate", opts.boot_rate)
    if opts.vm not in (None, "cpython", "micropython"):
        raise UsageError(f"--vm must be micropython (or cpython), got {opts.vm!r}")
    if opts.vm == "cpython":
        opts.vm = None
    if opts.vm == "micropython":
        from emulator.board.vm.interpreter import check_vm

        opts.heap = check_vm(opts.heap)
        check_vm_capacity(opts.devices, opts.heap, opts.interval)
    elif opts.heap is not None:
        raise UsageError("--heap needs --vm micropython")
    check_fd_limit(opts.devices, opts.workers, private_broker=opts.broker is None,
                   per_board=FDS_PER_VM_BOARD if opts.vm else FDS_PER_BOARD)
    if opts.scenario is not None:
        load_scenario(opts.scenario, private_broker=opts.broker is None, backend=opts.vm or "cpython")
    if opts.report is not None:
        writable_file("--report", opts.report)  # not a folder, not read-only: found now, not after the run
    if opts.kill_group is not None:
        if opts.workers < 2 and opts.host is None:
            raise UsageError("--kill-group needs the boards in groups: --workers 2 or more, or --ray")
        if opts.kill_group[0] >= opts.workers:
            raise UsageError(f"--kill-group: there is no group {opts.kill_group[0]} (groups 0..{opts.workers - 1})")


def run_fleet(opts: FleetOptions) -> int:
    validate(opts)
    check_inputs(opts.broker, opts.state_dir, credentials=True)  # bad input fails before the first line
    try:
        loop = loop_name()
        worker_cpus(opts.workers)  # $ESP32EMU_PIN, checked before anything starts
    except ValueError as e:
        raise UsageError(str(e)) from None
    firmware = pick_firmware(opts.firmware, board_modules(opts.vm))
    with broker_for(opts.broker, opts.state_dir, credentials=True) as url:
        observer = FleetObserver(url.host, url.port)
        if url.username is not None:
            observer.client.username_pw_set(url.username, url.password)
        if url.tls:
            provision_tls(opts.certs_dir, [device_id(i) for i in range(opts.devices)])
            try:
                observer.use_tls(opts.certs_dir, "backend-fleet")  # its own backend identity: fleet-wide rights in the ACL
            except FileNotFoundError as e:
                raise UsageError(str(e)) from None
        spec = GroupSpec(
            indices=(),
            devices=opts.devices,
            host=url.host,
            port=url.port,
            tls=url.tls,
            keepalive=opts.keepalive,
            interval=opts.interval,
            seed=opts.seed,
            state_dir=opts.state_dir,
            certs_dir=opts.certs_dir,
            boot_rate=opts.boot_rate,
            scenario=opts.scenario,
            vm=opts.vm,
            heap=opts.heap,
            username=url.username,
            password=url.password,
            firmware=firmware,
            loop=loop,
            release_pub=release_files(opts.certs_dir, opts.state_dir)[0]["release.pub"],  # made once, here
        )
        specs = [replace(spec, indices=s) for s in split(range(opts.devices), opts.workers)]
        if opts.host is not None:
            boards = opts.host(specs)
        elif opts.workers == 1:
            boards = LocalBoards(specs[0])
        else:
            boards = WorkerPool(specs)
        observer.expect(opts.devices)
        observer.keep_last = False  # the last payloads are for a dashboard: beside() keeps them
        dashboard = beside(observer, opts.dashboard, opts.state_dir)  # the same observer: the page and the live view agree
        try:
            observer.start()
        except ConnectionError as e:  # refused, unreachable, or it would not let the observer in
            print(f"esp32emu: {e}", file=sys.stderr)
            dashboard.stop()
            return 1
        try:
            boards.build()
            report = run_loop(_run(opts, url, observer, boards), loop)
            report["loop"] = loop
        except WorkerError as e:
            print(f"esp32emu: {e}", file=sys.stderr)
            return 1
        finally:
            dashboard.stop()
            observer.stop()
            boards.kill()
    print(json.dumps(report), flush=True)  # first: a report that cannot be written is not lost
    if opts.report is not None:
        try:
            opts.report.parent.mkdir(parents=True, exist_ok=True)
            opts.report.write_text(json.dumps(report, indent=2) + "\n")
        except OSError as e:
            print(f"esp32emu: --report {opts.report}: cannot write it: {e.strerror} (the report is on stdout)", file=sys.stderr)
            return 1
        print(f"esp32emu: report written to {opts.report}", file=sys.stderr)
    return 0


class _Meter:
    """CPU and RSS of this process plus its workers, and the steady state:
    the figures from the moment every board was first online."""

    def __init__(self, boards, observer: FleetObserver, started: float):
        self.boards = boards
        self.observer = observer
        self.started = started
        self.cpu0 = time.process_time()
        self.steady_at: tuple[float, float, int, int, float | None] | None = None  # (t, cpu, telemetry, lag index, boards' cpu)

    def cpu_s(self) -> float:
        st = self.boards.stats()
        return time.process_time() - self.cpu0 + st["worker_cpu_s"] + st["vm_cpu_s"]

    def boards_cpu_s(self) -> float | None:
        """The worker processes' CPU alone (no observer, no live view); when
        the boards run in this process, its CPU less the observer's thread."""
        if self.boards.in_process:
            return time.process_time() - self.observer.conn.cpu_s()
        st = self.boards.stats()
        return st["worker_cpu_s"] + st["vm_cpu_s"]

    def rss_kb(self) -> int:
        st = self.boards.stats()
        return rss_kb() + st["worker_rss_kb"] + st["vm_rss_kb"]

    def mark(self) -> None:
        if self.steady_at is None and self.observer.all_online_at is not None:
            self.steady_at = (
                time.monotonic(),
                self.cpu_s(),
                self.observer.summary()["telemetry_total"],
                len(self.boards.stats()["lag_ms"]),
                self.boards_cpu_s(),
            )

    def steady(self) -> dict | None:
        if self.steady_at is None:
            return None
        t, cpu, telemetry, lag_i, boards_cpu = self.steady_at
        msgs = self.observer.summary()["telemetry_total"] - telemetry
        cpu_s = self.cpu_s() - cpu
        boards_now = self.boards_cpu_s()
        boards_cpu_s = None if boards_cpu is None or boards_now is None else boards_now - boards_cpu
        lag = sorted(self.boards.stats()["lag_ms"][lag_i:])
        return {
            "s": round(time.monotonic() - t, 1),
            "telemetry": msgs,
            "msgs_per_s": round(msgs / max(time.monotonic() - t, 1e-9), 1),
            "cpu_s": round(cpu_s, 2),
            "cpu_s_per_1000_msgs": round(cpu_s / msgs * 1000, 3) if msgs else None,
            # the same without this process (observer, live view): the boards' own cost
            "boards_cpu_s_per_1000_msgs": round(boards_cpu_s / msgs * 1000, 3) if msgs and boards_cpu_s is not None else None,
            "loop_lag_p99_ms": percentile(lag, 99),
            "loop_lag_max_ms": round(lag[-1], 1) if lag else None,
        }


async def _run(opts: FleetOptions, url, observer: FleetObserver, boards) -> dict:
    t0 = time.monotonic() + 0.1  # the fleet's boot schedule starts here, in every worker
    meter = _Meter(boards, observer, t0)
    boards.start(t0, broker=url.broker)
    view = LiveView(opts, observer, boards, meter)
    tasks = [
        asyncio.create_task(_ping_sample(observer, opts)),
        asyncio.create_task(view.run()),
    ]
    broker_events = None
    if opts.kill_group is not None:
        tasks.append(asyncio.create_task(_kill_group_later(boards, opts, t0)))
    if opts.scenario is not None and not boards.in_process:
        # Board events run in the workers; the broker's run here.
        sc = load_scenario(opts.scenario, url.broker is not None)
        broker_only = replace(sc, events=[e for e in sc.events if e.target == "broker"])
        if broker_only.events:
            broker_events = asyncio.create_task(scenario_mod.Timeline(broker_only, [], url.broker).run())
            tasks.append(broker_events)
    stop = asyncio.create_task(wait_for_stop_signal(opts.duration))
    failed = None
    try:
        while not stop.done():
            await asyncio.wait({stop}, timeout=0.25)
            meter.mark()
            failed = boards.failed()
            if failed is None and broker_events is not None and broker_events.done() and broker_events.exception():
                failed = str(broker_events.exception())
            if failed:
                break
        if not failed and boards.describe().get("groups"):
            await _wait_for_wills(observer, boards, opts.keepalive)
        at_end = boards.stats()
        end = {
            "online_at_end": observer.online_count,
            "vm_rss_kb": at_end["vm_rss_kb"],
            "vm_procs": at_end["vm_procs"],
            "vm_anon_kb": at_end["vm_anon_kb"],
            "vm_cpu_s": at_end["vm_cpu_s"],
            "rss_kb": meter.rss_kb(),
            "cpu_s": meter.cpu_s(),
            "steady": meter.steady(),
            "t": time.monotonic(),
        }
    finally:
        stop.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(stop, *tasks, return_exceptions=True)
        await boards.stop()
        await asyncio.to_thread(observer.flush)  # count what the broker already routed to us
        view.close()
    if failed:
        raise WorkerError(failed)
    summary = observer.summary()
    stats = boards.stats()
    lag = sorted(stats["lag_ms"])
    vm = {"vm": opts.vm or "cpython", "heap": opts.heap}
    if opts.vm is not None:
        # Each board's interpreter process alone (from /proc/<pid>/status): VmRSS (part of
        # rss_mb; shared library pages counted in every process) and RssAnon (its own).
        n = end["vm_procs"]
        vm["vm_rss_per_board_kb"] = round(end["vm_rss_kb"] / n, 1) if n else None
        vm["vm_anon_per_board_kb"] = round(end["vm_anon_kb"] / n, 1) if n else None
        vm["vm_cpu_s"] = round(end["vm_cpu_s"], 1)
    return {
        "devices": opts.devices,
        "workers": opts.workers,
        **vm,
        "duration_s": round(end["t"] - t0, 1),
        "online_at_end": end["online_at_end"],
        "all_online_s": None if observer.all_online_at is None else round(observer.all_online_at - t0, 1),
        "telemetry_sent": summary["telemetry_sent"],
        "telemetry_received": summary["telemetry_received"],
        "telemetry_lost": summary["telemetry_lost"],
        "reconnects": summary["reconnects"],
        "lwt_seen": summary["lwt_seen"],
        "commands_sent": summary["commands_sent"],
        "commands_ok": summary["commands_ok"],
        "cmd_rtt_ms": summary["cmd_rtt_ms"],
        "loop_lag_ms": {"p50": percentile(lag, 50), "p99": percentile(lag, 99), "max": round(lag[-1], 1) if lag else None},
        "rss_mb": round(end["rss_kb"] / 1024, 1),
        "rss_base_mb": round(stats["rss_base_kb"] / 1024, 1),
        "rss_per_board_kb": round((end["rss_kb"] - stats["rss_base_kb"]) / opts.devices, 1),
        "cpu_s": round(end["cpu_s"], 1),
        "steady": end["steady"],
        "broker": str(url),
        **boards.describe(),
        **_lost_groups(observer, boards, opts.keepalive, t0),
    }


async def _kill_group_later(boards, opts: FleetOptions, t0: float) -> None:
    group, at = opts.kill_group
    await asyncio.sleep(max(t0 + at - time.monotonic(), 0.0))
    print(f"esp32emu: group {group}'s node dies ({len(boards.groups[group].indices)} boards, no FIN)", file=sys.stderr, flush=True)
    boards.kill_group(group, opts.keepalive)


def _lost_ids(boards) -> list[tuple[object, list[str]]]:
    return [(lost, [device_id(i) for i in lost.indices]) for lost in getattr(boards, "lost", [])]


async def _wait_for_wills(observer: FleetObserver, boards, keepalive: float) -> None:
    """At the end of a run that lost groups: wait (at most until the SPEC §4
    bound after each loss) for their boards' Wills, so the report says
    whether they came."""
    lost = _lost_ids(boards)
    if not lost:
        return
    deadline = max(g.at for g, _ in lost) + will_bound_s(keepalive)
    ids = [d for _, group_ids in lost for d in group_ids]

    def all_wills(devices: dict) -> bool:
        return all((v := devices.get(d)) is not None and v.state == "will" for d in ids)

    left = deadline - time.monotonic()
    if left > 0 and not await asyncio.to_thread(observer.wait_until, all_wills, left):
        print(f"esp32emu: not every lost board's Will came within {will_bound_s(keepalive):.0f} s", file=sys.stderr, flush=True)


def _lost_groups(observer: FleetObserver, boards, keepalive: float, t0: float) -> dict:
    """The report's `groups_lost`: each lost group's boards and when their
    Wills came (seconds after the loss; SPEC §4: within `will_bound_s`)."""
    lost = _lost_ids(boards)
    if not lost and not boards.describe().get("groups"):
        return {}
    snap = observer.snapshot()
    bound = will_bound_s(keepalive)
    rows = []
    for g, ids in lost:
        after = sorted(v.offline_since - g.at for d in ids if (v := snap.get(d)) is not None and v.state == "will"
                       and v.offline_since is not None)
        rows.append({
            "group": g.group,
            "how": g.how,
            "reason": g.reason,
            "at_s": round(g.at - t0, 1),
            "boards": ids,
            "wills_seen": len(after),
            "wills_within_bound": sum(1 for a in after if a <= bound),
            "will_bound_s": bound,
            "will_after_s": {"min": round(after[0], 1), "max": round(after[-1], 1)} if after else None,
        })
    return {"groups_lost": rows}


async def _ping_sample(observer: FleetObserver, opts: FleetOptions) -> None:
    """Every interval, send `ping` to the next few boards the observer sees
    online; the observer times the results."""
    k = 0
    period = max(opts.interval, 1.0)
    while True:
        await asyncio.sleep(period)
        online = observer.online_ids()
        for _ in range(min(opts.cmd_sample, len(online))):
            observer.send_command(online[k % len(online)], "ping")
            k += 1


class LiveView:
    """A rich live panel on a terminal (boot progress, online, messages/s,
    reconnects, Wills, command RTT, loop lag, the worst boards); one plain
    line every few seconds when stdout is not a terminal; nothing with --quiet."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, opts: FleetOptions, observer: FleetObserver, boards, meter: _Meter):
        self.opts = opts
        self.observer = observer
        self.boards = boards
        self.meter = meter
        self.rate = Rate(max(5.0, 2 * opts.interval))  # whole telemetry rounds: boards booted together publish together
        self.live = None
        self.fancy = not opts.quiet and sys.stdout.isatty() and os.environ.get("CI") != "true"

    def _figures(self) -> dict:
        s = self.observer.summary()
        st = self.boards.stats()
        s.update(booted=st["booted"], halted=st["halted"])
        s["elapsed"] = max(time.monotonic() - self.meter.started, 0.0)
        s["rate"] = self.rate.update(s["telemetry_total"])
        recent = sorted(st["lag_ms"][-200:])  # the last ~10 s of probes per process
        s["lag_p99"] = percentile(recent, 99)
        return s

    def _panel(self, s: dict):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        n = self.opts.devices
        bars = Table.grid(padding=(0, 1))
        bars.add_row("booted", ProgressBar(total=n, completed=s["booted"], width=40), f"{s['booted']}/{n}")
        bars.add_row("online", ProgressBar(total=n, completed=s["online"], width=40), f"{s['online']}/{n}")
        where = "process(es)" if self.opts.host is None else f"group(s) on {self.boards.engine}"
        t = Table(title=f"esp32emu fleet — {n} boards, {self.opts.workers} {where}, {s['elapsed']:.0f} s", title_justify="left")
        cols = ("msg/s", "telemetry", "lost", "reconnects", "Wills", "cmd ok", "RTT p50/p99", "loop lag p99", "halted")
        for col in cols:
            t.add_column(col, justify="right")
        t.add_row(
            f"{s['rate']:.0f}",
            str(s["telemetry_received"]),
            str(s["telemetry_lost"]),
            str(s["reconnects"]),
            str(s["lwt_seen"]),
            f"{s['commands_ok']}/{s['commands_sent']}",
            rtt_text(s["cmd_rtt_ms"]),
            "-" if s["lag_p99"] is None else f"{s['lag_p99']:.0f} ms",
            str(s["halted"]),
        )
        return Group(bars, t, worst_table(self.observer.worst(3)))

    def _line(self, s: dict) -> str:
        lag = "-" if s["lag_p99"] is None else f"{s['lag_p99']:.0f} ms"
        return (
            f"esp32emu: {s['elapsed']:.0f} s booted {s['booted']}/{self.opts.devices} online {s['online']} "
            f"msg/s {s['rate']:.0f} telemetry {s['telemetry_received']} lost {s['telemetry_lost']} "
            f"reconnects {s['reconnects']} wills {s['lwt_seen']} cmd {s['commands_ok']}/{s['commands_sent']} "
            f"rtt {rtt_text(s['cmd_rtt_ms'])} lag p99 {lag}"
        )

    async def run(self) -> None:
        if self.opts.quiet:
            return
        if self.fancy:
            from rich.live import Live

            self.live = Live(self._panel(self._figures()), refresh_per_second=2)
            self.live.start()
            while True:
                await asyncio.sleep(0.5)
                self.live.update(self._panel(self._figures()))
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            s = self._figures()  # keeps messages/s current between lines
            if time.monotonic() - last >= self.PLAIN_EVERY_S:
                last = time.monotonic()
                print(self._line(s), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
