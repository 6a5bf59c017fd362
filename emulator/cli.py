"""The `esp32emu` command line (SPEC §3). Thin: each command parses its
arguments and calls into `run.commands`, `fleet.run` or another logic module.

Exit codes: 0 success, 2 bad usage or bad input (one line, no traceback),
1 anything else.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emulator import validation as v
from emulator.broker.mosquitto import BrokerError
from emulator.validation import UsageError

STATE_DIR = Path(".esp32emu")
CERTS_DIR = Path("certs")
LISTEN_PORT = v.Number(int, 0, 65535)  # the dashboard's: 0 picks a free one
HISTORY = v.Number(int, 1, 10_000_000, unit="events")
BYTES = v.Number(int, 0, 2**31, unit="bytes")
RATE = v.Number(int, 1, 2**31, unit="bytes/s")
RETRIES = v.Number(int, 0, 100, unit="retries")
FIRMWARE_HELP = "the firmware folder to boot (default: ./firmware when it has a main.py, else the one bundled with esp32emu)"


def _value(parse):
    """An option's `type=` from a parser in emulator/validation.py: its
    BadValue becomes argparse's one-line error naming the option."""

    def convert(text: str):
        try:
            return parse(text)
        except v.BadValue as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _kill_group(text: str) -> tuple[int, float]:
    """--kill-group G@S: a group number and the seconds into the run."""
    group, sep, at = text.partition("@")
    try:
        g, s = int(group), float(at)
    except ValueError:
        g, s = -1, -1.0
    if not sep or g < 0 or not 0 <= s < 10**7:
        raise argparse.ArgumentTypeError(f"want G@S (a group number, @, seconds into the run), got {text!r}")
    return g, s


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"esp32emu: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="esp32emu", description="Emulated ESP32 boards running the real MicroPython firmware.")
    _global_options(p, STATE_DIR)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="boot one emulated board; its console goes to stdout")
    run.add_argument("--broker", help="mqtt://host:port (default: start a private Mosquitto)")
    run.add_argument("--id", type=_value(v.device_id), default="dev-00001", help="device id (default dev-00001)")
    run.add_argument("--keepalive", type=_value(v.KEEPALIVE), default=30, help="MQTT keepalive in seconds (default 30)")
    run.add_argument("--interval", type=_value(v.INTERVAL), default=10, help="telemetry interval in seconds (default 10)")
    run.add_argument("--link", default="wifi-good", help="link profile: wifi-good, wifi-weak, cellular-2g, nb-iot")
    run.add_argument("--scenario", type=Path, help="TOML timeline of faults (see README: Scenario files)")
    run.add_argument("--seed", type=_value(v.SEED), default=0, help="seed for the board's randomness")
    run.add_argument("--duration", type=_value(v.DURATION), help="stop after this many seconds (default: until Ctrl-C)")
    run.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI for mqtts:// (default certs)")
    run.add_argument("--vm", choices=("micropython",), help="run the board on the real MicroPython interpreter "
                     "(one process, firmware deployed as flash --mpy does)")
    run.add_argument("--heap", type=_value(v.heap), help="MicroPython heap with --vm micropython (default 100k, an ESP32 without PSRAM)")
    run.add_argument("--firmware", type=Path, metavar="DIR", help=FIRMWARE_HELP)

    fl = sub.add_parser("fleet", help="boot N boards, live view, JSON report at the end")
    fl.add_argument("--devices", type=_value(v.DEVICES), required=True, help="number of boards")
    fl.add_argument("--broker", help="mqtt://host:port (default: start a private Mosquitto)")
    fl.add_argument("--interval", type=_value(v.INTERVAL), default=10, help="telemetry interval in seconds (default 10)")
    fl.add_argument("--keepalive", type=_value(v.KEEPALIVE), default=30, help="MQTT keepalive in seconds (default 30)")
    fl.add_argument("--duration", type=_value(v.DURATION), help="stop after this many seconds (default: until Ctrl-C)")
    fl.add_argument("--report", type=Path, help="write the JSON report here")
    fl.add_argument("--seed", type=_value(v.SEED), default=0, help="seed for every board's randomness")
    fl.add_argument("--boot-rate", type=_value(v.BOOT_RATE), default=200, help="boards powered on per second (default 200)")
    fl.add_argument("--quiet", action="store_true", help="no live view (CI)")
    fl.add_argument("--scenario", type=Path, help="TOML timeline of faults (see README: Scenario files)")
    fl.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI for mqtts:// (default certs)")
    fl.add_argument(
        "--workers", type=_value(v.WORKERS), help="processes running boards (default: one per 2,500 boards, at most one per core; with 2 up to one per CPU each is pinned to a CPU of its own, ESP32EMU_PIN=0 leaves them to the scheduler)"
    )
    fl.add_argument("--vm", choices=("micropython",), help="every board on the real MicroPython interpreter "
                    "(one process each, firmware deployed as flash --mpy does)")
    fl.add_argument("--heap", type=_value(v.heap), help="MicroPython heap per board with --vm micropython (default 100k)")
    fl.add_argument("--firmware", type=Path, metavar="DIR", help=FIRMWARE_HELP)
    fl.add_argument("--dashboard", type=_value(LISTEN_PORT), nargs="?", const=8080, metavar="PORT",
                    help="serve the dashboard beside the fleet on 127.0.0.1:PORT (default 8080); its URL and token are printed")
    fl.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                    help="run the board groups as Ray actors (pip install 'esp32emu[ray]'): no ADDRESS starts a local "
                    "Ray instance; auto, HOST:PORT or ray://HOST:PORT joins a cluster (README: Fleets on a Ray cluster)")
    fl.add_argument("--groups", type=_value(v.WORKERS), help="with --ray: board groups, one actor each (default: one per 2,500 boards)")
    fl.add_argument("--kill-group", type=_kill_group, metavar="G@S",
                    help="group G's node dies S seconds into the run (its sockets go silent, no FIN); needs --ray or --workers 2+")

    wa = sub.add_parser("watch", help="live table of every device seen on a broker (ours or not)")
    wa.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default mqtt://127.0.0.1:1883)")
    wa.add_argument("--prefix", default="devices", help="topic prefix (default devices)")
    wa.add_argument("--duration", type=_value(v.DURATION), help="stop after this many seconds, then print every device")
    wa.add_argument("--once", action="store_true", help="print the device table once and exit: after --duration, "
                    "else once the retained statuses and one telemetry round from every online device are in (at most 30 s)")
    wa.add_argument("--plain", action="store_true", help="plain lines instead of the live table (automatic when not a terminal)")
    wa.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI for mqtts:// (backends/backend-watch.crt, made when "
                    "missing; default certs)")

    da = sub.add_parser("dashboard", help="the web dashboard: MQTT to SSE, REST and WebSocket, and the page (SPEC §6)")
    da.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default: start a private Mosquitto)")
    da.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    da.add_argument("--port", type=_value(LISTEN_PORT), default=8080, help="listen port (default 8080; 0 picks a free one)")
    da.add_argument("--prefix", default="devices", help="topic prefix (default devices)")
    da.add_argument("--token", help="the token every API call needs (default: a new one, printed with the URL)")
    da.add_argument("--history", type=_value(HISTORY), default=10_000, help="events kept for Last-Event-ID replay (default 10000)")
    da.add_argument("--duration", type=_value(v.DURATION), help="stop after this many seconds (default: until Ctrl-C)")
    da.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI for mqtts:// (backends/backend-dashboard.crt, made "
                    "when missing; default certs)")

    br = sub.add_parser("broker", help="run a private Mosquitto with the project's config")
    br.add_argument("--port", type=_value(v.PORT), help="listen port (default 1883, or 8883 with --tls)")
    br.add_argument("--tls", action="store_true", help="mutual TLS only, with the certificates in --certs")
    br.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI directory (default certs)")

    ce = sub.add_parser("certs", help="make a dev PKI: CA, broker, backend and one client cert per device")
    ce.add_argument("--devices", type=_value(v.CERT_DEVICES), default=1, help="client certificates dev-00001..N (default 1)")
    ce.add_argument("--dir", type=Path, default=CERTS_DIR, help="where to write them (default certs)")
    ce.add_argument("--force", action="store_true", help="replace existing files (a new CA: every old cert dies)")
    ce.add_argument("--backend", action="append", default=[], metavar="NAME",
                    help="also a backend client certificate backends/NAME.crt (NAME: backend-..., fleet-wide rights; "
                    "the broker makes its CN the client id, so each backend client needs its own); repeatable")

    fw = sub.add_parser("flash", help="deploy firmware/ + this device's config (and certs) to a real board with mpremote")
    fw.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyUSB0, COM3)")
    fw.add_argument("--id", type=_value(v.device_id), required=True, help="device id written to the board's config.json")
    fw.add_argument("--broker", help="mqtt://host:port or mqtts://host:port (default: keep the board's)")
    fw.add_argument("--wifi-ssid", default=os.environ.get("ESP32EMU_WIFI_SSID"), help="WiFi network (env ESP32EMU_WIFI_SSID; default: keep the board's)")
    fw.add_argument("--wifi-password", default=os.environ.get("ESP32EMU_WIFI_PASSWORD"), help="WiFi password (env ESP32EMU_WIFI_PASSWORD)")
    fw.add_argument("--mpy", dest="mpy", action="store_true", default=None, help="compile to .mpy with mpy-cross, the default except on emulated boards, which run sources (boot.py/main.py stay .py)")
    fw.add_argument("--py", "--no-mpy", dest="mpy", action="store_false", help="copy the .py sources instead of .mpy")
    fw.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI for mqtts:// (default certs)")
    fw.add_argument("--no-reset", action="store_true", help="do not reset the board at the end")
    fw.add_argument("--as-written", action="store_true", help="deploy the sources as written: tracebacks keep the "
                    "source's names and line numbers, for about 7 KiB more heap (default: private names shortened, "
                    ".mpy without line numbers)")
    fw.add_argument("--firmware", type=Path, metavar="DIR", help="the firmware folder to deploy (default: ./firmware "
                    "when it has a main.py, else the firmware bundled with esp32emu)")

    mo = sub.add_parser("monitor", help="a board's serial console with timestamps; reconnects when it resets")
    mo.add_argument("--port", required=True, help="serial port of the board")

    se = sub.add_parser("serial", help="one emulated board whose REPL is on a pty that mpremote can use")
    se.add_argument("--id", type=_value(v.device_id), default="dev-00001", help="device id (default dev-00001)")
    se.add_argument("--broker", help="mqtt://host:port (default: start a private Mosquitto)")
    se.add_argument("--no-firmware", action="store_true", help="start with no firmware/config (fresh MicroPython)")
    se.add_argument("--erase", action="store_true", help="erase the board's flash directory first")
    se.add_argument("--flash-kib", type=_value(v.FLASH_KIB), help="size of the board's filesystem in KiB (default 2048)")
    se.add_argument("--seed", type=_value(v.SEED), default=0, help="seed for the board's randomness")
    se.add_argument("--duration", type=_value(v.DURATION), help="stop after this many seconds (default: until Ctrl-C)")
    se.add_argument("--firmware", type=Path, metavar="DIR", help=FIRMWARE_HELP)

    co = sub.add_parser("conformance", help="check a broker's device-visible behaviours (Will, retain, keepalive, "
                        "takeover, limits) with emulated boards; prints a table")
    co.add_argument("--broker", required=True, help="mqtt://[user:password@]host:port or mqtts://host:port")
    co.add_argument("--tls", action="store_true", help="mutual TLS with the certificates in --certs (as mqtts://)")
    co.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI for mqtts:// (default certs; device "
                    "certificates cf-* and backends/backend-conformance are issued when missing)")
    co.add_argument("--keepalive", type=_value(v.KEEPALIVE), default=5, help="the boards' MQTT keepalive in seconds "
                    "(default 5; the run takes about floor(1.5*KA)+7 s plus boot)")
    co.add_argument("--restart-cmd", metavar="CMD", help="a shell command that restarts the broker gracefully "
                    "(then retained status across a restart is checked; n.a. without)")
    co.add_argument("--report", type=Path, help="write the JSON report here")

    nw = sub.add_parser("new", help="start a firmware project: firmware/, config.json, tests/, pytest.ini, CI workflow")
    nw.add_argument("dir", type=Path, metavar="DIR", help="the project folder to make (absent or empty)")
    _ota_commands(sub)
    for command in sub.choices.values():  # global options work after the subcommand too
        _global_options(command, argparse.SUPPRESS)
    return p


