"""The behaviours `esp32emu conformance` checks, one function each.

Every check gets the `Context` (the emulator with the run's boards, the
observer, the keepalive) and returns `Row`s: pass, fail or n.a., what was
measured against which bound, and in `detail` why -- the broker's own words
(a CONNACK code) when it refused something. A check never raises for the
broker's sake and never waits without a deadline: a broker that drops, refuses
or stays silent gives a failing row that says so.

Each check has a board of its own (client id `cf-<check>`) so the checks run
at once; the whole run takes about one Will deadline, floor(1.5*KA)+7 s.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from emulator.board.board import Board
from emulator.broker.certs import Pki
from emulator.broker.probe import mqtt_connect_rc
from emulator.firmware.config import board_broker
from emulator.observe.recording import Message, ObserverClient
from emulator.run.stopping import shutdown_gracefully
from emulator.testing.harness import Emulator
from emulator.validation import BrokerURL

PREFIX = "devices"
BOOT_S = 15.0  # boot, WiFi, TLS, CONNECT, SUBSCRIBE, birth (0.3 s on an idle machine)
GRACE_S = 3.0  # waited past a bound before "never came"
RESET_BOUND_S = 1.0  # SPEC §4.4: socket killed -> Will within 1 s
OFF_S = 3600.0  # a board "powered off" stays off for the rest of the run
PROBE_ID = "cf-probe"  # the raw CONNECTs of the keepalive-limits check
MAX_KEEPALIVE = 65535

# CONNACK return codes of MQTT 3.1.1 (3.2.2.3), as the broker's words.
CONNACK_WORDS = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}

# (key, behaviour) in table order.
BEHAVIOURS = [
    ("connect_will", "CONNECT with Will accepted"),
    ("birth_retained", "birth retained for a new subscriber"),
    ("will_keepalive", "Will after keepalive expiry"),
    ("will_reset", "Will after a socket reset"),
    ("will_retained", "Will retained for a new subscriber"),
    ("no_will_disconnect", "no Will after a clean DISCONNECT"),
    ("will_takeover", "Will on session takeover (same client id)"),
    ("restart_retained", "retained status across a broker restart"),
    ("qos1_session", "QoS 1 command after reconnect (persistent session)"),
    ("keepalive_limits", "keepalive limits"),
    ("command_1k", "1 KiB command delivered to the device"),
    ("telemetry_64k", "64 KiB telemetry through the broker"),
]
TITLES = dict(BEHAVIOURS)


@dataclass
class Row:
    key: str
    status: str  # "pass" | "fail" | "n.a."
    measured: str = ""
    bound: str = ""
    detail: str = ""
    seconds: float | None = None  # the measured time, for the JSON report

    @property
    def behaviour(self) -> str:
        return TITLES[self.key]

    def as_dict(self) -> dict:
        return {"behaviour": self.behaviour, **asdict(self)}


def passed(key: str, measured: str = "", bound: str = "", detail: str = "", seconds: float | None = None) -> Row:
    return Row(key, "pass", measured, bound, detail, seconds)


def failed(key: str, detail: str, measured: str = "", bound: str = "", seconds: float | None = None) -> Row:
    return Row(key, "fail", measured, bound, detail, seconds)


def not_applicable(key: str, detail: str) -> Row:
    return Row(key, "n.a.", detail=detail)


def connack_text(rc: int) -> str:
    return f"CONNACK {rc} ({CONNACK_WORDS.get(rc, 'reserved code')})"


# -- what the observer sees ---------------------------------------------------------


def _body(m: Message) -> Any:
    try:
        return json.loads(m.payload)
    except ValueError:
        return None


def is_birth(m: Message) -> bool:
    body = _body(m)
    return isinstance(body, dict) and body.get("online") is True


def is_will(m: Message) -> bool:
    """The firmware's Will: `{"online": false}` and nothing else."""
    body = _body(m)
    return isinstance(body, dict) and body.get("online") is False and "reason" not in body


def is_planned_offline(m: Message) -> bool:
    body = _body(m)
    return isinstance(body, dict) and body.get("online") is False and "reason" in body


