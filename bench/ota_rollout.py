"""A fleet rollout under faults (issue 18): N emulated boards (`esp32emu
fleet`, its worker processes) on a private Mosquitto, a release built by
`esp32emu release build` from a changed firmware and signed with the
fleet's state-folder release key, served by `esp32emu release serve`'s
server in this process, and `esp32emu rollout` in waves. A share of the
boards lose power mid-update (scenario `power_loss`: during the download, or
during the install), and the release server drops links mid-file and flips
bytes in transit now and then.

Prints a table: wall time of the rollout and of each wave, bytes served,
requests (ranges), faults injected vs seen vs recovered, and how every board
ended (from the rollout's JSON report, checked against the broker's
retained births).

    .venv/bin/python bench/ota_rollout.py                 # 1,000 boards, 4 waves, 5 % power cuts
    .venv/bin/python bench/ota_rollout.py --devices 200 --workers 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.observe.recording import ObserverClient  # noqa: E402
from emulator.ota.release import build, firmware_variant  # noqa: E402
from emulator.ota.rollout import Options, run_rollout  # noqa: E402
from emulator.ota.serve import ReleaseServer  # noqa: E402

NEW = "0.2.0"


def scenario(ids: list[str], share: float, seed: int) -> tuple[str, list[str], list[str]]:
    """Power cuts on `share` of the boards: 3/5 of them mid-download, 2/5 mid-install."""
    rng = random.Random(seed)
    cut = rng.sample(ids, round(share * len(ids)))
    split = round(len(cut) * 3 / 5)
    dl, inst = sorted(cut[:split]), sorted(cut[split:])
    text = (f"seed = {seed}\n[groups]\ndl = {json.dumps(dl)}\ninst = {json.dumps(inst)}\n\n"
            '[[event]]\nat = 0\nselect = "group:dl"\naction = "power_loss"\nduring = "download"\n\n'
            '[[event]]\nat = 0\nselect = "group:inst"\naction = "power_loss"\nduring = "install"\n')
    return text, dl, inst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--waves", default="1%,10%,50%,100%")
    ap.add_argument("--power-cuts", type=float, default=0.05, help="share of boards losing power mid-update")
    ap.add_argument("--link-drops", type=int, default=20, help="responses the server drops mid-file")
    ap.add_argument("--corruptions", type=int, default=10, help="responses with one byte flipped")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (reports, state)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ota-bench-"))
    state = tmp / "state"
    ids = [f"dev-{i + 1:05d}" for i in range(args.devices)]
    text, dl, inst = scenario(ids, args.power_cuts, args.seed)
    (tmp / "cuts.toml").write_text(text)
    broker = Broker(tmp / "mosquitto").start()
    fleet = None
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        fleet = subprocess.Popen(
            [sys.executable, "-m", "emulator", "fleet", "--devices", str(args.devices), "--broker", broker.url,
             "--workers", str(args.workers), "--quiet", "--duration", "3600", "--scenario", str(tmp / "cuts.toml"),
             "--report", str(tmp / "fleet.json"), "--state", str(state), "--boot-rate", "500"],
            cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "fleet.err", "w"))
        obs = ObserverClient(broker.host, broker.port, "ota-bench")
        obs.connect()
        obs.subscribe("devices/+/status")
        t0 = time.monotonic()
        obs.collect("devices/+/status", lambda m: m.json().get("online") is True, count=args.devices, timeout=600)
        boot_s = time.monotonic() - t0
        key = state / "release" / "release.key"  # the fleet made it; every board has its release.pub
        src = firmware_variant(REPO / "firmware", tmp / "fw-new", NEW)
        built = build(src, NEW, key, tmp / "releases" / NEW)
        with ReleaseServer(tmp / "releases") as srv:
            srv.faults.drop("files/*.py", 2000, args.link_drops)
            srv.faults.corrupt("files/*.py", 1000, args.corruptions)
            report = tmp / "rollout.json"
            t1 = time.monotonic()
            cpu0 = os.times()
            code = run_rollout(Options(broker=broker.url, release=srv.url(f"{NEW}/manifest.json"),
                                       waves=[float(w.strip().rstrip("%")) for w in args.waves.split(",")],
                                       report=report, certs_dir=tmp / "no-pki", timeout=600, plain=True))
            wall = time.monotonic() - t1
            cpu1 = os.times()
            stats = srv.stats.as_dict()
        r = json.loads(report.read_text())
        births = {}
        for m in obs.messages:
            if m.json().get("online") is True:
                births[m.topic.split("/")[1]] = m.json().get("fw")
        obs.close()
    finally:
        if fleet is not None and fleet.poll() is None:
            fleet.send_signal(signal.SIGINT)
            try:
                fleet.wait(120)
            except subprocess.TimeoutExpired:
                fleet.kill()
        broker.stop()

    devs = r["devices"]
    # Seen over MQTT: a retry the rollout made, or a trial birth after power-on (a cut mid-install).
    # A cut mid-download is not visible there: the board starts its update again on the next boot,
    # before the app (every armed cut fires: the release is larger than after_bytes <= 16384 and
    # its install longer than after_ops <= 8 flash operations).
    def seen(d: str) -> bool:
        return "power_on" in devs[d]["resets"] or bool(devs[d]["errors"])

    dl_seen = [d for d in dl if seen(d)]
    inst_seen = [d for d in inst if seen(d)]
    ok = lambda group: sum(devs[d]["outcome"] == "committed" for d in group)  # noqa: E731
    on_new = sum(births.get(d) == NEW for d in ids)
    for d in ids:
        if births.get(d) != NEW:
            print(f"not on {NEW} by its last birth: {d} {births.get(d)} {devs[d]}", file=sys.stderr)
    rows = [
        ("boards", f"{args.devices} ({args.workers} worker processes), all online in {boot_s:.1f} s"),
        ("release", f"{NEW}: {built.files} files, {built.bytes} bytes a board, manifest {built.manifest_bytes} bytes"),
        ("waves", ", ".join(f"{w['devices']} in {w['duration_s']:.1f} s" for w in r["waves"])),
        ("rollout wall time", f"{wall:.1f} s (exit {code}{', halted: ' + r['halt_reason'] if r['halted'] else ''})"),
        ("rollout process CPU", f"{(cpu1.user - cpu0.user) + (cpu1.system - cpu0.system):.1f} s (observer + HTTP server)"),
        ("bytes served", f"{stats['bytes_served']:,} ({stats['bytes_served'] / args.devices / 1024:.1f} KiB a board)"),
        ("requests", f"{stats['requests']:,} ({stats['partial']} ranges resumed, {stats['unsatisfiable']} 416)"),
        ("power cut mid-download", f"injected {len(dl)}, seen over MQTT {len(dl_seen)}, recovered {ok(dl)}"),
        ("power cut mid-install", f"injected {len(inst)}, seen over MQTT {len(inst_seen)}, recovered {ok(inst)}"),
        ("link dropped mid-file", f"injected {stats['drops']}, resumed with Range"),
        ("byte flipped in transit", f"injected {stats['corruptions']}, caught by sha256 and fetched again"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items()))),
        ("retries", f"{sum(d['retries'] for d in devs.values())} commands resent"),
        ("retained births on the new version", f"{on_new} of {args.devices}"),
    ]
    load = os.getloadavg()
    print(f"\nOTA rollout, {time.strftime('%Y-%m-%d %H:%M')} (load average {load[0]:.1f} on {os.cpu_count()} cores)\n")
    print("| what | measured |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if args.keep:
        print(f"\nkept: {tmp}")
    else:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if code == 0 and on_new == args.devices else 1


if __name__ == "__main__":
    sys.exit(main())
