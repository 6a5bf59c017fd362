"""`esp32emu fleet`: N emulated boards in one event loop against one broker,
a live view, and a JSON report whose numbers come from an independent
paho-mqtt observer (see observer.py).

Boards boot staggered (a fleet powered on at once still boots over a few
seconds), each with its own flash directory, identity and seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from emulator import scenario as scenario_mod
from emulator.board import Board, default_config
from emulator.loader import FirmwareImage
from emulator.observer import FleetObserver
from emulator.runner import (
    UsageError,
    broker_for,
    load_scenario,
    install_tls,
    provision_tls,
    shutdown_gracefully,
    wait_for_stop_signal,
)

FDS_PER_BOARD = 1  # one MQTT socket per board
FD_RESERVE = 64  # broker probe, observer, log files, the interpreter itself


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
    boot_rate: float = 200.0  # boards powered on per second
    cmd_sample: int = 10  # boards pinged by the observer every interval
    quiet: bool = False
    certs_dir: Path = Path("certs")  # the PKI for mqtts:// (one client cert per board)
    scenario: Path | None = None  # a TOML timeline of faults (emulator/scenario.py)


def check_fd_limit(devices: int) -> None:
    """Raise the soft open-file limit if needed; UsageError if it cannot be."""
    need = devices * FDS_PER_BOARD + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return
    raise UsageError(
        f"{devices} boards need about {need} open files but the limit is {soft} (hard {hard}); "
        f"raise it, e.g. `ulimit -n {need}`, or use fewer --devices"
    )


def validate(opts: FleetOptions) -> None:
    if opts.devices < 1:
        raise UsageError(f"--devices must be at least 1, got {opts.devices}")
    if not 2 <= opts.keepalive <= 65535:
        raise UsageError(f"--keepalive must be 2..65535 seconds, got {opts.keepalive}")
    if not 0.1 <= opts.interval <= 86400:
        raise UsageError(f"--interval must be 0.1..86400 seconds, got {opts.interval}")
    if opts.duration is not None and opts.duration <= 0:
        raise UsageError(f"--duration must be positive, got {opts.duration}")
    check_fd_limit(opts.devices)
    if opts.scenario is not None:
        load_scenario(opts.scenario, private_broker=opts.broker is None)


def run_fleet(opts: FleetOptions) -> int:
    validate(opts)
    image = FirmwareImage()
    with broker_for(opts.broker, opts.state_dir) as url:
        observer = FleetObserver(url.host, url.port)
        if url.tls:
            provision_tls(opts.certs_dir, [f"dev-{i + 1:05d}" for i in range(opts.devices)])
            if not (opts.certs_dir / "backend.key").is_file():
                raise UsageError(f"{opts.certs_dir / 'backend.key'} is missing: run `esp32emu certs` first")
            # The observer is the backend identity: fleet-wide rights in the ACL.
            observer.client.tls_set(
                ca_certs=str(opts.certs_dir / "ca.crt"),
                certfile=str(opts.certs_dir / "backend.crt"),
                keyfile=str(opts.certs_dir / "backend.key"),
            )
        observer.start()
        try:
            report = asyncio.run(_run(opts, image, url, observer))
        finally:
            observer.stop()
    if opts.report is not None:
        opts.report.parent.mkdir(parents=True, exist_ok=True)
        opts.report.write_text(json.dumps(report, indent=2) + "\n")
        print(f"esp32emu: report written to {opts.report}", file=sys.stderr)
    print(json.dumps(report), flush=True)
    return 0


async def _run(opts: FleetOptions, image: FirmwareImage, url, observer: FleetObserver) -> dict:
    boards = []
    for i in range(opts.devices):
        device_id = f"dev-{i + 1:05d}"
        cfg = default_config(
            device_id, url.host, url.port, keepalive=opts.keepalive, interval=opts.interval, broker={"tls": url.tls}
        )
        board = Board(device_id, image, opts.state_dir / "boards" / device_id, config=cfg, seed=opts.seed, index=i)
        if url.tls:
            install_tls(board, opts.certs_dir)
        boards.append(board)
    started = time.monotonic()
    cpu0 = time.process_time()
    view = LiveView(opts, observer, boards, started)
    tasks = [
        asyncio.create_task(_boot_staggered(boards, opts.boot_rate)),
        asyncio.create_task(_ping_sample(boards, observer, opts)),
        asyncio.create_task(view.run()),
    ]
    if opts.scenario is not None:
        timeline = scenario_mod.Timeline(load_scenario(opts.scenario, url.broker is not None), boards, url.broker)
        tasks.append(asyncio.create_task(timeline.run()))
    online_at_end = 0
    try:
        await wait_for_stop_signal(opts.duration)
        online_at_end = observer.summary()["online"]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await shutdown_gracefully(boards, timeout=10)
        view.close()
    summary = observer.summary()
    return {
        "devices": opts.devices,
        "duration_s": round(time.monotonic() - started, 1),
        "online_at_end": online_at_end,
        "telemetry_sent": summary["telemetry_sent"],
        "telemetry_received": summary["telemetry_received"],
        "telemetry_lost": summary["telemetry_lost"],
        "reconnects": summary["reconnects"],
        "lwt_seen": summary["lwt_seen"],
        "commands_sent": summary["commands_sent"],
        "commands_ok": summary["commands_ok"],
        "cmd_rtt_ms": summary["cmd_rtt_ms"],
        "rss_mb": round(_rss_mb(), 1),
        "cpu_s": round(time.process_time() - cpu0, 1),
        "broker": str(url),
    }


async def _boot_staggered(boards: list[Board], rate: float) -> None:
    gap = 1.0 / rate
    t0 = time.monotonic()
    for i, board in enumerate(boards):
        board.start()
        delay = t0 + (i + 1) * gap - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _ping_sample(boards: list[Board], observer: FleetObserver, opts: FleetOptions) -> None:
    """Send `ping` to a rotating sample of boards; the observer times the results."""
    k = 0
    period = max(opts.interval, 1.0)
    while True:
        await asyncio.sleep(period)
        for _ in range(min(opts.cmd_sample, len(boards))):
            board = boards[k % len(boards)]
            k += 1
            if board.running:
                observer.send_command(board.id, "ping")


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LiveView:
    """A rich live table on a terminal; one plain line every few seconds otherwise."""

    def __init__(self, opts: FleetOptions, observer: FleetObserver, boards: list[Board], started: float):
        self.opts = opts
        self.observer = observer
        self.boards = boards
        self.started = started
        self.live = None
        self.fancy = not opts.quiet and sys.stdout.isatty() and os.environ.get("CI") != "true"

    def _figures(self) -> dict:
        s = self.observer.summary()
        s["booted"] = sum(1 for b in self.boards if b.running)
        s["halted"] = sum(1 for b in self.boards if b.halted)
        s["elapsed"] = time.monotonic() - self.started
        return s

    def _table(self, s: dict):
        from rich.table import Table

        t = Table(title=f"esp32emu fleet — {len(self.boards)} boards, {s['elapsed']:.0f} s")
        for col in ("booted", "online", "telemetry", "lost", "reconnects", "Wills", "cmd ok", "RTT p50/p99 ms", "halted"):
            t.add_column(col, justify="right")
        rtt = s["cmd_rtt_ms"]
        t.add_row(
            f"{s['booted']}/{len(self.boards)}",
            str(s["online"]),
            str(s["telemetry_received"]),
            str(s["telemetry_lost"]),
            str(s["reconnects"]),
            str(s["lwt_seen"]),
            f"{s['commands_ok']}/{s['commands_sent']}",
            f"{rtt['p50']}/{rtt['p99']}",
            str(s["halted"]),
        )
        return t

    async def run(self) -> None:
        if self.fancy:
            from rich.live import Live

            self.live = Live(self._table(self._figures()), refresh_per_second=2)
            self.live.start()
            while True:
                await asyncio.sleep(0.5)
                self.live.update(self._table(self._figures()))
        if self.opts.quiet:
            return
        while True:
            await asyncio.sleep(5)
            s = self._figures()
            print(
                f"esp32emu: {s['elapsed']:.0f} s booted {s['booted']}/{len(self.boards)} online {s['online']} "
                f"telemetry {s['telemetry_received']} lost {s['telemetry_lost']} wills {s['lwt_seen']}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