class Context:
    """The run's emulator, observer and boards, shared by every check."""

    def __init__(self, emu: Emulator, obs: ObserverClient, url: BrokerURL, keepalive: int,
                 certs_dir: Path | None) -> None:
        self.emu, self.obs, self.url, self.keepalive = emu, obs, url, keepalive
        self.certs_dir = certs_dir
        self.boards: dict[str, Board] = {}
        self.consoles: dict[str, list[str]] = {}
        self.last_tx: dict[str, float] = {}  # monotonic time of each board's last byte to the broker
        self.booted_at: dict[str, float] = {}

    @property
    def will_bound(self) -> int:
        """floor(1.5*KA) + 7 s: a broker checking keepalive about every 5 s (Mosquitto)."""
        return int(1.5 * self.keepalive) + 7

    @property
    def spec_bound(self) -> float:
        """1.5*KA: when MQTT 3.1.1 says the broker must drop a silent client [MQTT-3.1.2-24]."""
        return 1.5 * self.keepalive

    def status(self, dev: str) -> str:
        return f"{PREFIX}/{dev}/status"

    def topic(self, dev: str, suffix: str) -> str:
        return f"{PREFIX}/{dev}/{suffix}"

    # -- boards

    def boot(self, dev: str) -> Board:
        lines: list[str] = []
        self.consoles[dev] = lines
        board = self.emu.add_board(
            dev, self.url.host, self.url.port, start=False, console=lines.append, certs=self.certs_dir,
            keepalive=self.keepalive, interval=1, prefix=PREFIX, backoff={"base_ms": 200, "cap_ms": 1000},
            broker=board_broker(self.url))

        def tap(direction: str, data: bytes, t: float) -> None:
            if direction == "tx":
                self.last_tx[dev] = t

        board.link.taps.append(tap)
        self.boards[dev] = board
        self.booted_at[dev] = time.monotonic()
        self.emu.call(board.start)
        return board

    def why_offline(self, dev: str) -> str:
        """The board's last word about its connection (its console), for a failing row."""
        lines = [line for line in self.consoles.get(dev, []) if line.startswith(("mqtt:", "tls", "wifi", "net"))]
        # "mqtt: broker refused CONNECT: not authorized (code 5); retry 3 in 400 ms": the words, not the retry
        return lines[-1].split("; retry ")[0] if lines else "no console line about the connection"

    # -- waiting on the observer

    def wait(self, topic: str, match: Callable[[Message], bool], timeout: float, since: int = 0) -> Message | None:
        """The first message on `topic` matching from index `since`, or None after `timeout`."""
        if timeout <= 0:
            timeout = 0.001
        try:
            return self.obs.collect(topic, match, count=1, timeout=timeout, since=since)[0]
        except AssertionError:
            return None

    def online(self, dev: str, timeout: float = BOOT_S, since: int = 0) -> Message | None:
        return self.wait(self.status(dev), is_birth, timeout, since)

    def retained(self, dev: str, match: Callable[[Message], bool], timeout: float = 5.0) -> tuple[Message | None, str]:
        """Subscribe anew to the device's status topic (a filter the observer did not
        have) and wait for a retained message matching: what a new subscriber gets."""
        mark = self.obs.mark()
        topic = self.status(dev)
        try:
            self.obs.subscribe(topic, qos=1, timeout=timeout)
        except AssertionError as e:
            return None, str(e).removeprefix("observer: ")
        got = self.wait(topic, lambda m: m.retain and match(m), timeout, since=mark)
        if got is not None:
            return got, ""
        seen = [m for m in self.obs.messages[mark:] if m.topic == topic and m.retain]
        return None, (f"a new subscriber got {seen[-1].payload[:80]!r} (retained) instead" if seen
                      else "a new subscriber got no retained status")

    def probe_context(self) -> ssl.SSLContext | None:
        if self.certs_dir is None:
            return None
        pki = Pki(self.certs_dir)
        ctx = ssl.create_default_context(cafile=str(pki.ca_crt))
        ctx.load_cert_chain(pki.device_crt(PROBE_ID), pki.device_key(PROBE_ID))
        return ctx


def _s(seconds: float) -> str:
    return f"{seconds:.1f} s"


# -- the checks ------------------------------------------------------------------------


def _never_online(ctx: Context, dev: str, *keys: str, bound: str = "") -> list[Row] | None:
    """Failing rows for `keys` when the device's birth never came (None when it did)."""
    if ctx.online(dev) is not None:
        return None
    why = f"the device never came online: {ctx.why_offline(dev)}"
    return [failed(key, why, bound=bound if key == keys[0] else "") for key in keys]


