"""emulator.broker.mosquitto against the real Mosquitto: start, restart, stop, kill, pause, refusals."""

from __future__ import annotations

import json
import socket
import time
from typing import Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from emulator.broker.mosquitto import Broker, BrokerError, free_port, mosquitto_version
from emulator.broker.probe import mqtt_connect_rc
from tests.helpers import Observer

pytestmark = pytest.mark.mosquitto

WILL = json.dumps({"online": False})


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_start_accepts_mqtt(broker: Broker) -> None:
    assert broker.running and broker.pid
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    assert mqtt_connect_rc(broker.host, broker.port) == 0
    config = broker.config_path.read_text()
    assert f"listener {broker.port} 127.0.0.1" in config
    assert "set_tcp_nodelay true" in config
    assert "running" in broker.log_text()


def test_observer_round_trip(broker: Broker, observer: Callable[..., Observer]) -> None:
    obs = observer(broker)
    obs.subscribe("rt/#")
    obs.publish("rt/a", b"hello", qos=1)
    msg = obs.wait_topic("rt/a", timeout=5)
    assert (msg.payload, msg.qos, msg.retain) == (b"hello", 1, False)

    obs.publish("rt/kept", b"r", qos=1, retain=True)
    late = observer(broker)
    late.subscribe("rt/kept")
    assert late.wait_topic("rt/kept", timeout=5).retain is True


def test_wait_for_failure_lists_what_arrived(broker: Broker, observer: Callable[..., Observer]) -> None:
    obs = observer(broker)
    obs.subscribe("x/#")
    obs.publish("x/1", b"one")
    obs.wait_topic("x/1", timeout=5)
    with pytest.raises(AssertionError, match=r"received 1:\n  x/1 qos=1 retain=0 'one'"):
        obs.wait_topic("x/never", timeout=0.2)


def test_restart_keeps_port(broker: Broker, observer: Callable[..., Observer]) -> None:
    port, pid = broker.port, broker.pid
    broker.restart()
    assert broker.port == port and broker.pid != pid
    obs = observer(broker)
    obs.subscribe("a")
    obs.publish("a", b"1")
    obs.wait_topic("a", timeout=5)


