"""The pytest plugin's MQTT observer: `ObserverClient`, a paho-mqtt client
that records what it receives; `expect(topic, predicate, timeout)` and
`collect(...)` fail with what was expected, what arrived and when. Every
wait has a deadline and sleeps on a condition. Re-exported by
`emulator/testing/handles.py`, where the plugin's classes are listed.
"""

from __future__ import annotations

import ast
import inspect
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import paho.mqtt.client as mqtt

from emulator.observe.connection import BrokerConnection


def clock_text(t: float, t0: float) -> str:
    """A time as seconds from t0, for failure reports."""
    return f"{t - t0:+7.2f} s"


# -- an MQTT observer ------------------------------------------------------------------


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

    @property
    def text(self) -> str:
        return self.payload.decode("utf-8", "replace")

    def __str__(self) -> str:
        body = self.payload[:160].decode("utf-8", "replace")
        return f"{self.topic} qos={self.qos} retain={int(self.retain)} {body}"


def _describe(predicate: Any) -> str:
    if predicate is None:
        return "any payload"
    if isinstance(predicate, dict):
        return "JSON containing " + json.dumps(predicate)
    if isinstance(predicate, (str, bytes)):
        return f"payload == {predicate!r}"
    name = getattr(predicate, "__name__", repr(predicate))
    if name != "<lambda>":
        return f"{name}(message) true"
    try:
        src = inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return "a lambda that matches"
    # The lambda alone, not the call around it: the longest prefix from
    # "lambda" that parses.
    src = src[src.find("lambda"):]
    for end in range(len(src), 0, -1):
        try:
            if not isinstance(ast.parse(src[:end], mode="eval").body, ast.Lambda):
                continue  # "lambda m: x," parses as a tuple
        except SyntaxError:
            continue
        src = src[:end]
        break
    return src if len(src) <= 160 else src[:157] + "..."


def _matcher(predicate: Any) -> Callable[[Message], bool]:
    """None: any; dict: JSON payload contains these items; str/bytes: equal
    payload; callable: called with the Message (an exception means no match)."""
    if predicate is None:
        return lambda m: True
    if isinstance(predicate, dict):
        def contains(m: Message) -> bool:
            body = m.json()
            return isinstance(body, dict) and all(k in body and body[k] == v for k, v in predicate.items())
        return _safe(contains)
    if isinstance(predicate, (str, bytes)):
        want = predicate.encode() if isinstance(predicate, str) else predicate
        return lambda m: m.payload == want
    return _safe(predicate)


def _safe(fn: Callable[[Message], Any]) -> Callable[[Message], bool]:
    def test(m: Message) -> bool:
        try:
            return bool(fn(m))
        except Exception:  # noqa: BLE001 - a payload the predicate cannot read does not match
            return False
    return test


