"""The `esp32emu` command line (SPEC §3). Thin: each command parses its
arguments and calls into `runner`, `broker` or another logic module.

Exit codes: 0 success, 2 bad usage or bad input (one line, no traceback),
1 anything else.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from emulator.broker import BrokerError
from emulator.runner import UsageError

STATE_DIR = Path(".esp32emu")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"esp32emu: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="esp32emu", description="Emulated ESP32 boards running the real MicroPython firmware.")
    p.add_argument("--state", type=Path, default=STATE_DIR, help="where boards keep flash and NVS (default .esp32emu)")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot one emulated board; its console goes to stdout")
    run.add_argument("--broker", help="mqtt://host:port (default: start a private Mosquitto)")
    run.add_argument("--id", default="dev-00001", help="device id (default dev-00001)")
    run.add_argument("--keepalive", type=int, default=30, help="MQTT keepalive in seconds (default 30)")
    run.add_argument("--interval", type=float, default=10, help="telemetry interval in seconds (default 10)")
    run.add_argument("--link", default="wifi-good", help="link profile (default wifi-good)")
    run.add_argument("--seed", type=int, default=0, help="seed for the board's randomness")
    run.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")

    fl = sub.add_parser("fleet", help="boot N boards, live view, JSON report at the end")
    fl.add_argument("--devices", type=int, required=True, help="number of boards")
    fl.add_argument("--broker", help="mqtt://host:port (default: start a private Mosquitto)")
    fl.add_argument("--interval", type=float, default=10, help="telemetry interval in seconds (default 10)")
    fl.add_argument("--keepalive", type=int, default=30, help="MQTT keepalive in seconds (default 30)")
    fl.add_argument("--duration", type=float, help="stop after this many seconds (default: until Ctrl-C)")
    fl.add_argument("--report", type=Path, help="write the JSON report here")
    fl.add_argument("--seed", type=int, default=0, help="seed for every board's randomness")
    fl.add_argument("--boot-rate", type=float, default=200, help="boards powered on per second (default 200)")
    fl.add_argument("--quiet", action="store_true", help="no live view (CI)")

    br = sub.add_parser("broker", help="run a private Mosquitto with the project's config")
    br.add_argument("--port", type=int, default=1883)
    br.add_argument("--tls", action="store_true", help="mutual TLS with certs/ (planned)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (UsageError, BrokerError) as e:
        print(f"esp32emu: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from emulator.runner import run_single

        return run_single(
            args.broker, args.id, args.keepalive, args.interval, args.seed, args.state, args.link, args.duration
        )
    if args.command == "fleet":
        from emulator.fleet import FleetOptions, run_fleet

        return run_fleet(
            FleetOptions(
                devices=args.devices,
                broker=args.broker,
                interval=args.interval,
                keepalive=args.keepalive,
                duration=args.duration,
                seed=args.seed,
                report=args.report,
                state_dir=args.state,
                boot_rate=args.boot_rate,
                quiet=args.quiet,
            )
        )
    if args.command == "broker":
        from emulator.runner import serve_broker

        return serve_broker(args.port, args.tls, args.state)
    raise UsageError(f"unknown command {args.command!r}")
