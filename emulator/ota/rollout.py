"""`esp32emu rollout`: a release to a fleet, wave by wave, over the broker.

1. Read the release's manifest (its `version` is the target) and, when the
   PKI has a `release.pub`, check its signature (a warning: the boards are
   the judges and refuse it themselves).
2. Find the devices: the retained `<prefix>/<id>/status` of every device
   (or of the `--devices` given), with the `fw` each runs.
3. Waves (cumulative: `1%,10%,50%,100%` of the devices, in id order): send
   `{"op": "ota", "args": {"url": ...}}` to each device of the wave that does
   not already run the target (an offline one gets it when its birth comes),
   then watch `<prefix>/<id>/ota`, `cmd/result` and the births until every
   device of the wave has an outcome:
   - `committed`: the new version came up and confirmed itself (its trial
     birth's `fw` must be the target: a board that says committed but runs
     another version has `failed`);
   - `current`: it already ran the target;
   - `rolled_back`: the new version failed its trial boot; the board runs the old one (final);
   - `failed`: the update failed on the board (a `failed` state, an `ok: false`
     result naming a download, or a birth on the old version with no result:
     the request lost to a power cut); resent up to `--retries` times. (A
     power cut during the boot-time update the board gets over by itself.)
   - `refused`: `ok: false` for a reason a retry cannot change (bad signature, no key, too big);
   - `timeout`: no outcome within `--timeout`; `offline`: never online during its wave.
4. After a wave: when more than `--max-failures` of its devices failed
   (offline ones not counted), the rollout halts; the rest is `not_started`.

Exit 0 when every chosen device ends `committed` or `current`, else 1. The
report (`--report`) is JSON: the release, the waves, and per device `from`,
`to` (what it runs at the end), `outcome`, `duration_s`, `retries`, `error`.

The MQTT side is the observers' one paho connection (emulator/observe/connection.py).
"""

from __future__ import annotations

import json
import math
import os
import ssl
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from emulator.observe.connection import BrokerConnection, backend_tls
from emulator.observe.counting import parse_payload
from emulator.ota.release import MANIFEST_MAX, ReleaseError, load_public_key, read_manifest, verify
from emulator.validation import UsageError, device_id_error, parse_broker_url

OK = ("committed", "current")
FINAL = ("committed", "current", "rolled_back", "failed", "refused", "timeout", "offline")
RETRIABLE_ERRORS = ("download", "fetch", "sha256", "power", "timed out", "timeout", "connection", "link", "reset")
BUSY = "update in progress"
REBOOT_GRACE_S = 20.0  # a board back from a reboot mid-update publishes its `failed` outcome within this


def parse_waves(text: str) -> list[float]:
    """`1%,10%,50%,100%` -> [1.0, 10.0, 50.0, 100.0] (cumulative shares, increasing)."""
    out = []
    for part in text.split(","):
        part = part.strip().removesuffix("%")
        try:
            p = float(part)
        except ValueError:
            raise UsageError(f"--waves {text!r}: {part!r} is not a percentage (like 1%,10%,50%,100%)") from None
        if not 0 < p <= 100 or (out and p <= out[-1]):
            raise UsageError(f"--waves {text!r}: shares must increase within (0, 100]%")
        out.append(p)
    return out


def parse_percent(text: str, name: str = "--max-failures") -> float:
    try:
        p = float(text.strip().removesuffix("%"))
    except ValueError:
        raise UsageError(f"{name} {text!r}: not a percentage (like 5%)") from None
    if not 0 <= p <= 100:
        raise UsageError(f"{name} {text!r}: must be within 0..100%")
    return p


def wave_sizes(n: int, waves: list[float]) -> list[int]:
    """How many devices each wave adds: ceil(share * n) cumulative, at least one each while any are left."""
    sizes, done = [], 0
    for p in waves:
        upto = min(n, max(done + 1, math.ceil(p * n / 100 - 1e-9)))
        sizes.append(upto - done)
        done = upto
    return [s for s in sizes if s > 0]


@dataclass
class Release:
    url: str
    version: str
    files: int
    warning: str | None = None  # the signature does not verify with the PKI's release.pub