def _client_with_will(broker: Broker, observer: Callable[..., Observer], client_id: str, topic: str) -> mqtt.Client:
    """A paho client with a retained Will on `topic`; returns once its retained birth arrived."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.will_set(topic, WILL, qos=1, retain=True)
    client.reconnect_delay_set(60, 60)  # stay away while the test restarts the broker
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    client.publish(topic, json.dumps({"online": True}), qos=1, retain=True)
    watcher = observer(broker)
    watcher.subscribe(topic)
    watcher.wait_for(lambda m: m.topic == topic and m.json() == {"online": True}, timeout=5)
    return client


def _retained(broker: Broker, observer: Callable[..., Observer], topic: str) -> list[bytes]:
    """Payloads retained on `topic` (subscribe, then a sentinel marks the end of the retained burst)."""
    obs = observer(broker)
    obs.subscribe(topic)
    obs.subscribe("sentinel/end")
    obs.publish("sentinel/end", b".")
    obs.wait_topic("sentinel/end", timeout=5)
    return [m.payload for m in obs.messages if m.topic == topic and m.retain]


def test_graceful_stop_sends_will_and_persists_it(
    broker_factory: Callable[..., Broker], observer: Callable[..., Observer]
) -> None:
    broker = broker_factory(persistence=True)
    client = _client_with_will(broker, observer, "dev-1", "dev/1/status")
    try:
        broker.stop()  # SIGTERM: Wills are published first, then persistence is saved
        client.loop_stop()
        broker.start()
        assert _retained(broker, observer, "dev/1/status") == [WILL.encode()]
    finally:
        client.loop_stop()


def test_kill_loses_wills_and_restart_accepts(
    broker_factory: Callable[..., Broker], observer: Callable[..., Observer]
) -> None:
    broker = broker_factory(persistence=True)
    client = _client_with_will(broker, observer, "dev-2", "dev/2/status")
    try:
        broker.kill()
        assert not broker.running
        with pytest.raises(OSError):
            mqtt_connect_rc(broker.host, broker.port, timeout=1)
        client.loop_stop()
        broker.restart(graceful=False)
        # SIGKILL: the Will was never published and nothing was saved since the
        # last autosave, so not even the retained birth survives.
        assert _retained(broker, observer, "dev/2/status") == []
    finally:
        client.loop_stop()


def test_pause_blocks_connack_until_resume(broker: Broker) -> None:
    broker.pause()
    try:
        with pytest.raises(socket.timeout):
            mqtt_connect_rc(broker.host, broker.port, timeout=0.5)
    finally:
        broker.resume()
    assert mqtt_connect_rc(broker.host, broker.port, timeout=5) == 0


def test_stop_while_paused_terminates(broker: Broker) -> None:
    broker.pause()
    assert broker.stop(timeout=5) == 0
    assert not broker.running


def test_max_keepalive(broker_factory: Callable[..., Broker]) -> None:
    """`max_keepalive` refuses 3.1.1 clients asking for more -- only since Mosquitto 2.0.12.

    2.0.11 (the Debian version) applies it to MQTT 5 clients only and accepts
    a 3.1.1 client with any keepalive (mosquitto issues #2309, #2361). This
    test pins whichever behaviour the installed broker has.
    """
    broker = broker_factory(max_keepalive=10)
    assert mqtt_connect_rc(broker.host, broker.port, keepalive=10) == 0
    expected = 2 if mosquitto_version() >= (2, 0, 12) else 0
    assert mqtt_connect_rc(broker.host, broker.port, keepalive=60) == expected


def test_users_refuse_bad_credentials(broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory(users={"dev-1": "s3cret"})
    assert "allow_anonymous false" in broker.config_path.read_text()
    assert mqtt_connect_rc(broker.host, broker.port, username="dev-1", password="s3cret") == 0
    assert mqtt_connect_rc(broker.host, broker.port, username="dev-1", password="wrong") in (4, 5)
    assert mqtt_connect_rc(broker.host, broker.port) in (4, 5)  # anonymous


def test_start_failure_reports_log(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = Broker(tmp_path / "bad", extra_config=["no_such_option 1"])
    with pytest.raises(BrokerError, match="no_such_option"):
        bad.start(timeout=5)
    assert not bad.running


def test_fixed_port_in_use_is_a_clear_error(broker: Broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clash = Broker(tmp_path / "clash", port=broker.port)
    with pytest.raises(BrokerError, match="exited"):
        clash.start(timeout=5)


def test_context_manager_stops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with Broker(tmp_path / "cm") as b:
        assert b.running
    assert not b.running


def _observer_backlog(broker: Broker, n: int, read: bool = True) -> int:
    """An observer that stops reading while `n` QoS 1 messages are published
    to it (all of them taken by the broker), then reads again (`read`): how
    many it gets (waits for all `n`, at most 10 s)."""
    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="backlog-obs")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect(broker.host, broker.port, 30)
    subscribed: list = []
    sub.on_subscribe = lambda *a: subscribed.append(1)
    sub.subscribe("b/#", qos=1)
    while not subscribed:
        sub.loop(0.05)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="backlog-pub")
    pub.max_inflight_messages_set(100)
    pub.connect(broker.host, broker.port, 30)
    pub.loop_start()
    try:
        infos = [pub.publish("b/x", b"x" * 100, qos=1) for _ in range(n)]
        for info in infos:  # a PUBACK comes after the broker routed the message to the observer
            info.wait_for_publish(20)
            assert info.is_published()
        deadline = time.monotonic() + 10
        while read and len(got) < n and time.monotonic() < deadline:
            sub.loop(0.05)
    finally:
        pub.loop_stop()
        pub.disconnect()
        sub.disconnect()
    return len(got)


def test_a_fleets_private_broker_keeps_an_observer_that_fell_behind_whole(tmp_path) -> None:
    """Mosquitto's default drops what a client has queued beyond 1,000
    messages (a fleet's observer behind by a moment would lose births and
    telemetry it counts); the private broker a fleet starts keeps them."""
    from emulator.broker.pick import broker_for

    with broker_for(None, tmp_path / "state", say=lambda _msg: None) as url:
        assert url.broker is not None
        assert _observer_backlog(url.broker, 3000) == 3000
        assert "being dropped" not in url.broker.log_text()
    control = Broker(tmp_path / "default").start()  # Mosquitto's defaults: the loss this avoids
    try:
        _observer_backlog(control, 1500, read=False)  # routed (and dropped) before each PUBACK
        deadline = time.monotonic() + 5
        while "being dropped for client backlog-obs" not in control.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)  # polling the broker's log file with a deadline
        assert "Outgoing messages are being dropped for client backlog-obs" in control.log_text()
    finally:
        control.stop()