def check_connect(ctx: Context) -> list[Row]:
    """cf-connect: CONNECT with a retained QoS 1 Will accepted (the birth comes);
    a new subscriber gets the birth retained; then the payload sizes a device meets."""
    dev = "cf-connect"
    birth = ctx.online(dev)
    if birth is None:
        why = f"no birth within {BOOT_S:g} s; the device says: {ctx.why_offline(dev)}"
        rc = _probe(ctx, ctx.keepalive, with_will=True)
        if isinstance(rc, int) and rc:
            why += f"; a raw CONNECT with the same Will got {connack_text(rc)}"
        keys = ("connect_will", "birth_retained", "command_1k", "telemetry_64k")
        return [failed(keys[0], why)] + [failed(k, "the device never came online (see the first row)") for k in keys[1:]]
    took = birth.t - ctx.booted_at[dev]
    rows = [passed("connect_will", f"birth {_s(took)} after power-on", f"≤ {BOOT_S:g} s",
                   f"Will QoS 1 retained, KA={ctx.keepalive} s, clean session", took)]
    got, why = ctx.retained(dev, is_birth)
    rows.append(passed("birth_retained", "RETAIN=1", "", "the birth, retained") if got
                else failed("birth_retained", why))
    rows.append(_command_1k(ctx, dev))
    rows.append(_telemetry_64k(ctx, dev))
    return rows


def _command_1k(ctx: Context, dev: str) -> Row:
    head = {"id": "cf-1k", "op": "ping", "args": {}}
    pad = 1024 - len(json.dumps({**head, "pad": ""}).encode())
    payload = json.dumps({**head, "pad": "x" * pad}).encode()
    mark = ctx.obs.mark()
    t0 = time.monotonic()
    try:
        ctx.obs.publish(ctx.topic(dev, "cmd"), payload, qos=1, timeout=5)
    except AssertionError as e:
        return failed("command_1k", f"the broker did not take a {len(payload)}-byte publish: {e}")

    def answered(m: Message) -> bool:
        body = _body(m)
        return isinstance(body, dict) and body.get("id") in ("cf-1k", None)

    got = ctx.wait(ctx.topic(dev, "cmd/result"), answered, 5.0, since=mark)
    if got is None:
        return failed("command_1k", f"no result to a {len(payload)}-byte command within 5 s", bound="≤ 5 s")
    took = got.t - t0
    return passed("command_1k", f"result in {_s(took)}", "≤ 5 s", f"{len(payload)} bytes, QoS 1", took)


def _telemetry_64k(ctx: Context, dev: str) -> Row:
    size = 64 * 1024
    payload = json.dumps({"seq": 0, "pad": "x" * (size - 20)}).encode()[:size - 2] + b'"}'
    topic = ctx.topic(dev, "telemetry")
    mark = ctx.obs.mark()
    t0 = time.monotonic()
    try:
        ctx.obs.publish(topic, payload, qos=1, timeout=5)
    except AssertionError as e:
        return failed("telemetry_64k", f"the broker did not take a 64 KiB publish: {e}")
    got = ctx.wait(topic, lambda m: len(m.payload) == len(payload), 5.0, since=mark)
    if got is None:
        return failed("telemetry_64k", "a 64 KiB publish was acknowledged but never delivered", bound="≤ 5 s")
    took = got.t - t0
    return passed("telemetry_64k", f"delivered in {_s(took)}", "≤ 5 s", f"{len(payload)} bytes", took)


def check_keepalive(ctx: Context) -> list[Row]:
    """cf-keepalive: the board loses power (no FIN, no more bytes); the broker must
    publish its Will once 1.5*KA passed without a packet."""
    dev = "cf-keepalive"
    bound = f"{ctx.spec_bound:g}..{ctx.will_bound} s"
    if rows := _never_online(ctx, dev, "will_keepalive", bound=bound):
        return rows
    mark = ctx.obs.mark()

    def power_off() -> float:
        ctx.boards[dev].power_cycle(OFF_S)  # on the loop: no byte can leave between these two lines
        return ctx.last_tx[dev]

    t_last = ctx.emu.call(power_off)
    deadline = t_last + ctx.will_bound + GRACE_S
    will = ctx.wait(ctx.status(dev), is_will, deadline - time.monotonic(), since=mark)
    if will is None:
        waited = ctx.will_bound + GRACE_S
        return [failed("will_keepalive", f"no Will within {waited:g} s of the device's last packet: the broker does "
                       f"not enforce keepalive (MQTT-3.1.2-24), a frozen device stays 'online'",
                       measured=f"none in {waited:g} s", bound=bound)]
    took = will.t - t_last
    spec = f"spec 1.5·KA = {ctx.spec_bound:g} s ({took - ctx.spec_bound:+.1f} s)"
    if took < ctx.spec_bound - 0.5:
        return [failed("will_keepalive", f"the Will came before 1.5·KA: the broker drops live clients early; {spec}",
                       _s(took), bound, took)]
    if took > ctx.will_bound:
        return [failed("will_keepalive", f"the Will came late; {spec}", _s(took), bound, took)]
    return [passed("will_keepalive", _s(took), bound, spec, took)]


