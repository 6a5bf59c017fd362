"""An independent paho-mqtt observer of the devices on a broker: it counts
what actually reached the broker (births, Wills, telemetry and its `seq`
gaps) and measures command round trips, so fleet figures never come from the
boards counting themselves. Works for any device under the prefix, ours or
not: a status or telemetry payload that is not our JSON is still counted
(plain `online`/`offline` statuses are understood, telemetry without `seq`
is counted as received with no loss inference).

One paho network thread (the connection: emulator/observe/connection.py);
every figure is read under one lock. Nothing here knows about emulated boards.

No silent timeouts: a subscription the broker denies (SUBACK 0x80) makes
`start()` fail with one line, and so does a flush marker that does not come
back. Mosquitto 2.0 with MQTT 3.1.1 gives no sign of what its ACL denies (a
denied publish is acknowledged like any other, a denied subscription granted
and then filtered), so the marker's round trip is the only way to tell. A
later `flush()` that fails says so once on `warn` and returns False at once.
"""

from __future__ import annotations

import heapq
import json
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from emulator.observe.connection import BrokerConnection, backend_tls

_PLAIN_ONLINE = {"online", "true", "1", "connected"}
_PLAIN_OFFLINE = {"offline", "false", "0", "disconnected"}


def parse_payload(raw: bytes):
    """A device's payload: its JSON, else its text (a foreign device's plain `online`)."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace").strip()


@dataclass(slots=True)
class DeviceView:
    state: str | None = None  # "online" | "offline" (planned) | "will" (Last Will) | None: no status seen
    reason: str | None = None  # the planned offline's reason
    boot: int | None = None
    births: int = 0  # live (not retained) births: the first is the connect, the rest are reconnects
    wills: int = 0  # live Wills
    last_seq: int | None = None
    received: int = 0  # telemetry messages, with or without seq
    seq_received: int = 0  # telemetry messages that carried a seq
    inferred_sent: int = 0  # per boot: highest seq seen + 1, summed over boots
    boot_base: int = 0
    seq_origin: int = 0  # the first seq this boot's count starts from
    saw_boot_start: bool = False  # a live birth of the current boot arrived: count from seq 0
    # This boot's telemetry came before its birth (the QoS 1 birth queued behind our
    # in-flight window, the QoS 0 telemetry not): the birth then names the boot, no reset.
    boot_by_seq: bool = False
    last_seen: float = 0.0  # time.monotonic() of the last message about this device
    last_telemetry_at: float | None = None
    offline_since: float | None = None
    # What the birth said, and wall-clock times (time.time()) for the dashboard's API:
    fw: str | None = None
    reset: str | None = None
    ip: str | None = None
    since: float | None = None  # the last presence change (online, offline, Will)
    last: object = None  # the last telemetry payload (parsed JSON, or the text when it was not JSON); None with keep_last off
    last_at: float | None = None  # when it came
    # Kept only when the observer is asked to (`keep(...)`): newest last.
    presence: deque | None = None  # {"at", "state", "reason", "boot", "retained"} per status message
    recent: deque | None = None  # (at, payload bytes as received) of the last telemetry messages

    @property
    def lost(self) -> int:
        return max(self.inferred_sent - self.seq_received, 0)

    @property
    def reconnects(self) -> int:
        return max(self.births - 1, 0)  # the first live birth is the connect

    @property
    def online(self) -> bool:
        return self.state == "online"


class FleetObserver:
    """Subscribes to `<prefix>/+/status`, `<prefix>/+/telemetry` and
    `<prefix>/+/cmd/result`; `summary()` and `worst()` read the figures."""

    def __init__(self, host: str, port: int, prefix: str = "devices", warn=None):
        self.prefix = prefix
        self.devices: dict[str, DeviceView] = {}
        self.lock = threading.Lock()
        self._changed = threading.Condition(self.lock)  # notified after every counted message
        self.rtts_ms: list[float] = []
        self.commands_sent = 0
        self.commands_ok = 0
        self.telemetry_total = 0  # for messages/s
        self.online_count = 0
        self.expected: int | None = None  # with expect(n): when n devices were first online together
        self.all_online_at: float | None = None
        self._pending: dict[str, float] = {}
        self._client_id = f"esp32emu-observer-{uuid.uuid4().hex[:8]}"
        # Under the prefix, where the TLS broker's ACL lets the backend write
        # (`<prefix>/#`); not a device topic any of our filters matches.
        self._flush_topic = f"{prefix}/{self._client_id}/flush"
        self._flushed: dict[str, threading.Event] = {}
        self._flush_broken = False  # a marker did not come back: said once, no more waiting
        self.keep_presence = 0  # per device, with keep(): the last status messages
        self.keep_telemetry = 0  # ... and the last telemetry messages
        # Each device's last telemetry payload, parsed (DeviceView.last): ~1 KiB a
        # device. A fleet that shows it nowhere turns it off; keep() turns it on.
        self.keep_last = True
        # Called under the lock after each counted message, on paho's thread:
        # listener(kind, device_id, view or None, payload, retained, wall_time, rtt_ms or None),
        # kind "status" | "telemetry" | "result". Must not block.
        self.listeners: list = []
        self.warn = warn or (lambda line: print(f"esp32emu: {line}", file=sys.stderr, flush=True))
        self.conn = BrokerConnection(host, port, self._client_id, on_message=self._on_message)
        self.client = self.conn.client
        # A large fleet answers a burst of commands at once; never drop a QoS 1 publish here.
        self.client.max_queued_messages_set(0)
        self.host, self.port = host, port

    def use_tls(self, certs_dir: Path, identity: str = "backend") -> None:
        """Connect with a backend identity (`certs/backend.crt`, or
        `certs/backends/<identity>.crt`): fleet-wide rights in the ACL of
        `esp32emu broker --tls`; the broker makes its CN the client id, so
        each backend client names its own."""
        self.client.tls_set(**backend_tls(certs_dir, identity))

    def start(self, timeout: float = 10.0) -> "FleetObserver":
        """Connect, subscribe and see a marker come back (ConnectionError: one line saying why not)."""
        self.conn.connect(timeout)
        try:
            self.conn.subscribe(self._filters(), timeout)
            if not self.flush(timeout, report=False):
                raise ConnectionError(self._flush_problem(timeout))
        except ConnectionError:
            self.conn.close()
            raise
        return self

    def _flush_problem(self, timeout: float) -> str:
        return (f"publish to {self._flush_topic} denied or lost: the observer's marker did not come back "
                f"within {timeout:g} s (does the broker's ACL let this client write and read there?)")

    def stop(self) -> None:
        self.conn.close()

    def keep(self, presence: int, telemetry: int) -> None:
        """Keep each device's last `presence` status messages and last
        `telemetry` telemetry messages (the dashboard's device panel), and
        its last telemetry payload (`DeviceView.last`)."""
        with self.lock:
            self.keep_presence, self.keep_telemetry = presence, telemetry
            self.keep_last = True

    def expect(self, n: int) -> None:
        """Record `all_online_at` the first time n devices are online together."""
        self.expected = n

    # -- paho callbacks (network thread) ----------------------------------------

    def _filters(self) -> list[tuple[str, int]]:
        p = self.prefix
        return [(f"{p}/+/status", 1), (f"{p}/+/telemetry", 0), (f"{p}/+/cmd/result", 1), (self._flush_topic, 0)]

    def _view(self, device_id: str) -> DeviceView:
        view = self.devices.get(device_id)
        if view is None:
            view = self.devices[device_id] = DeviceView()
        return view

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == self._flush_topic:
            event = self._flushed.pop(msg.payload.decode(), None)
            if event is not None:
                event.set()
            return
        parts = msg.topic.split("/", 2)
        if len(parts) < 3 or not parts[1]:
            return
        device_id, kind = parts[1], parts[2]
        now, wall = time.monotonic(), time.time()
        body = parse_payload(msg.payload)
        rtt = None
        with self.lock:
            view = None
            if kind == "telemetry":
                view = self._view(device_id)
                view.last_seen = now
                self._telemetry(view, body, now, wall, msg.payload)
            elif kind == "status":
                view = self._view(device_id)
                view.last_seen = now
                self._status(view, body, msg.retain, now, wall)
            elif kind == "cmd/result" and isinstance(body, dict):
                kind = "result"
                view = self.devices.get(device_id)
                sent = self._pending.pop(str(body.get("id")), None)
                if sent is not None:
                    rtt = (now - sent) * 1000
                    self.rtts_ms.append(rtt)
                    if body.get("ok") is True:
                        self.commands_ok += 1
            else:
                return
            for listener in self.listeners:
                listener(kind, device_id, view, body, msg.retain, wall, rtt)
            self._changed.notify_all()

    def _set_state(self, view: DeviceView, state: str, now: float, wall: float) -> None:
        was_online = view.state == "online"
        if state != view.state:
            view.since = wall
        view.state = state
        if state == "online":
            view.offline_since = None
            if not was_online:
                self.online_count += 1
                if self.expected is not None and self.all_online_at is None and self.online_count >= self.expected:
                    self.all_online_at = now
        else:
            if was_online or view.offline_since is None:
                view.offline_since = now
            if was_online:
                self.online_count -= 1

    def _status(self, view: DeviceView, body, retained: bool, now: float, wall: float) -> None:
        if isinstance(body, dict):
            online = body.get("online")
        elif isinstance(body, bool):
            online = body
        else:
            text = str(body).lower()
            online = True if text in _PLAIN_ONLINE else False if text in _PLAIN_OFFLINE else None
        if online is True:
            self._set_state(view, "online", now, wall)
            view.reason = None
            if not retained:
                view.births += 1
            if isinstance(body, dict):
                view.fw, view.reset, view.ip = (_text(body.get(k)) for k in ("fw", "reset", "ip"))
            boot = body.get("boot") if isinstance(body, dict) else None
            if isinstance(boot, int) and boot != view.boot and view.boot_by_seq:
                view.boot = boot  # its telemetry is already being counted
            elif isinstance(boot, int) and boot != view.boot:
                view.boot = boot
                view.boot_base = view.inferred_sent
                view.last_seq = None
                # Joined mid-boot (a retained birth): count from the first seq we see.
                view.saw_boot_start = not retained
            view.boot_by_seq = False
        elif online is False:
            # Our Will is exactly {"online": false}; a planned offline names its reason.
            will = isinstance(body, dict) and set(body) == {"online"}
            self._set_state(view, "will" if will else "offline", now, wall)
            view.reason = _text(body.get("reason")) if isinstance(body, dict) else None
            if will and not retained:
                view.wills += 1
        else:
            return
        if self.keep_presence:
            if view.presence is None:
                view.presence = deque(maxlen=self.keep_presence)
            view.presence.append({"at": wall, "state": view.state, "reason": view.reason,
                                  "boot": view.boot if online else None, "retained": retained})

    def _telemetry(self, view: DeviceView, body, now: float, wall: float, raw: bytes = b"") -> None:
        self.telemetry_total += 1
        view.received += 1
        view.last_telemetry_at = now
        view.last_at = wall
        if self.keep_last:
            view.last = body
        if self.keep_telemetry:
            if view.recent is None:
                view.recent = deque(maxlen=self.keep_telemetry)
            view.recent.append((wall, raw))
        seq = body.get("seq") if isinstance(body, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool):
            return
        if view.last_seq is None:
            view.seq_origin = 0 if view.saw_boot_start else seq
            view.boot_by_seq = view.boot is None  # no birth yet: the one that comes names this boot
        elif seq <= view.last_seq:
            # seq restarted without a birth we saw: a new boot, counted from 0
            view.boot_base = view.inferred_sent
            view.seq_origin = 0
            view.boot_by_seq = True
        view.last_seq = seq
        view.seq_received += 1
        view.inferred_sent = max(view.inferred_sent, view.boot_base + seq + 1 - view.seq_origin)

    # -- commands and synchronisation ----------------------------------------------

    def send_command(self, device_id: str, op: str, args: dict | None = None, cmd_id: str | None = None) -> str:
        cmd_id = cmd_id or uuid.uuid4().hex[:12]
        payload = json.dumps({"id": cmd_id, "op": op, "args": args or {}})
        with self.lock:
            self._pending[cmd_id] = time.monotonic()
            self.commands_sent += 1
        self.client.publish(f"{self.prefix}/{device_id}/cmd", payload, qos=1)
        return cmd_id

    def flush(self, timeout: float = 10.0, report: bool = True) -> bool:
        """Publish a marker to ourselves and wait until it comes back: every
        message the broker routed to us before it has then been counted.
        False when it did not come back within `timeout` (said once on
        `warn`; once broken, later calls return False without waiting)."""
        if self._flush_broken:
            return False
        token = uuid.uuid4().hex
        event = threading.Event()
        with self.lock:
            self._flushed[token] = event
        self.client.publish(self._flush_topic, token, qos=0)
        if event.wait(timeout):
            return True
        with self.lock:
            self._flushed.pop(token, None)
        self._flush_broken = True
        if report:
            self.warn(self._flush_problem(timeout) + "; the last counts may be incomplete")
        return False

    def wait_until(self, predicate, timeout: float) -> bool:
        """Wait until `predicate(devices)` (called under the lock with the live
        id -> DeviceView dict) is true, re-checked after every message."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self.devices), timeout)

    # -- reading the figures ---------------------------------------------------------

    def online_ids(self) -> list[str]:
        with self.lock:
            return [d for d, v in self.devices.items() if v.state == "online"]

    def snapshot(self) -> dict[str, DeviceView]:
        """A copy of every device's view (for a per-device table)."""
        with self.lock:
            return {d: DeviceView(**{k: getattr(v, k) for k in DeviceView.__slots__}) for d, v in self.devices.items()}

    def summary(self) -> dict:
        with self.lock:
            views = list(self.devices.values())
            rtts = sorted(self.rtts_ms)
            received = sum(v.received for v in views)
            lost = sum(v.lost for v in views)
            return {
                "devices_seen": len(views),
                "online": self.online_count,
                "telemetry_sent": received + lost,
                "telemetry_received": received,
                "telemetry_lost": lost,
                "reconnects": sum(v.reconnects for v in views),
                "lwt_seen": sum(v.wills for v in views),
                "commands_sent": self.commands_sent,
                "commands_ok": self.commands_ok,
                "cmd_rtt_ms": {"p50": percentile(rtts, 50), "p99": percentile(rtts, 99)},
                "telemetry_total": self.telemetry_total,
            }

    def worst(self, n: int = 3, now: float | None = None) -> list[tuple[str, str]]:
        """Up to n devices each with the most lost telemetry, the most
        reconnects and the longest time offline: (device, what) rows."""
        now = time.monotonic() if now is None else now
        with self.lock:
            items = list(self.devices.items())
        rows: list[tuple[str, str]] = []
        for d, v in heapq.nlargest(n, ((d, v) for d, v in items if v.lost), key=lambda dv: dv[1].lost):
            rows.append((d, f"lost {v.lost} of {v.inferred_sent}"))
        for d, v in heapq.nlargest(n, ((d, v) for d, v in items if v.births > 1), key=lambda dv: dv[1].births):
            rows.append((d, f"{v.reconnects} reconnects"))
        offline = ((d, v) for d, v in items if v.state != "online" and v.offline_since is not None)
        for d, v in heapq.nsmallest(n, offline, key=lambda dv: dv[1].offline_since):
            rows.append((d, f"offline ({v.state}) {now - v.offline_since:.0f} s"))
        return rows


def _text(value) -> str | None:
    """A birth's string field as the device sent it (None when absent or not a string)."""
    return value if isinstance(value, str) else None


def percentile(sorted_values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of an already sorted list, rounded to 0.1."""
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return round(sorted_values[k], 1)