class ObserverClient:
    """A paho-mqtt (MQTT 3.1.1) client that records every message.

    `expect` and `collect` read forward from a cursor, like a console: each
    match moves the cursor past it, so `expect(birth); broker.restart();
    expect(birth)` waits for a *new* birth. `since=0` searches everything
    received; `mark()` gives the current position for a later `since=`.
    Subscriptions are renewed after every reconnect (a broker restart).
    """

    def __init__(self, host: str, port: int, client_id: str = "", *, keepalive: int = 30,
                 tls: dict | None = None, scale: float = 1.0) -> None:
        self.host, self.port = host, port
        self.scale = scale
        self._cond = threading.Condition()
        self._messages: list[Message] = []
        self._cursor = 0
        self._pubacks: set[int] = set()
        self.t0 = time.monotonic()
        # connect, TLS, refusals, SUBACKs, resubscribing: emulator/observe/connection.py
        self.conn = BrokerConnection(host, port, client_id, keepalive=keepalive, tls=tls, on_message=self._on_message)
        self.client = self.conn.client
        self.client.on_publish = self._on_publish

    @property
    def connects(self) -> int:
        return self.conn.connects

    # paho callbacks (its network thread)

    def _on_message(self, client, userdata, msg) -> None:
        m = Message(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos, time.monotonic())
        with self._cond:
            self._messages.append(m)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._pubacks.add(mid)
            self._cond.notify_all()

    def _wait(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        __tracebackhide__ = True
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"observer: timed out after {timeout:g} s waiting for {what}")
                self._cond.wait(left)

    # connection

    def connect(self, timeout: float = 10.0) -> "ObserverClient":
        __tracebackhide__ = True
        try:
            self.conn.connect(timeout)
        except ConnectionError as e:
            raise AssertionError(f"observer: {e}") from None
        return self

    @property
    def connected(self) -> bool:
        return self.conn.connected

    def close(self) -> None:
        self.conn.close()

    # traffic

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> "ObserverClient":
        """Subscribe and wait for the SUBACK (retained messages are then on their way)."""
        __tracebackhide__ = True
        try:
            self.conn.subscribe([(topic, qos)], timeout)
        except ConnectionError as e:
            raise AssertionError(f"observer: {e}") from None
        return self

    def publish(self, topic: str, payload: bytes | str | dict | list, qos: int = 1, retain: bool = False,
                timeout: float = 10.0) -> None:
        """Publish (a dict or list goes as JSON); for QoS > 0 wait for the broker's ack."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload)
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise AssertionError(f"observer: publish to {topic!r} failed: {mqtt.error_string(info.rc)}")
        if qos > 0:
            self._wait(lambda: info.mid in self._pubacks, timeout, f"PUBACK for {topic!r}")

    @property
    def messages(self) -> list[Message]:
        with self._cond:
            return list(self._messages)

    def mark(self) -> int:
        """The current end of what was received (for `since=`)."""
        with self._cond:
            return len(self._messages)

    def _start(self, since: int | None) -> int:
        return self._cursor if since is None else since

    def expect(self, topic: str, predicate: Any = None, timeout: float = 10.0, *,
               since: int | None = None) -> Message:
        """The first message on `topic` (an MQTT filter: `+` and `#` work)
        matching `predicate`, from the cursor (or `since`) on. `predicate`:
        None (any), a dict (JSON payload contains these items), str/bytes
        (exact payload) or a function of the `Message`. Fails with what was
        expected and every message that did arrive, with times."""
        __tracebackhide__ = True
        limit = timeout * self.scale
        t0 = time.monotonic()
        start = self._start(since)
        got, after, complete = self._scan(topic, _matcher(predicate), start, t0 + limit, 1)
        if complete:
            self._cursor = after
            return got[0]
        with self._cond:
            raise AssertionError(self._explain(
                f"expected a message on {topic!r} with {_describe(predicate)} within {limit:g} s",
                topic, start, t0))

    def collect(self, topic: str, predicate: Any = None, *, count: int | None = None,
                timeout: float = 10.0, since: int | None = None) -> list[Message]:
        """Messages on `topic` matching `predicate`: with `count`, as soon as
        that many arrived (fewer in `timeout` fails); without, all that
        arrive within `timeout` (waits the whole time)."""
        __tracebackhide__ = True
        limit = timeout * self.scale
        t0 = time.monotonic()
        start = self._start(since)
        got, after, complete = self._scan(topic, _matcher(predicate), start, t0 + limit, count)
        if complete or count is None:
            self._cursor = after
            return got
        with self._cond:
            raise AssertionError(self._explain(
                f"expected {count} message(s) on {topic!r} with {_describe(predicate)} "
                f"within {limit:g} s, got {len(got)}", topic, start, t0))

    def _scan(self, topic: str, match: Callable[[Message], bool], start: int, deadline: float,
              count: int | None) -> tuple[list[Message], int, bool]:
        """Matching messages from index `start` until `count` of them (None:
        until the deadline): (matches, the index after the last one looked
        at, whether `count` was reached)."""
        got: list[Message] = []
        seen = start
        with self._cond:
            while True:
                for i in range(seen, len(self._messages)):
                    m = self._messages[i]
                    if mqtt.topic_matches_sub(topic, m.topic) and match(m):
                        got.append(m)
                        if count is not None and len(got) >= count:
                            return got, i + 1, True
                seen = max(seen, len(self._messages))
                left = deadline - time.monotonic()
                if left <= 0:
                    return got, seen, False
                self._cond.wait(left)

    def _explain(self, headline: str, topic: str, start: int, t0: float) -> str:
        msgs = self._messages[start:]
        on_topic = [m for m in msgs if mqtt.topic_matches_sub(topic, m.topic)]
        others = len(msgs) - len(on_topic)
        lines = [headline + ";", f"received on {topic!r} after the previous match (times from the start of this wait):"]
        lines += [f"  {clock_text(m.t, t0)}  {m}" for m in on_topic[-20:]] or ["  (nothing)"]
        if len(on_topic) > 20:
            lines.insert(2, f"  ... {len(on_topic) - 20} earlier")
        lines.append(f"and {others} message(s) on other topics"
                     + ("" if self.conn.connected else "; the observer is NOT connected to the broker"))
        return "\n".join(lines)

    def report(self, n: int = 20) -> str:
        msgs = self.messages[-n:]
        state = "connected" if self.connected else "disconnected"
        rows = [f"  {clock_text(m.t, self.t0)}  {m}" for m in msgs] or ["  (nothing)"]
        return (f"observer {self.host}:{self.port} ({state}, {self.connects} connect(s)), "
                f"last {len(msgs)} of {len(self._messages)} message(s) (s since it connected):\n" + "\n".join(rows))