def check_reset(ctx: Context) -> list[Row]:
    """cf-reset: its socket is reset (RST) and the board stays off; the Will
    comes at once, and a new subscriber gets it retained."""
    dev = "cf-reset"
    board = ctx.boards[dev]
    bound = f"≤ {RESET_BOUND_S:g} s"
    if rows := _never_online(ctx, dev, "will_reset", "will_retained", bound=bound):
        return rows
    mark = ctx.obs.mark()

    def reset_and_off() -> float:
        board.link.kill_connections(rst=True)
        board.power_cycle(OFF_S)  # no reconnect: the Will stays the last word
        return time.monotonic()

    t0 = ctx.emu.call(reset_and_off)
    will = ctx.wait(ctx.status(dev), is_will, RESET_BOUND_S + GRACE_S, since=mark)
    if will is None:
        row = failed("will_reset", f"no Will within {RESET_BOUND_S + GRACE_S:g} s of a connection reset",
                     measured="none", bound=bound)
    else:
        took = will.t - t0
        row = (passed("will_reset", _s(took), bound, "RST, no DISCONNECT", took) if took <= RESET_BOUND_S
               else failed("will_reset", "the Will came late", _s(took), bound, took))
    got, why = ctx.retained(dev, is_will)
    if got is not None:
        retained = passed("will_retained", "RETAIN=1", "", '{"online": false}, retained')
    elif will is None:
        retained = failed("will_retained", f"no Will was published; {why}")
    else:
        retained = failed("will_retained", f"the Will was published but not retained: {why}")
    return [row, retained]


def check_disconnect(ctx: Context) -> list[Row]:
    """cf-disconnect: a planned shutdown (offline status with a reason, then
    DISCONNECT); the broker must drop the Will."""
    dev = "cf-disconnect"
    bound = f"none in {ctx.will_bound} s"
    if rows := _never_online(ctx, dev, "no_will_disconnect", bound=bound):
        return rows
    mark = ctx.obs.mark()
    t0 = time.monotonic()
    ctx.emu.run(shutdown_gracefully([ctx.boards[dev]], 5.0), 15.0)
    planned = ctx.wait(ctx.status(dev), is_planned_offline, 5.0, since=mark)
    if planned is None:
        return [failed("no_will_disconnect", "the device's planned offline status never arrived", bound=bound)]
    will = ctx.wait(ctx.status(dev), is_will, t0 + ctx.will_bound - time.monotonic(), since=mark)
    if will is not None:
        took = will.t - t0
        return [failed("no_will_disconnect", "the broker published the Will after a clean DISCONNECT "
                       "(MQTT-3.14.4-3)", f"Will at {_s(took)}", bound, took)]
    return [passed("no_will_disconnect", f"none in {ctx.will_bound} s", bound, "planned offline kept")]


def check_takeover(ctx: Context) -> list[Row]:
    """cf-takeover: the board resets (EN button: the old connection left
    half-open) and reconnects with the same client id; the broker must close
    the old connection and publish its Will *before* the new birth, so the
    device ends online."""
    dev = "cf-takeover"
    board = ctx.boards[dev]
    bound = "before the new birth"
    if rows := _never_online(ctx, dev, "will_takeover", bound=bound):
        return rows
    mark = ctx.obs.mark()

    def reset() -> float:
        board.hard_reset()  # the EN button: the old connection stays half-open
        return time.monotonic()

    t0 = ctx.emu.call(reset)
    birth = ctx.online(dev, BOOT_S, since=mark)
    if birth is None:
        return [failed("will_takeover", f"the device did not come back within {BOOT_S:g} s: {ctx.why_offline(dev)}",
                       bound=bound)]
    will = ctx.wait(ctx.status(dev), is_will, t0 + ctx.will_bound + GRACE_S - time.monotonic(), since=mark)
    if will is None:
        return [failed("will_takeover", f"no Will for the taken-over connection within {ctx.will_bound + GRACE_S:g} s "
                       "(the old session was dropped silently)", "none", bound)]
    took = will.t - t0
    if will.t > birth.t:
        return [failed("will_takeover", f"the old connection's Will came {will.t - birth.t:.1f} s after the new birth: "
                       "the device shows offline while it is online", _s(took), bound, took)]
    return [passed("will_takeover", f"Will {_s(took)}, birth {_s(birth.t - t0)}", bound,
                   "old connection closed, its Will first", took)]