def _ota_commands(sub) -> None:
    """`release build`, `release serve`, `rollout` (issue 18: signed OTA updates)."""
    rel = sub.add_parser("release", help="signed OTA releases: build one, serve them over HTTP(S)")
    rs = rel.add_subparsers(dest="release_command", required=True, metavar="{build,serve}", parser_class=_Parser)
    rb = rs.add_parser("build", help="manifest.json + its signature + files/ from a firmware folder")
    rb.add_argument("--firmware", type=Path, required=True, metavar="DIR", help="the firmware folder to release")
    rb.add_argument("--version", required=True, help="the release's version: must equal the firmware's FW_VERSION")
    rb.add_argument("--key", type=Path, default=CERTS_DIR / "release.key", help="the release signing key (default certs/release.key)")
    rb.add_argument("--out", type=Path, required=True, metavar="DIR", help="where the release goes (absent or empty)")
    rb.add_argument("--mpy", action="store_true", help="add a .mpy of each module (mpy-cross) for boards that take them")
    rv = rs.add_parser("serve", help="serve a folder of releases over HTTP (HTTPS with --tls), with Range")
    rv.add_argument("dir", type=Path, metavar="DIR", help="the folder to serve (a release, or a folder of them)")
    rv.add_argument("--port", type=_value(LISTEN_PORT), default=8070, help="listen port (default 8070; 0 picks a free one)")
    rv.add_argument("--bind", default="127.0.0.1", help="listen address (default 127.0.0.1: this machine only)")
    rv.add_argument("--tls", action="store_true", help="HTTPS with the PKI's broker.crt (boards verify it with ca.crt)")
    rv.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI for --tls (default certs)")
    rv.add_argument("--duration", type=_value(v.DURATION), help="stop after this many seconds (default: until Ctrl-C)")
    rv.add_argument("--drop-after", type=_value(BYTES), metavar="N", help="fault: drop the connection after N bytes of a file")
    rv.add_argument("--corrupt-at", type=_value(BYTES), metavar="N", help="fault: flip the byte at offset N of a file in transit")
    rv.add_argument("--fault-times", type=_value(BYTES), default=1, metavar="K",
                    help="how many responses get --drop-after/--corrupt-at (default 1; 0: every one)")
    rv.add_argument("--rate", type=_value(RATE), metavar="BPS", help="fault: serve at most BPS bytes/s per connection")
    for command in rs.choices.values():
        _global_options(command, argparse.SUPPRESS)

    ro = sub.add_parser("rollout", help="update a fleet over the broker in waves; halts when a wave fails too often")
    ro.add_argument("--broker", required=True, help="mqtt://host:port or mqtts://host:port of the fleet")
    ro.add_argument("--release", required=True, metavar="URL", help="the release's manifest URL (http(s)://.../manifest.json)")
    ro.add_argument("--waves", default="1%,10%,50%,100%", help="cumulative shares of the devices (default 1%%,10%%,50%%,100%%)")
    ro.add_argument("--max-failures", default="5%", help="halt after a wave with more failed than this (default 5%%)")
    who = ro.add_mutually_exclusive_group()
    who.add_argument("--devices", metavar="ID,...", help="only these devices (default: every device with a retained status)")
    who.add_argument("--all", action="store_true", help="every device with a retained status (the default)")
    ro.add_argument("--report", type=Path, help="write the JSON report here")
    ro.add_argument("--certs", type=Path, default=CERTS_DIR, help="PKI: backends/backend-rollout.crt for mqtts://, ca.crt for https://, "
                    "release.pub to check the signature (default certs)")
    ro.add_argument("--prefix", default="devices", help="topic prefix (default devices)")
    ro.add_argument("--timeout", type=_value(v.DURATION), default=300, help="seconds a device has for its update (default 300)")
    ro.add_argument("--retries", type=_value(RETRIES), default=2, help="resend after a failure that can pass: power, link (default 2)")
    ro.add_argument("--plain", action="store_true", help="plain lines instead of the live table (automatic when not a terminal)")