def fetch_release(url: str, certs_dir: Path | None) -> Release:
    """The manifest at `url` (http or https; https verifies with the PKI's ca.crt when there is one)."""
    if not url.startswith(("http://", "https://")) or not url.endswith(".json"):
        raise UsageError(f"--release {url!r}: expected http(s)://host:port/.../manifest.json")
    ctx = None
    if url.startswith("https://"):
        ca = certs_dir / "ca.crt" if certs_dir is not None else None
        ctx = ssl.create_default_context(cafile=str(ca) if ca is not None and ca.is_file() else None)

    def get(u: str) -> bytes:
        try:
            with urllib.request.urlopen(u, timeout=10, context=ctx) as r:  # noqa: S310 - http(s) only, checked above
                return r.read(MANIFEST_MAX + 1)
        except urllib.error.HTTPError as e:
            raise ConnectionError(f"release {u}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ConnectionError(f"release {u}: cannot fetch it: {getattr(e, 'reason', e)}") from None

    text = get(url)
    try:
        m = read_manifest(text, url)
    except ReleaseError as e:
        raise UsageError(f"--release: {e}") from None
    rel = Release(url, m["version"], len(m["files"]))
    pub = certs_dir / "release.pub" if certs_dir is not None else None
    if pub is not None and pub.is_file():
        try:
            ok = verify(load_public_key(pub), text, get(url + ".sig"))
        except (ConnectionError, ReleaseError):
            ok = False
        if not ok:
            rel.warning = f"the manifest's signature does not verify with {pub}: boards with that key will refuse it"
    return rel


@dataclass
class Device:
    id: str
    fw: str | None = None  # what it runs (last birth)
    boot: int | None = None  # its boot counter (last birth)
    start_boot: int | None = None
    online: bool = False
    wave: int | None = None
    start_fw: str | None = None
    state: str = "waiting"  # waiting | sent | <the board's ota state> | an outcome
    progress: int = 0
    outcome: str | None = None
    error: str | None = None
    retries: int = 0
    cmd_id: str | None = None
    started: float | None = None  # the wave's start for this device
    ended: float | None = None
    resend: bool = False  # send (again) when it is online
    progressed: bool = False  # this attempt's first ota state came (an earlier attempt's `failed` is not ours)
    rebooted_at: float | None = None  # a birth on the old version mid-update: its `failed` is due
    errors: list = field(default_factory=list)  # every failure on the way (each retry's reason)
    resets: list = field(default_factory=list)  # the reset cause of each birth during its update

    def report(self, target: str) -> dict:
        boots = self.boot - self.start_boot if self.boot is not None and self.start_boot is not None else None
        return {"wave": self.wave, "from": self.start_fw, "to": self.fw, "target": target,
                "outcome": self.outcome or "not_started", "state": self.state,
                "duration_s": round(self.ended - self.started, 2) if self.started and self.ended else None,
                "retries": self.retries, "error": self.error, "errors": self.errors, "resets": self.resets,
                "boots": boots}


@dataclass
class Options:
    broker: str
    release: str
    waves: list[float] = field(default_factory=lambda: [1.0, 10.0, 50.0, 100.0])
    max_failures: float = 5.0
    devices: list[str] | None = None  # None: every device with a retained status
    report: Path | None = None
    certs_dir: Path = Path("certs")
    prefix: str = "devices"
    timeout: float = 300.0  # per device, from its wave's start
    retries: int = 2
    discover_s: float = 5.0
    plain: bool | None = None  # None: plain lines unless stdout is a terminal


class Rollout:
    """The rollout's state, fed by paho's thread (`on_message`), driven by `run()`."""

    def __init__(self, opts: Options, release: Release, say: Callable[[str], None] = print) -> None:
        self.opts, self.release, self.say = opts, release, say
        self.target = release.version
        self.devices: dict[str, Device] = {}
        self.cond = threading.Condition()
        self.conn: BrokerConnection | None = None
        self.waves: list[dict] = []
        self.halted: str | None = None
        self._n = 0
        self.t0 = time.monotonic()

    # -- paho's thread ------------------------------------------------------------

    def on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        pre = self.opts.prefix.split("/")
        if parts[: len(pre)] != pre or len(parts) < len(pre) + 2:
            return
        did, kind = parts[len(pre)], "/".join(parts[len(pre) + 1:])
        if kind not in ("status", "ota", "cmd/result") or device_id_error(did) is not None:
            return
        payload = parse_payload(msg.payload)
        if not isinstance(payload, dict):
            return
        with self.cond:
            d = self.devices.get(did)
            if d is None:
                if kind != "status" or (self.opts.devices is not None and did not in self.opts.devices):
                    return
                d = self.devices[did] = Device(did)
            if kind == "status":
                self._status(d, payload, msg.retain)
            elif kind == "ota" and not msg.retain:
                self._ota(d, payload)
            elif kind == "cmd/result" and payload.get("id") == d.cmd_id and d.cmd_id is not None:
                self._result(d, payload)
            self.cond.notify_all()

    def _status(self, d: Device, p: dict, retained: bool) -> None:
        d.online = p.get("online") is True
        if not d.online:
            if p.get("reason") == "ota" and d.outcome is None and d.state == "sent":
                d.state = "updating"  # offline into the update (it runs before the app, without MQTT)
            return
        if isinstance(p.get("fw"), str):
            d.fw = p["fw"]
        if isinstance(p.get("boot"), int):
            d.boot = p["boot"]
        if retained or d.outcome is not None or d.started is None:
            return
        if d.state == "waiting" or d.cmd_id is None:
            return  # an offline device came up: the driver sends now
        d.resets.append(p.get("reset"))
        if d.fw != self.target and d.state in ("sent", "updating", "downloading", "verifying", "installing"):
            # Power lost (or a reset) mid-update: the journal makes the board say `failed`
            # once online; the driver retries after REBOOT_GRACE_S when nothing came.
            d.rebooted_at = time.monotonic()
            d.error = f"rebooted during {d.state} (running {d.fw})"

    def _ota(self, d: Device, p: dict) -> None:
        if d.started is None or d.outcome is not None or p.get("version") != self.target:
            return
        state = p.get("state")
        if not isinstance(state, str) or d.cmd_id is None:
            return  # a retry is due: whatever comes now is about the attempt that failed
        if not d.progressed and state in ("failed", "committed", "rolled_back") and d.rebooted_at is None:
            return  # an earlier attempt's outcome, published late
        d.progressed, d.rebooted_at = True, None
        d.state = state
        if isinstance(p.get("progress"), int):
            d.progress = p["progress"]
        if state == "committed" and d.fw != self.target:  # its trial birth said otherwise
            self._end(d, "failed", f"says committed but its birth says fw {d.fw}")
        elif state == "committed":
            self._end(d, "committed")
        elif state == "rolled_back":
            self._end(d, "rolled_back", str(p.get("error")))
        elif state == "failed":
            self._failed(d, str(p.get("error")))

    def _result(self, d: Device, p: dict) -> None:
        if p.get("ok") is True:
            return  # staged and verified; the install and the trial boot follow on the ota topic
        error = str(p.get("error"))
        if error.startswith("already running") and self.target in error:
            self._end(d, "current")
        elif BUSY in error:
            pass  # our earlier command is still running (a retry crossed it): its outcome comes on the ota topic
        elif any(word in error.lower() for word in RETRIABLE_ERRORS):
            self._failed(d, error)
        else:
            self._end(d, "refused", error)

    def _failed(self, d: Device, error: str) -> None:
        """A failure that may pass: sent again (when online) while retries last."""
        d.errors.append(error)
        if d.retries < self.opts.retries:
            d.retries += 1
            d.error = error
            d.resend = True
            d.state = "retry"
            d.cmd_id = None
            d.rebooted_at = None
        else:
            self._end(d, "failed", error)

    def _end(self, d: Device, outcome: str, error: str | None = None) -> None:
        d.outcome, d.state, d.ended = outcome, outcome, time.monotonic()
        d.error = error if outcome not in OK else None
        if error is not None and (not d.errors or d.errors[-1] != error):  # _failed may have noted it
            d.errors.append(error)

    # -- the driver (main thread) -------------------------------------------------------

    def _send(self, d: Device) -> None:
        self._n += 1
        d.cmd_id = f"rollout-{os.getpid()}-{self._n}"
        d.state, d.resend, d.progressed, d.rebooted_at = "sent", False, False, None
        body = json.dumps({"id": d.cmd_id, "op": "ota", "args": {"url": self.release.url}})
        assert self.conn is not None
        self.conn.client.publish(f"{self.opts.prefix}/{d.id}/cmd", body, qos=1)

    def connect(self) -> None:
        url = parse_broker_url(self.opts.broker, credentials=True)
        tls = None
        if url.tls:
            try:
                tls = backend_tls(self.opts.certs_dir, "backend-rollout")
            except FileNotFoundError as e:
                raise UsageError(str(e)) from None
        self.conn = BrokerConnection(url.host, url.port, f"esp32emu-rollout-{os.getpid()}", tls=tls,
                                     on_message=self.on_message)
        if url.username is not None:
            self.conn.client.username_pw_set(url.username, url.password)
        self.conn.connect()
        p = self.opts.prefix
        self.conn.subscribe([(f"{p}/+/status", 1), (f"{p}/+/ota", 1), (f"{p}/+/cmd/result", 1)])

    def discover(self) -> list[str]:
        """The devices of this rollout, once their retained statuses are in."""
        want = self.opts.devices
        deadline = time.monotonic() + self.opts.discover_s
        with self.cond:
            last, seen = time.monotonic(), 0
            while time.monotonic() < deadline:
                if want is not None and all(w in self.devices for w in want):
                    break
                if want is None and time.monotonic() - last > 1.0:
                    break  # retained statuses come in one burst right after the SUBACK; a second of quiet ends it
                self.cond.wait(0.2)
                if len(self.devices) != seen:
                    seen, last = len(self.devices), time.monotonic()
            for w in want or ():
                self.devices.setdefault(w, Device(w))
            ids = sorted(want if want is not None else self.devices)
        return ids

    def run(self, view: "View") -> int:
        ids = self.discover()
        if not ids:
            raise UsageError(f"no devices under {self.opts.prefix}/+/status on {self.opts.broker}: nothing to update")
        sizes = wave_sizes(len(ids), self.opts.waves)
        self.say(f"esp32emu: rollout of {self.target} ({self.release.url}) to {len(ids)} device(s) in "
                 f"{len(sizes)} wave(s) of {', '.join(map(str, sizes))}; halt above {self.opts.max_failures:g}% failed")
        done = 0
        for w, size in enumerate(sizes, 1):
            members = [self.devices[i] for i in ids[done: done + size]]
            done += size
            wave = self._wave(w, members, view)
            self.waves.append(wave)
            if wave["failure_rate"] * 100 > self.opts.max_failures:
                self.halted = (f"wave {w}: {wave['failed']} of {wave['devices']} failed "
                               f"({wave['failure_rate'] * 100:.1f}% > {self.opts.max_failures:g}%)")
                break
        view.update(self, final=True)
        chosen = [self.devices[i] for i in ids]
        return 0 if not self.halted and all(d.outcome in OK for d in chosen) else 1

    def _wave(self, w: int, members: list[Device], view: "View") -> dict:
        t0 = time.monotonic()
        with self.cond:
            for d in members:
                d.wave, d.started, d.start_fw, d.start_boot = w, t0, d.fw, d.boot
                if d.fw == self.target:
                    self._end(d, "current")
                else:
                    d.resend = True
        while True:
            with self.cond:
                now = time.monotonic()
                for d in members:
                    if d.outcome is None and d.rebooted_at is not None and now - d.rebooted_at > REBOOT_GRACE_S:
                        self._failed(d, d.error or "rebooted mid-update")
                    if d.outcome is None and d.resend and d.online:
                        self._send(d)
                    if d.outcome is None and now - t0 > self.opts.timeout:
                        self._end(d, "offline" if d.cmd_id is None and d.state == "waiting" else "timeout",
                                  f"no outcome within {self.opts.timeout:g} s (last state {d.state})")
                if all(d.outcome is not None for d in members):
                    break
                self.cond.wait(0.5)
            view.update(self)
        failed = sum(d.outcome not in OK and d.outcome != "offline" for d in members)
        counted = sum(d.outcome != "offline" for d in members)
        return {"wave": w, "share": self.opts.waves[w - 1], "devices": len(members),
                "ok": sum(d.outcome in OK for d in members), "failed": failed,
                "offline": len(members) - counted, "failure_rate": failed / counted if counted else 0.0,
                "duration_s": round(time.monotonic() - t0, 2)}

    def report(self) -> dict:
        with self.cond:
            counts: dict[str, int] = {}
            devices = {}
            for d in sorted(self.devices.values(), key=lambda d: d.id):
                if d.wave is None and self.opts.devices is not None and d.id not in self.opts.devices:
                    continue
                r = d.report(self.target)
                devices[d.id] = r
                counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        return {"release": self.release.url, "version": self.target, "broker": str(parse_broker_url(self.opts.broker, True)),
                "waves": self.waves, "max_failures_pct": self.opts.max_failures, "halted": self.halted is not None,
                "halt_reason": self.halted, "duration_s": round(time.monotonic() - self.t0, 2),
                "outcomes": counts, "devices": devices}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class View:
    """The live table on a terminal (rich), else a line every few seconds."""

    def __init__(self, plain: bool | None = None) -> None:
        self.plain = not sys.stdout.isatty() if plain is None else plain
        self.live = None
        self._last = 0.0

    def _table(self, r: Rollout):
        from rich.console import Group
        from rich.table import Table

        waves = Table(title=f"rollout {r.target}  ({time.monotonic() - r.t0:.0f} s)", title_justify="left")
        for col in ("wave", "devices", "committed", "current", "in progress", "retries", "rolled back", "failed", "other"):
            waves.add_column(col, justify="right")
        bad = Table(title="latest problems", title_justify="left")
        for col in ("device", "wave", "state", "retries", "error"):
            bad.add_column(col)
        with r.cond:
            by_wave: dict[int, list[Device]] = {}
            for d in r.devices.values():
                if d.wave is not None:
                    by_wave.setdefault(d.wave, []).append(d)
            for w in sorted(by_wave):
                ds = by_wave[w]

                def n(*outs: str | None, ds=ds) -> str:
                    return str(sum(d.outcome in outs for d in ds))

                waves.add_row(str(w), str(len(ds)), n("committed"), n("current"), n(None),
                              str(sum(d.retries for d in ds)), n("rolled_back"), n("failed", "refused"),
                              n("timeout", "offline"))
            problems = sorted((d for d in r.devices.values() if d.error), key=lambda d: -(d.ended or d.started or 0))[:8]
            for d in problems:
                bad.add_row(d.id, str(d.wave), d.state, str(d.retries), (d.error or "")[:70])
        return Group(waves, bad) if problems else waves

    def _line(self, r: Rollout) -> str:
        with r.cond:
            counts: dict[str, int] = {}
            for d in r.devices.values():
                if d.wave is not None:
                    key = d.outcome or d.state
                    counts[key] = counts.get(key, 0) + 1
        parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return f"esp32emu: rollout {r.target} +{time.monotonic() - r.t0:.0f}s wave {len(r.waves) + 1}: {parts}"

    def update(self, r: Rollout, final: bool = False) -> None:
        now = time.monotonic()
        if self.plain:
            if final or now - self._last >= 2.0:
                self._last = now
                print(self._line(r), flush=True)
            return
        if self.live is None:
            from rich.live import Live

            self.live = Live(self._table(r), refresh_per_second=2)
            self.live.start()
        self.live.update(self._table(r))
        if final:
            self.live.stop()

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()


def run_rollout(opts: Options) -> int:
    """`esp32emu rollout`: exit 0 when every device ends on the release, 1 otherwise."""
    parse_broker_url(opts.broker, credentials=True)  # bad input fails before anything is fetched
    for did in opts.devices or ():
        why = device_id_error(did)
        if why is not None:
            raise UsageError(f"--devices: {why}")
    release = fetch_release(opts.release, opts.certs_dir)
    if release.warning:
        print(f"esp32emu: warning: {release.warning}", file=sys.stderr, flush=True)
    rollout = Rollout(opts, release)
    view = View(opts.plain)
    try:
        rollout.connect()
        code = rollout.run(view)
    except KeyboardInterrupt:
        rollout.halted = "interrupted (Ctrl-C)"
        code = 1
    finally:
        view.close()
        rollout.close()
    report = rollout.report()
    if opts.report is not None:
        opts.report.write_text(json.dumps(report, indent=2) + "\n")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report["outcomes"].items()))
    state = f"halted: {rollout.halted}" if rollout.halted else "done"
    print(f"esp32emu: rollout {release.version} {state}; {counts}; {report['duration_s']:.1f} s"
          + (f"; report {opts.report}" if opts.report else ""), flush=True)
    return code
