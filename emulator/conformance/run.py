"""`esp32emu conformance --broker URL`: boot the checks' boards against the
user's broker, run every check at once (each under its own deadlines), then
the broker restart (`--restart-cmd`, it disturbs the others), print the table
and write the JSON report. Exit 0 when every applicable behaviour passed, 1
otherwise; 2 (UsageError) for bad input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TextIO

from emulator.board.loader import FirmwareImage
from emulator.broker.certs import provision_tls
from emulator.conformance.checks import (
    BEHAVIOURS, BOOT_S, CHECKS, DEVICES, GRACE_S, PROBE_ID, Context, Row, check_restart, failed,
)
from emulator.observe.connection import backend_tls
from emulator.observe.recording import ObserverClient
from emulator.testing.harness import Emulator
from emulator.validation import BrokerURL, UsageError, parse_broker_url

OBSERVER_IDENTITY = "backend-conformance"


@dataclasses.dataclass
class Result:
    broker: str
    keepalive: int
    rows: list[Row]
    duration_s: float

    @property
    def ok(self) -> bool:
        return all(r.status != "fail" for r in self.rows)

    def as_dict(self) -> dict:
        return {"broker": self.broker, "keepalive": self.keepalive, "passed": self.ok,
                "duration_s": round(self.duration_s, 2), "rows": [r.as_dict() for r in self.rows]}


def table(result: Result) -> str:
    """The rows as a plain-text table (what the README shows)."""
    head = ("behaviour", "result", "measured", "bound", "detail")
    cells = [head] + [(r.behaviour, r.status, r.measured, r.bound, r.detail) for r in result.rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(c[j].ljust(widths[j]) for j in range(4)) + "  " + c[4])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    verdict = "PASS" if result.ok else "FAIL"
    n_fail = sum(r.status == "fail" for r in result.rows)
    lines.append(f"{verdict}: {result.broker}, KA={result.keepalive} s, {len(result.rows)} behaviours, "
                 f"{n_fail} failed, {result.duration_s:.1f} s")
    return "\n".join(line.rstrip() for line in lines)


def broker_url(text: str, tls: bool) -> BrokerURL:
    url = parse_broker_url(text, credentials=True)
    if tls and not url.tls:
        url = dataclasses.replace(url, scheme="mqtts")
    return url


def run_conformance(broker: str, *, tls: bool = False, certs_dir: Path = Path("certs"), keepalive: int = 5,
                    restart_cmd: str | None = None, report: Path | None = None, out: TextIO | None = None) -> int:
    url = broker_url(broker, tls)
    if report is not None and not os.access(Path(report).parent.resolve(), os.W_OK):
        raise UsageError(f"--report {report}: its folder does not exist or is not writable")
    pki: Path | None = None
    if url.tls:
        pki = Path(certs_dir)
        provision_tls(pki, [*DEVICES, PROBE_ID])  # UsageError when the PKI is missing
    print(f"esp32emu: conformance of {url} (KA={keepalive} s): {len(BEHAVIOURS)} behaviours, "
          f"about {int(1.5 * keepalive) + 7 + GRACE_S + 5:g} s", file=sys.stderr, flush=True)
    result = conformance(url, keepalive, pki, restart_cmd)
    print(table(result), file=out or sys.stdout, flush=True)
    if report is not None:
        report.write_text(json.dumps(result.as_dict(), indent=2) + "\n")
    return 0 if result.ok else 1


def conformance(url: BrokerURL, keepalive: int, certs_dir: Path | None, restart_cmd: str | None = None) -> Result:
    """Run every check against `url`; never raises for the broker's sake."""
    t0 = time.monotonic()
    try:
        obs = _observer(url, certs_dir)
    except ConnectionError as e:
        rows = [failed(key, f"the observer could not connect: {e}") for key, _ in BEHAVIOURS]
        return Result(str(url), keepalive, rows, time.monotonic() - t0)
    try:
        with tempfile.TemporaryDirectory(prefix="esp32emu-conformance-") as state:
            os.chmod(state, 0o700)  # the boards' flash holds their private keys
            emu = Emulator(Path(state), FirmwareImage())
            try:
                rows = _run_checks(Context(emu, obs, url, keepalive, certs_dir), restart_cmd)
            finally:
                emu.close()
                _clear_retained(obs)
    finally:
        obs.close()
    return Result(str(url), keepalive, rows, time.monotonic() - t0)


def _observer(url: BrokerURL, certs_dir: Path | None) -> ObserverClient:
    tls = None
    if certs_dir is not None:
        try:
            tls = backend_tls(certs_dir, OBSERVER_IDENTITY)
        except FileNotFoundError as e:
            raise UsageError(str(e)) from None
    obs = ObserverClient(url.host, url.port, f"{OBSERVER_IDENTITY}-{uuid.uuid4().hex[:8]}", tls=tls)
    if url.username is not None:
        obs.client.username_pw_set(url.username, url.password)
    try:
        obs.connect(10.0)
    except AssertionError as e:
        raise ConnectionError(str(e).removeprefix("observer: ")) from None
    # Leftovers of an earlier run: a retained status would pass for this run's.
    _clear_retained(obs)
    try:
        for dev in DEVICES:
            obs.subscribe(f"devices/{dev}/#", qos=1, timeout=10.0)
    except AssertionError as e:
        obs.close()
        raise ConnectionError(str(e).removeprefix("observer: ")) from None
    return obs


def _clear_retained(obs: ObserverClient) -> None:
    if not obs.connected:
        return  # a broker that dropped us: nothing to clear, and no PUBACK to wait for
    for dev in DEVICES:
        try:
            obs.publish(f"devices/{dev}/status", b"", qos=1, retain=True, timeout=5.0)
        except AssertionError:
            pass  # not allowed or not connected: the checks will say what they see


def _run_checks(ctx: Context, restart_cmd: str | None) -> list[Row]:
    for dev in DEVICES:
        ctx.boot(dev)
    # The longest check: boot, then the Will deadline and its grace, twice over for takeover.
    limit = BOOT_S * 2 + ctx.will_bound + GRACE_S + 15
    got: dict[str, Row] = {}
    pool = ThreadPoolExecutor(max_workers=len(CHECKS), thread_name_prefix="conformance")
    futures = {pool.submit(_guarded, check, keys, ctx): keys for check, keys in CHECKS}
    done, _pending = wait(futures, timeout=limit)
    pool.shutdown(wait=False, cancel_futures=True)
    for future, keys in futures.items():
        if future in done:
            for row in future.result():
                got[row.key] = row
        else:
            for key in keys:
                got[key] = failed(key, f"the check did not finish within {limit:g} s")
    for row in _guarded(lambda c: check_restart(c, restart_cmd), ("restart_retained",), ctx):
        got[row.key] = row
    return [got.get(key) or failed(key, "not run") for key, _ in BEHAVIOURS]


def _guarded(check, keys: tuple[str, ...], ctx: Context) -> list[Row]:
    """A check's rows; an error in the check itself becomes a failing row that names it."""
    try:
        return check(ctx)
    except Exception as e:  # noqa: BLE001 - one broken check must not end the run
        return [failed(key, f"the check failed: {type(e).__name__}: {e}") for key in keys]