def check_keepalive_limits(ctx: Context) -> list[Row]:
    """Raw CONNECTs asking for the device's keepalive and the largest one: a
    broker may refuse a keepalive (CONNACK 2) or cap it (MQTT 3.1.1 has no way
    to say so); the device's own must be accepted."""
    own = _probe(ctx, ctx.keepalive)
    big = _probe(ctx, MAX_KEEPALIVE)
    words = {rc: (connack_text(rc) if isinstance(rc, int) and rc else "accepted" if rc == 0 else str(rc))
             for rc in (own, big)}
    detail = f"KA={ctx.keepalive}: {words[own]}; KA={MAX_KEEPALIVE}: {words[big]}"
    if big == 0:
        detail += " (a cap cannot be seen in MQTT 3.1.1)"
    if own != 0:
        return [failed("keepalive_limits", f"the device's keepalive is not accepted: {detail}", bound="KA accepted")]
    return [passed("keepalive_limits", "KA accepted", "KA accepted", detail)]


def _probe(ctx: Context, keepalive: int, with_will: bool = False) -> int | str:
    """The CONNACK code of a raw CONNECT, or what went wrong instead (one line)."""
    try:
        return mqtt_connect_rc(ctx.url.host, ctx.url.port, client_id=PROBE_ID, keepalive=keepalive,
                               username=ctx.url.username, password=ctx.url.password, timeout=5.0,
                               ssl_context=ctx.probe_context())
    except (OSError, ConnectionError, ssl.SSLError) as e:
        return f"no CONNACK ({e})"


def check_qos1_session(ctx: Context) -> list[Row]:
    return [not_applicable("qos1_session", "the firmware connects with a clean session (SPEC §2): "
                           "commands sent while it is offline are not kept for it")]


def check_restart(ctx: Context, restart_cmd: str | None, timeout: float = 60.0) -> list[Row]:
    """After the others: cf-reset is off with its retained Will; the user's
    `--restart-cmd` restarts the broker gracefully; a new subscriber must still
    get that retained offline status, and cf-connect must come back online."""
    key = "restart_retained"
    if not restart_cmd:
        return [not_applicable(key, "no --restart-cmd given")]
    mark = ctx.obs.mark()
    connects = ctx.obs.connects
    t0 = time.monotonic()
    # Its output goes to a file, not a pipe: a broker it leaves running in the
    # background would hold a pipe open and the command would never seem done.
    with tempfile.TemporaryFile("w+") as said:
        try:
            done = subprocess.run(restart_cmd, shell=True, stdin=subprocess.DEVNULL, stdout=said,
                                  stderr=subprocess.STDOUT, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [failed(key, f"--restart-cmd did not finish within {timeout:g} s")]
        said.seek(0)
        last = said.read()[-2000:].strip().splitlines()
    if done.returncode != 0:
        return [failed(key, f"--restart-cmd exited {done.returncode}" + (f": {last[-1]}" if last else ""))]
    # The observer reconnects by itself and renews its subscriptions: a new
    # subscription, so the retained statuses come again with RETAIN=1.
    kept = ctx.wait(ctx.status("cf-reset"), lambda m: m.retain and is_will(m), t0 + timeout - time.monotonic(), since=mark)
    if kept is None:
        state = "the observer is back" if ctx.obs.connects > connects else "the observer could not reconnect"
        return [failed(key, f"no retained offline status for the powered-off device within {timeout:g} s "
                       f"of the restart ({state}): lost across the restart")]
    back = ctx.online("cf-connect", BOOT_S, since=mark)
    took = time.monotonic() - t0
    if back is None:
        return [failed(key, f"retained status kept, but the running device was not back online within {BOOT_S:g} s",
                       _s(took))]
    return [passed(key, f"back online {_s(back.t - t0)}", "", "retained offline kept; the device republished online",
                   back.t - t0)]


CHECKS: list[tuple[Callable[[Context], list[Row]], tuple[str, ...]]] = [
    (check_connect, ("connect_will", "birth_retained", "command_1k", "telemetry_64k")),
    (check_keepalive, ("will_keepalive",)),
    (check_reset, ("will_reset", "will_retained")),
    (check_disconnect, ("no_will_disconnect",)),
    (check_takeover, ("will_takeover",)),
    (check_keepalive_limits, ("keepalive_limits",)),
    (check_qos1_session, ("qos1_session",)),
]
DEVICES = ("cf-connect", "cf-keepalive", "cf-reset", "cf-disconnect", "cf-takeover")