def _global_options(parser: argparse.ArgumentParser, default) -> None:
    """Options every command takes, before or after its name. A subcommand's
    copy defaults to SUPPRESS so that, when absent there, it does not clobber
    a value given before the subcommand."""
    parser.add_argument("--state", type=Path, default=default, help="where boards keep flash and NVS (default .esp32emu)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (UsageError, BrokerError) as e:
        print(f"esp32emu: {e}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    except ConnectionError as e:  # the observer could not reach --broker
        print(f"esp32emu: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from emulator.run.commands import run_single

        return run_single(
            args.broker,
            args.id,
            args.keepalive,
            args.interval,
            args.seed,
            args.state,
            args.link,
            args.duration,
            certs_dir=args.certs,
            scenario=args.scenario,
            vm=args.vm,
            heap=args.heap,
            firmware=args.firmware,
        )
    if args.command == "fleet":
        from emulator.fleet.run import FleetOptions, run_fleet
        from emulator.fleet.workers import auto_workers

        workers, host = args.workers, None
        if args.groups is not None and args.ray is None:
            raise UsageError("--groups needs --ray (local processes: --workers)")
        if args.ray is not None:
            from emulator.cluster.ray_host import default_groups, ray_host

            if args.workers is not None:
                raise UsageError("--ray runs the groups as Ray actors: use --groups, not --workers")
            host = ray_host(args.ray)
            workers = default_groups(args.devices) if args.groups is None else args.groups
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
                scenario=args.scenario,
                certs_dir=args.certs,
                workers=auto_workers(args.devices) if workers is None else workers,
                vm=args.vm,
                heap=args.heap,
                firmware=args.firmware,
                dashboard=args.dashboard,
                host=host,
                kill_group=args.kill_group,
            )
        )
    if args.command == "dashboard":
        from emulator.dashboard.server import run_dashboard

        return run_dashboard(args.broker, args.host, args.port, args.prefix, args.token, args.history,
                             state_dir=args.state, certs_dir=args.certs, duration=args.duration)
    if args.command == "watch":
        from emulator.observe.watch import run_watch

        return run_watch(args.broker, args.prefix, args.duration, once=args.once, plain=args.plain, certs_dir=args.certs)
    if args.command == "broker":
        from emulator.run.commands import serve_broker

        return serve_broker(args.port, args.tls, args.state, args.certs)
    if args.command == "certs":
        return _certs(args)
    if args.command == "flash":
        from emulator.realboard.flash import FlashError, flash

        try:
            flash(
                args.port,
                args.id,
                args.broker,
                wifi_ssid=args.wifi_ssid,
                wifi_password=args.wifi_password,
                mpy=args.mpy,
                as_written=args.as_written,
                certs_dir=args.certs,
                reset=not args.no_reset,
                firmware_dir=args.firmware,
            )
        except FlashError as e:
            print(f"esp32emu: flash: {e}", file=sys.stderr)
            return 1
        return 0
    if args.command == "monitor":
        from emulator.realboard.monitor import run_monitor

        return run_monitor(args.port)
    if args.command == "serial":
        from emulator.realboard.serial_board import run_serial

        return run_serial(
            args.id,
            args.broker,
            args.state,
            firmware=not args.no_firmware,
            erase=args.erase,
            flash_kib=args.flash_kib,
            seed=args.seed,
            duration=args.duration,
            firmware_dir=args.firmware,
        )
    if args.command == "new":
        return _new(args.dir)
    if args.command == "conformance":
        from emulator.conformance.run import run_conformance

        return run_conformance(args.broker, tls=args.tls, certs_dir=args.certs, keepalive=args.keepalive,
                               restart_cmd=args.restart_cmd, report=args.report)
    if args.command in ("release", "rollout"):
        return _ota(args)
    raise UsageError(f"unknown command {args.command!r}")


def _certs(args: argparse.Namespace) -> int:
    from emulator.broker.certs import CertError, device_ids, make_pki

    had_release_key = (args.dir / "release.key").exists()
    try:
        issued = make_pki(args.dir, device_ids(args.devices), force=args.force, backends=args.backend)
    except CertError as e:
        raise UsageError(str(e)) from None
    for item in issued:
        print(item.line(args.dir))
    if (args.dir / "release.key").exists():
        print(f"{'kept' if had_release_key else 'new '} release.key + release.pub  ECDSA P-256  the release signing key"
              " (never replaced, not even with --force)")
    made = sum(not item.kept for item in issued)
    print(f"esp32emu: {made} new, {len(issued) - made} kept in {args.dir} (private keys 0600; never commit them;"
          f" {args.dir / 'README.md'} says what each file is)")
    return 0


def _ota(args: argparse.Namespace) -> int:
    if args.command == "rollout":
        from emulator.ota.rollout import Options, parse_percent, parse_waves, run_rollout

        devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else None
        return run_rollout(Options(broker=args.broker, release=args.release, waves=parse_waves(args.waves),
                                   max_failures=parse_percent(args.max_failures), devices=devices, report=args.report,
                                   certs_dir=args.certs, prefix=args.prefix, timeout=args.timeout, retries=args.retries,
                                   plain=True if args.plain else None))
    if args.release_command == "build":
        from emulator.ota.release import build

        made = build(args.firmware, args.version, args.key, args.out, mpy=args.mpy)
        print(f"esp32emu: release {made.version} in {made.out}: {made.files} files, {made.bytes} bytes to download, "
              f"manifest {made.manifest_bytes} bytes, signed with {args.key}")
        return 0
    from emulator.ota.serve import run_serve

    return run_serve(args.dir, args.port, args.bind, tls_dir=args.certs if args.tls else None, duration=args.duration,
                     drop_after=args.drop_after, corrupt_at=args.corrupt_at, rate=args.rate, fault_times=args.fault_times)


def _new(dest: Path) -> int:
    from emulator.firmware.scaffold import ScaffoldError, new_project

    try:
        made = new_project(dest)
    except ScaffoldError as e:
        raise UsageError(f"new: {e}") from None
    print(f"esp32emu: made {dest}: {', '.join(made)}")
    print(f"esp32emu: next: cd {dest} && pytest   (needs pytest and mosquitto)")
    return 0
