"""An independent paho-mqtt observer of a fleet: it counts what actually
reached the broker (births, Wills, telemetry and its `seq` gaps) and
measures command round trips, so fleet figures never come from the boards
counting themselves. Works for any device on the broker, ours or not.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt


@dataclass
class DeviceView:
    online: bool | None = None
    boot: int | None = None
    births: int = 0
    wills: int = 0
    last_seq: int | None = None
    received: int = 0
    inferred_sent: int = 0  # per boot: highest seq seen + 1, summed over boots
    _boot_base: int = 0
    last_seen: float = 0.0
    last_telemetry: dict = field(default_factory=dict)


class FleetObserver:
    def __init__(self, host: str, port: int, prefix: str = "devices"):
        self.prefix = prefix
        self.devices: dict[str, DeviceView] = {}
        self.lock = threading.Lock()
        self.rtts_ms: list[float] = []
        self.commands_sent = 0
        self.commands_ok = 0
        self._pending: dict[str, float] = {}
        self._connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"esp32emu-observer-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.host, self.port = host, port

    def start(self, timeout: float = 10.0) -> "FleetObserver":
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            raise RuntimeError(f"observer could not connect to {self.host}:{self.port}")
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        p = self.prefix
        client.subscribe([(f"{p}/+/status", 1), (f"{p}/+/telemetry", 0), (f"{p}/+/cmd/result", 1)])
        self._connected.set()

    def _view(self, device_id: str) -> DeviceView:
        view = self.devices.get(device_id)
        if view is None:
            view = self.devices[device_id] = DeviceView()
        return view

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")
        if len(parts) < 3:
            return
        device_id, kind = parts[1], "/".join(parts[2:])
        now = time.monotonic()
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        with self.lock:
            view = self._view(device_id)
            view.last_seen = now
            if kind == "status":
                self._status(view, body, msg.retain)
            elif kind == "telemetry":
                self._telemetry(view, body)
            elif kind == "cmd/result":
                sent = self._pending.pop(str(body.get("id")), None)
                if sent is not None:
                    self.rtts_ms.append((now - sent) * 1000)
                    if body.get("ok") is True:
                        self.commands_ok += 1

    @staticmethod
    def _status(view: DeviceView, body: dict, retained: bool) -> None:
        online = body.get("online")
        if online is True:
            view.online = True
            if not retained:
                view.births += 1
            boot = body.get("boot")
            if isinstance(boot, int) and boot != view.boot:
                view.boot = boot
                view._boot_base = view.inferred_sent
                view.last_seq = None
        elif online is False:
            view.online = False
            if set(body) == {"online"} and not retained:
                view.wills += 1

    @staticmethod
    def _telemetry(view: DeviceView, body: dict) -> None:
        seq = body.get("seq")
        if not isinstance(seq, int):
            return
        if view.last_seq is not None and seq <= view.last_seq:
            # seq restarted without a birth we saw: a new boot
            view._boot_base = view.inferred_sent
        view.last_seq = seq
        view.received += 1
        view.inferred_sent = max(view.inferred_sent, view._boot_base + seq + 1)
        view.last_telemetry = body

    def send_command(self, device_id: str, op: str, args: dict | None = None) -> str:
        cmd_id = uuid.uuid4().hex[:12]
        payload = json.dumps({"id": cmd_id, "op": op, "args": args or {}})
        with self.lock:
            self._pending[cmd_id] = time.monotonic()
            self.commands_sent += 1
        self.client.publish(f"{self.prefix}/{device_id}/cmd", payload, qos=1)
        return cmd_id

    def summary(self) -> dict:
        with self.lock:
            views = list(self.devices.values())
            rtts = sorted(self.rtts_ms)
            received = sum(v.received for v in views)
            sent = sum(v.inferred_sent for v in views)
            return {
                "devices_seen": len(views),
                "online": sum(1 for v in views if v.online),
                "telemetry_sent": sent,
                "telemetry_received": received,
                "telemetry_lost": max(sent - received, 0),
                "reconnects": sum(max(v.births - 1, 0) for v in views),
                "lwt_seen": sum(v.wills for v in views),
                "commands_sent": self.commands_sent,
                "commands_ok": self.commands_ok,
                "cmd_rtt_ms": {"p50": _pct(rtts, 50), "p99": _pct(rtts, 99)},
            }


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return round(values[k], 1)
