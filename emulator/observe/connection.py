"""An observer's connection to the broker, for every observer here (the
fleet's counting one, the plugin's recording one): one paho-mqtt (MQTT
3.1.1, clean session) client, its TLS identity, the CONNECT with a one-line
error for each way it fails -- nothing listening, unreachable, no CONNACK
in time, or refused with the broker's reason ("Not authorized") said at
once -- and subscriptions that wait for their SUBACK, fail naming the
filters the broker denied (0x80), and are renewed after every reconnect.

Errors are `ConnectionError`s with one line naming the broker; what a
message means is the caller's business (`on_message`, paho's network
thread). Nothing here knows about devices or boards.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.matcher import MQTTMatcher

from emulator.broker.certs import BACKEND_CN, CertError, Pki, ensure_backend


def backend_tls(certs_dir: Path | str, identity: str = BACKEND_CN) -> dict:
    """`tls_set` arguments for one backend identity of the PKI: `backend`
    (`certs/backend.crt`) or a named one (`certs/backends/<identity>.crt`,
    issued from the CA when missing). Each has fleet-wide rights in the ACL of
    `esp32emu broker --tls`, and the broker makes its CN the client id: two
    clients holding one identity disconnect each other, so every backend
    client has its own. FileNotFoundError naming the first file missing."""
    certs_dir = Path(certs_dir)
    pki = Pki(certs_dir)
    if pki.ca_key.is_file() and pki.ca_crt.is_file():
        try:
            ensure_backend(certs_dir, identity)
        except CertError as e:
            raise FileNotFoundError(str(e)) from None
    files = (pki.ca_crt, pki.backend_crt_of(identity), pki.backend_key_of(identity))
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `esp32emu certs` first")
    return {"ca_certs": str(files[0]), "certfile": str(files[1]), "keyfile": str(files[2])}


class _Filters(MQTTMatcher):
    """paho's per-topic callbacks (`message_callback_add`; none here): paho
    matches every message against them with a recursive closure, a
    reference cycle per message that only the cyclic collector frees (a
    fleet in one process collects once a minute: 100,000 of them at 3,000
    boards). No filter, no match."""

    def iter_match(self, topic):
        return super().iter_match(topic) if self._root._children else iter(())


class BrokerConnection:
    """One observer's paho client (`.client`) and the state of its connection."""

    def __init__(self, host: str, port: int, client_id: str, *, keepalive: int = 30, tls: dict | None = None,
                 on_message: Callable | None = None) -> None:
        self.host, self.port, self.keepalive = host, port, keepalive
        self._cond = threading.Condition()
        self._connected = False
        self._answered = False  # a CONNACK came (accepted or not)
        self._refused: str | None = None  # the CONNACK's reason when the broker refused us
        self.connects = 0
        self._thread_cpu_s = 0.0  # cpu_s(): the last reading
        self._subs: dict[str, int] = {}  # renewed after every reconnect (clean session)
        self._subacks: dict[int, list[Any]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=True)
        self.client._on_message_filtered = _Filters()  # paho's own, without the cycle per message
        if tls:
            self.client.tls_set(**tls)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe
        if on_message is not None:
            self.client.on_message = on_message

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        with self._cond:
            return self._connected

    def connect(self, timeout: float = 10.0) -> None:
        """Connect and wait for the broker's CONNACK (ConnectionError: why not)."""
        try:
            self.client.connect(self.host, self.port, keepalive=self.keepalive)
        except ConnectionRefusedError:
            raise ConnectionError(f"connection refused by {self.where}") from None
        except OSError as e:
            raise ConnectionError(f"cannot reach the broker at {self.where}: {e.strerror or e}") from None
        self.client.loop_start()
        try:
            if not self._wait(lambda: self._answered, timeout):
                raise ConnectionError(f"the broker at {self.where} did not accept the observer within {timeout:.0f} s")
            if self._refused:
                raise ConnectionError(f"the broker at {self.where} refused the observer: {self._refused}")
        except ConnectionError:
            self.close()
            raise

    def subscribe(self, filters: list[tuple[str, int]], timeout: float = 10.0) -> None:
        """Subscribe to (filter, qos) pairs and wait for the SUBACK (retained
        messages are then on their way); ConnectionError naming what was denied."""
        with self._cond:
            self._subs.update(filters)
        names = ", ".join(f for f, _ in filters)
        result, mid = self.client.subscribe(filters)
        if result != mqtt.MQTT_ERR_SUCCESS:
            raise ConnectionError(f"subscribe to {names} failed: {mqtt.error_string(result)}")
        if not self._wait(lambda: mid in self._subacks, timeout):
            raise ConnectionError(f"no SUBACK for {names} from the broker at {self.where} within {timeout:g} s")
        with self._cond:
            codes = self._subacks.pop(mid)
        denied = [f for (f, _), rc in zip(filters, codes) if rc.is_failure]
        if denied:
            raise ConnectionError(f"subscribe to {', '.join(denied)} denied by the broker at {self.where} (SUBACK 0x80)")

    def cpu_s(self) -> float:
        """CPU seconds paho's network thread has used (the observer's own
        work: it parses and counts every message there); 0 before it runs."""
        thread = getattr(self.client, "_thread", None)  # paho's loop_start() thread
        if thread is not None and thread.ident is not None:
            try:
                self._thread_cpu_s = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except OSError:  # the thread has ended: what it used last
                pass
        return self._thread_cpu_s

    def close(self) -> None:
        try:
            if self.connected:
                self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    # -- paho callbacks (its network thread) ------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._answered = True
            self._connected = not reason_code.is_failure
            if reason_code.is_failure:
                self._refused = str(reason_code)  # e.g. "Not authorized", "Bad user name or password"
            else:
                self.connects += 1
                if self._subs:  # a reconnect: the clean session forgot them
                    client.subscribe(list(self._subs.items()))
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self._subacks[mid] = list(reason_codes)
            self._cond.notify_all()
