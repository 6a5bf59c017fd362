"""Test helpers shared by the suites: an MQTT observer built on paho-mqtt.

`Observer` is a paho-mqtt (v2 callback API, MQTT 3.1.1) client that records
every message it receives and lets a test wait for one that matches a
predicate. Every wait has a deadline and sleeps on a `threading.Condition`,
never in a polling loop; a failed wait lists what did arrive.

paho is used only here, on the test side, as an independent MQTT peer.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
TOOLS_DIR = REPO_ROOT / "tools"


@dataclass(frozen=True)
class Message:
    """One PUBLISH as the observer received it."""

    topic: str
    payload: bytes
    retain: bool
    qos: int
    t: float = field(compare=False)  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)

    def __str__(self) -> str:
        body = self.payload[:120].decode("utf-8", "replace")
        return f"{self.topic} qos={self.qos} retain={int(self.retain)} {body!r}"


class Observer:
    """A paho-mqtt client that records everything it receives."""

    def __init__(self, host: str, port: int, client_id: str = "", keepalive: int = 30) -> None:
        self.host = host
        self.port = port
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._subacks: dict[int, list[Any]] = {}
        self._pubacks: set[int] = set()
        self._connected = False
        self._connect_rc: Any = None
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish
        self.keepalive = keepalive

    # ----- paho callbacks (network thread)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._connect_rc = reason_code
            self._connected = not reason_code.is_failure
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        message = Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.monotonic())
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._pubacks.add(mid)
            self._cond.notify_all()

    # ----- waiting

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
                self._cond.wait(remaining)

    # ----- API

    def connect(self, timeout: float = 10.0) -> "Observer":
        self.client.connect(self.host, self.port, keepalive=self.keepalive)
        self.client.loop_start()
        self._wait(lambda: self._connected or self._connect_rc is not None, timeout, "CONNACK")
        if not self._connected:
            raise AssertionError(f"observer connection refused: {self._connect_rc}")
        return self

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        """Subscribe and wait for the SUBACK (so retained messages are on their way)."""
        result, mid = self.client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"subscribe({topic!r}) failed: {mqtt.error_string(result)}")
        self._wait(lambda: mid in self._subacks, timeout, f"SUBACK for {topic!r}")
        codes = self._subacks[mid]
        if any(code.is_failure for code in codes):
            raise AssertionError(f"subscription to {topic!r} refused: {codes}")

    def publish(
        self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False, timeout: float = 10.0
    ) -> None:
        """Publish and, for QoS > 0, wait until the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        if qos > 0:
            self._wait(lambda: info.mid in self._pubacks, timeout, f"PUBACK for {topic!r}")

    @property
    def messages(self) -> list[Message]:
        with self._cond:
            return list(self._messages)

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 10.0, start: int = 0) -> Message:
        """First message (from index `start` on) matching `predicate`; fail listing what came."""
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for message in self._messages[seen:]:
                    if predicate(message):
                        return message
                seen = max(seen, len(self._messages))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    received = "\n".join(f"  {m}" for m in self._messages[-30:]) or "  (nothing)"
                    raise AssertionError(
                        f"no matching message within {timeout:g} s; "
                        f"received {len(self._messages)}:\n{received}"
                    )
                self._cond.wait(remaining)

    def wait_topic(self, topic: str, timeout: float = 10.0, start: int = 0) -> Message:
        return self.wait_for(lambda m: m.topic == topic, timeout, start)

    def close(self) -> None:
        try:
            if self.connected:
                self.client.disconnect()
        finally:
            self.client.loop_stop()


def load_tool(name: str) -> ModuleType:
    """Import `tools/<name>.py` (tools/ is a folder of scripts, not a package)."""
    module_name = f"_tool_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, TOOLS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
