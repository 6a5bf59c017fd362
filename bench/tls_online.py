#!/usr/bin/env python3
"""Benchmark: time to bring N emulated boards online over mutual TLS vs plaintext.

For each mode a private Mosquitto is started (TLS: require_certificate,
use_identity_as_username, the per-device ACL), N boards running the real
firmware are powered on in one event loop (at --boot-rate per second, 0 = all
at once) and an independent paho observer (the backend identity in TLS mode)
counts births. "Online" = the observer has seen every board's retained birth.

Prints one line per mode and a JSON summary. The PKI (one certificate per
board) is generated into a temporary directory; its cost is reported apart.

    .venv/bin/python bench/tls_online.py [--devices 1000] [--boot-rate 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.board.board import Board
from emulator.board.loader import FirmwareImage
from emulator.broker import certs
from emulator.broker.mosquitto import Broker, TlsConfig
from emulator.firmware.config import default_config
from emulator.fleet.run import check_fd_limit
from emulator.observe.counting import FleetObserver


async def _bring_online(boards: list[Board], observer: FleetObserver, boot_rate: float, timeout: float) -> dict:
    n = len(boards)
    t0 = time.monotonic()
    cpu0 = time.process_time()
    marks: dict[int, float] = {}
    gap = 1.0 / boot_rate if boot_rate > 0 else 0.0
    for i, board in enumerate(boards):
        board.start()
        if gap:
            delay = t0 + (i + 1) * gap - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif i % 50 == 49:
            await asyncio.sleep(0)  # let the loop breathe while powering on
    booted_s = time.monotonic() - t0
    deadline = t0 + timeout
    online = 0
    while time.monotonic() < deadline:
        online = observer.summary()["online"]
        for frac in (0.5, 0.9, 0.99, 1.0):
            if online >= int(n * frac) and frac not in marks:
                marks[frac] = time.monotonic() - t0
        if online >= n:
            break
        await asyncio.sleep(0.05)
    wall = time.monotonic() - t0
    cpu = time.process_time() - cpu0
    reconnects = sum(b.boots - 1 for b in boards)
    await asyncio.gather(*(b.stop() for b in boards), return_exceptions=True)
    return {
        "online": online,
        "all_online_s": round(marks[1.0], 2) if 1.0 in marks else None,
        "p50_s": round(marks.get(0.5, float("nan")), 2),
        "p90_s": round(marks.get(0.9, float("nan")), 2),
        "p99_s": round(marks.get(0.99, float("nan")), 2),
        "power_on_s": round(booted_s, 2),
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 2),
        "board_reboots": reconnects,
    }


def _process_cpu_s(pid: int | None) -> float | None:
    """user+system CPU seconds of a child process so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    import os

    return round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 2)


def run_mode(mode: str, n: int, work: Path, pki: Path, image: FirmwareImage, boot_rate: float, timeout: float) -> dict:
    tls = mode == "mtls"
    broker = Broker(work / f"broker-{mode}", tls=TlsConfig.from_pki(pki) if tls else None)
    broker.start()
    try:
        observer = FleetObserver(broker.host, broker.port)
        if tls:
            observer.use_tls(pki, "backend-observer")
        observer.start()
        try:
            t_prov = time.monotonic()
            boards = []
            for i, device_id in enumerate(certs.device_ids(n)):
                cfg = default_config(
                    device_id, "localhost", broker.port, keepalive=60, interval=600, broker={"tls": tls}
                )
                board = Board(device_id, image, work / mode / device_id, config=cfg, seed=1, index=i)
                if tls:
                    board.install_files(certs.board_files(pki, device_id))
                boards.append(board)
            provision_s = time.monotonic() - t_prov
            result = asyncio.run(_bring_online(boards, observer, boot_rate, timeout))
            result["broker_cpu_s"] = _process_cpu_s(broker.pid)
        finally:
            observer.stop()
    finally:
        broker.stop()
    result["mode"] = mode
    result["devices"] = n
    result["board_setup_s"] = round(provision_s, 2)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--boot-rate", type=float, default=0, help="boards powered on per second (0 = all at once)")
    ap.add_argument("--timeout", type=float, default=180)
    ap.add_argument("--modes", default="plain,mtls", help="comma list of plain, mtls (run in this order)")
    args = ap.parse_args(argv)
    check_fd_limit(args.devices * 2)  # board sockets + the broker's side share nothing, but observers, logs...
    image = FirmwareImage()
    results = []
    with tempfile.TemporaryDirectory(prefix="esp32emu-bench-") as tmp:
        work = Path(tmp)
        t = time.monotonic()
        certs.make_pki(work / "pki", certs.device_ids(args.devices))
        pki_s = time.monotonic() - t
        print(f"PKI: CA + broker + backend + {args.devices} device certificates (ECDSA P-256) in {pki_s:.1f} s")
        for mode in args.modes.split(","):
            r = run_mode(mode.strip(), args.devices, work, work / "pki", image, args.boot_rate, args.timeout)
            results.append(r)
            print(
                f"{r['mode']:>5}: {r['online']}/{r['devices']} online; all in {r['all_online_s']} s "
                f"(50% {r['p50_s']} s, 90% {r['p90_s']} s, 99% {r['p99_s']} s); "
                f"power-on loop {r['power_on_s']} s; emulator CPU {r['cpu_s']} s; Mosquitto CPU {r['broker_cpu_s']} s; board setup {r['board_setup_s']} s",
                flush=True,
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = {"pki_s": round(pki_s, 1), "max_rss_mb": round(rss, 1), "results": results}
    by_mode = {r["mode"]: r for r in results}
    if "plain" in by_mode and "mtls" in by_mode and by_mode["plain"]["all_online_s"] and by_mode["mtls"]["all_online_s"]:
        summary["mtls_over_plain"] = round(by_mode["mtls"]["all_online_s"] / by_mode["plain"]["all_online_s"], 2)
    print(json.dumps(summary))
    return 0 if all(r["online"] == r["devices"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
