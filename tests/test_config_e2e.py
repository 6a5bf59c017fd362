"""Issue 12 D5, D6, D7 end to end: a board given a hostile config.json
(nested 100,000 deep, 70,000-character strings, a backoff of 1 ms) boots the
real firmware, which stops with one console line naming the key; and the
smallest backoff the config accepts retries a refusing broker a few times a
second, not hundreds. Mostly without a broker (a free loopback port, or a
scripted TCP server on 127.0.0.1 that refuses every CONNECT); the longest
accepted strings go online against a real Mosquitto."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from emulator.broker.mosquitto import free_port
from tests.test_emulator_board import Console


def boot(emu, device_id: str, raw: bytes | None = None, port: int | None = None, **cfg):
    """A board whose config.json is the emulator's with `cfg` over it, or the
    bytes `raw` as they are; powered on; returns (board, console)."""
    console = Console()
    board = emu.add_board(device_id, "127.0.0.1", port or free_port(), console=console, start=False, **cfg)
    if raw is not None:
        (board.flash_dir / "config.json").write_bytes(raw)
    emu.call(board.start)
    return board, console


def stopped_with_one_line(board, con, pattern: str) -> str:
    """The board printed "boot stopped: ..." matching `pattern`, halted at
    the REPL, and printed no traceback; returns the line."""
    i = con.wait("^boot stopped: ", 10)
    con.wait("^>>> $", 5, start=i)
    lines = con.snapshot()
    assert "Traceback (most recent call last):" not in lines, lines
    assert pattern in lines[i], lines[i]
    assert len(lines[i]) < 200 and [ln for ln in lines if ln.startswith("boot stopped")] == [lines[i]]
    assert board.halted is True and board.running is True and board.boots == 1
    return lines[i]


# -- D5: nesting ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["list", "dict"])
def test_config_nested_100000_deep_stops_boot_with_one_line(emu, shape):
    n = 100_000
    inner = "[" * n + "]" * n if shape == "list" else '{"a":' * n + "1" + "}" * n
    board, con = boot(emu, f"deep-{shape}", raw=('{"sensors": %s}' % inner).encode())
    line = stopped_with_one_line(board, con, "config.json")
    assert line == "boot stopped: config.json is not valid JSON: nested too deeply (config.json)"


@pytest.mark.parametrize(
    "sensors, key",
    [
        ([[[[[]]]]], "sensors[0]"),
        ([{"type": "bme280", "i2c": [[0]]}], "sensors[0].i2c"),
        ([{"type": "bme280", "addr": {"a": {"b": 1}}}], "sensors[0].addr"),
        ([{"type": "battery", "pin": {"a": [1]}}], "sensors[0].pin"),
        ([{"type": "battery", "divider": 0}], "sensors[0].divider"),
        ([{"type": "dht22", "pin": [4]}], "sensors[0].pin"),
    ],
)
def test_sensors_of_any_shape_reach_the_firmware_validation(emu, sensors, key):
    """The emulator wires only sensors the firmware would accept and never
    fails on the shape of an entry (an unhashable pin or bus used to kill
    the board before the firmware ran)."""
    board, con = boot(emu, "odd-sensors", sensors=sensors)
    stopped_with_one_line(board, con, f'"{key}"')


# -- D6: string lengths ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, line",
    [
        ({"prefix": "p" * 70_000}, 'boot stopped: config.json: "prefix" must be a string of at most 64 bytes (got "'),
        ({"broker": {"username": "u" * 70_000}}, 'boot stopped: config.json: "broker.username" must be a string of at most 256 bytes'),
        ({"broker": {"username": "u", "password": "p" * 70_000}}, 'boot stopped: config.json: "broker.password" must be a string of at most 256 bytes'),
    ],
)
def test_70000_character_strings_stop_boot_naming_the_key_and_limit(emu, cfg, line):
    board, con = boot(emu, "long-strings", **cfg)
    assert stopped_with_one_line(board, con, line).startswith(line)


# -- D7: backoff ----------------------------------------------------------------------


class RefusingServer:
    """A TCP server on 127.0.0.1 that answers every MQTT CONNECT with CONNACK
    5 (not authorised) and closes; `connects` holds the arrival times."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.connects: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    if conn.recv(1024)[:1] == b"\x10":  # CONNECT
                        self.connects.append(time.monotonic())
                        conn.sendall(b"\x20\x02\x00\x05")
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def refusing():
    server = RefusingServer()
    yield server
    server.close()


def test_backoff_of_1_ms_stops_boot_and_never_connects(emu, refusing):
    """Issue 12 D7: {"base_ms": 1, "cap_ms": 1} made ~940 attempts a second."""
    board, con = boot(emu, "bk-tiny", port=refusing.port, backoff={"base_ms": 1, "cap_ms": 1})
    stopped_with_one_line(board, con, 'config.json: "backoff.base_ms" must be an integer 100..3600000 (got 1)')
    assert refusing.connects == []


def test_smallest_backoff_against_a_refusing_broker_is_a_few_attempts_a_second(emu, refusing):
    board, con = boot(emu, "bk-min", port=refusing.port, backoff={"base_ms": 100, "cap_ms": 1000})
    con.wait("refused", 10)
    first = refusing.connects[0]
    con.wait("retry 12 ", 30)  # 12 refusals: the window has long reached the cap
    window = refusing.connects[-1] - first
    rate = (len(refusing.connects) - 1) / window
    # Full jitter over windows 100, 200, 400, 800, then 1000 ms: about 2 a
    # second once capped; ~940 a second before the fix.
    assert rate <= 5, (len(refusing.connects), window)
    later = [t for t in refusing.connects if t - first >= 2.0]
    assert len(later) < 2 or (len(later) - 1) / (later[-1] - later[0]) <= 3.5, later
    assert board.halted is False
    assert json.loads((board.flash_dir / "config.json").read_text())["backoff"] == {"base_ms": 100, "cap_ms": 1000}


@pytest.mark.integration
def test_longest_accepted_strings_connect_and_publish(emu, broker, observer):
    """What config accepts fits CONNECT and the topics: the longest prefix,
    id, user name and password bring the board online against Mosquitto."""
    prefix, dev = "p" * 64, "d" * 64
    obs = observer(broker)
    obs.subscribe(f"{prefix}/{dev}/#")
    board = emu.add_board(dev, broker.host, broker.port, prefix=prefix, interval=1, keepalive=5,
                          broker={"username": "é" * 128, "password": "x" * 256})
    birth = obs.wait_for(lambda m: m.topic == f"{prefix}/{dev}/status" and m.json().get("online") is True, 10)
    assert birth.json()["fw"]
    obs.wait_for(lambda m: m.topic == f"{prefix}/{dev}/telemetry", 5)
    obs.publish(f"{prefix}/{dev}/cmd", {"id": "i" * 64, "op": "ping"})
    result = obs.wait_for(lambda m: m.topic == f"{prefix}/{dev}/cmd/result", 5).json()
    assert result["id"] == "i" * 64 and result["ok"] is True
    assert board.halted is False
