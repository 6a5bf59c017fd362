"""`esp32emu flash` without hardware: the real mpremote deploys to an
emulated board on a pty (`esp32emu serial`), which then boots the firmware,
comes online on a real Mosquitto with the provisioned id and answers `ping`.
Also the errors a user meets (no port, silent board, full filesystem) and the
pure parts (file set, .mpy, config, space)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from emulator import cli
from emulator.firmware.deploy import deployed
from emulator.realboard.flash import (
    FlashError,
    blocks_needed,
    board_config,
    build_files,
    flash,
    stale_files,
)
from emulator.realboard.serial_board import SerialBoard
from emulator.testing.harness import Emulator
from emulator.validation import UsageError, parse_broker_url
from tests.boards import is_birth

WIFI = {"wifi_ssid": "esp32emu", "wifi_password": "emulated"}  # the emulated access point
FIRMWARE = Path(__file__).resolve().parent.parent / "firmware"


@pytest.fixture
def blank_board(emu: Emulator, tmp_path: Path):
    """An emulated ESP32 fresh from esptool: MicroPython, empty filesystem."""
    made: list[SerialBoard] = []

    def make(**kwargs) -> SerialBoard:
        sb = SerialBoard("unprovisioned", tmp_path / f"blank{len(made)}", firmware=False, **kwargs)
        made.append(sb)
        emu.call(sb.start)
        return sb

    yield make
    for sb in made:
        emu.run(sb.stop())


@pytest.mark.integration
def test_flash_provisions_an_emulated_board_that_comes_online_and_answers_ping(blank_board, broker, observer, capsys):
    sb = blank_board()
    obs = observer(broker)
    obs.subscribe("devices/#")
    url = f"mqtt://{broker.host}:{broker.port}"

    t0 = time.monotonic()
    rc = cli.main(["flash", "--port", sb.path, "--id", "dev-flashed", "--broker", url,
                   "--wifi-ssid", "esp32emu", "--wifi-password", "emulated"])  # fmt: skip
    took = time.monotonic() - t0
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "verified" in out
    birth = obs.wait_for(is_birth("dev-flashed"), timeout=10)
    online = time.monotonic() - t0
    assert birth.json()["reset"] == "hard"  # mpremote reset = machine.reset()

    flash_dir = sb.board.flash_dir
    assert "an emulated board runs the .py sources" in out  # .mpy is the default on real boards
    deployed_files = deployed(FIRMWARE)  # the source with its private names shortened
    for src in FIRMWARE.glob("*.py"):
        assert (flash_dir / src.name).read_bytes() == deployed_files[src.name]
    cfg = json.loads((flash_dir / "config.json").read_text())
    assert cfg["id"] == "dev-flashed" and cfg["broker"] == {"host": broker.host, "port": broker.port, "tls": False}

    n = len(obs.messages)
    obs.publish("devices/dev-flashed/cmd", json.dumps({"id": "p1", "op": "ping", "args": {}}))
    result = obs.wait_for(lambda m: m.topic == "devices/dev-flashed/cmd/result", timeout=10, start=n).json()
    assert result["id"] == "p1" and result["ok"] is True and "pong" in result["result"]

    # Reflash as another id: the firmware is unchanged (mpremote skips it by
    # hash), WiFi and broker come from the board's own config.json.
    t1 = time.monotonic()
    got = flash(sb.path, "dev-renamed", say=lambda msg: None)
    reflash = time.monotonic() - t1
    assert got["config.json"] == hashlib.sha256((flash_dir / "config.json").read_bytes()).hexdigest()
    birth = obs.wait_for(is_birth("dev-renamed"), timeout=10, start=n)
    assert birth.json()["boot"] == 2  # the NVS boot counter survived the reflash
    print(f"flash {took:.2f} s, online {online:.2f} s after start; reflash {reflash:.2f} s")


@pytest.mark.integration
def test_flash_mpy_compiles_modules_and_removes_stale_py_twins(blank_board):
    sb = blank_board()
    flash_dir = sb.board.flash_dir
    (flash_dir / "device.py").write_text("# an old version\n")
    flash(sb.path, "dev-mpy", "mqtt://192.0.2.1:1883", mpy=True, reset=False, say=lambda msg: None, **WIFI)
    names = sorted(p.name for p in flash_dir.iterdir())
    assert "boot.py" in names and "main.py" in names and "config.json" in names
    assert "device.mpy" in names and "device.py" not in names
    assert (flash_dir / "device.mpy").read_bytes()[:1] == b"M"  # .mpy magic


def test_missing_port_is_bad_usage(capsys):
    rc = cli.main(["flash", "--port", "/dev/ttyNOPE0", "--id", "dev-1", "--broker", "mqtt://10.0.0.2:1883"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "/dev/ttyNOPE0 not found" in err


def test_board_that_does_not_answer():
    master, slave = os.openpty()  # a port with nothing behind it
    try:
        t0 = time.monotonic()
        with pytest.raises(FlashError, match="does not answer"):
            flash(os.ttyname(slave), "dev-1", "mqtt://10.0.0.2:1883", probe_timeout=1, say=lambda m: None, **WIFI)
        assert time.monotonic() - t0 < 5
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.integration
def test_full_filesystem_is_a_clear_error(blank_board, tmp_path):
    sb = blank_board(flash_kib=16)  # 4 blocks: the firmware needs far more
    with pytest.raises(FlashError, match="filesystem is full"):
        flash(sb.path, "dev-1", "mqtt://10.0.0.2:1883", say=lambda m: None, **WIFI)
    assert list(sb.board.flash_dir.iterdir()) == []  # refused before copying anything

    # and a write that runs out of space on the board reports ENOSPC
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 40_000)
    from emulator.realboard.flash import Mpremote

    with pytest.raises(FlashError, match="filesystem is full"):
        Mpremote(sb.path).run("fs", "cp", str(big), ":big.bin")


# -- pure parts -------------------------------------------------------------------------------


def test_board_config_keeps_the_boards_keys_and_needs_broker_and_wifi():
    current = {"id": "old", "interval": 60, "wifi": {"ssid": "lab", "password": "pw"},
               "broker": {"host": "10.0.0.9", "port": 1883, "tls": False}}  # fmt: skip
    cfg = board_config("dev-7", parse_broker_url("mqtts://10.0.0.2:8883"), None, None, current)
    assert cfg["id"] == "dev-7" and cfg["interval"] == 60 and cfg["wifi"]["ssid"] == "lab"
    assert cfg["broker"] == {"host": "10.0.0.2", "port": 8883, "tls": True}
    with pytest.raises(UsageError, match="--broker"):
        board_config("dev-7", None, "lab", "pw", None)
    with pytest.raises(UsageError, match="--wifi-ssid"):
        board_config("dev-7", parse_broker_url("mqtt://h:1"), None, None, None)
    with pytest.raises(UsageError, match="interval"):
        board_config("dev-7", parse_broker_url("mqtt://h:1"), "lab", "pw", {"interval": -1})


def test_build_files_order_mpy_and_space():
    cfg = {"id": "dev-1"}
    files = build_files(cfg, tls_files={"ca.crt": b"der"})
    assert list(files)[-1] == "config.json" and json.loads(files["config.json"]) == cfg
    assert files["ca.crt"] == b"der" and files["app.py"] == deployed(FIRMWARE)["app.py"]
    mpy = build_files(cfg, mpy=True)
    assert "boot.py" in mpy and "main.py" in mpy and "app.mpy" in mpy and "app.py" not in mpy

    on_board = {"app.py": 5000, "app.mpy": 100, "notes.txt": 10}
    assert stale_files(mpy, on_board) == ["app.py"]
    assert stale_files(files, on_board) == ["app.mpy"]
    small = {"a.py": b"x" * 4097, "config.json": b"{}"}
    assert blocks_needed(small, {}, [], 4096) == 3
    assert blocks_needed(small, {"a.py": 9000}, [], 4096) == 0
    assert blocks_needed(small, {"a.py": 9000, "a.mpy": 4096}, ["a.mpy"], 4096) == -1


def test_as_written_deploys_the_sources_unchanged_with_line_numbers():
    """`--as-written` (debugging a real board): the firmware's own names and
    line numbers, where the default deploys shortened names without lines."""
    cfg = {"id": "dev-1"}
    plain = build_files(cfg, as_written=True)
    assert plain["device.py"] == (FIRMWARE / "device.py").read_bytes() != build_files(cfg)["device.py"]
    lean, debug = build_files(cfg, mpy=True)["device.mpy"], build_files(cfg, mpy=True, as_written=True)["device.mpy"]
    assert b"_connect_once" in debug and b"_connect_once" not in lean  # a private name, as the traceback shows it
    assert len(debug) > len(lean)  # + the line-number tables
    assert cli.build_parser().parse_args(["flash", "--port", "/dev/null", "--id", "dev-1", "--as-written"]).as_written


def test_flash_deploys_mpy_unless_told_py():
    parse = cli.build_parser().parse_args
    base = ["flash", "--port", "/dev/null", "--id", "dev-1"]
    assert parse(base).mpy is None  # .mpy, except on an emulated board (it runs sources)
    assert parse(base + ["--mpy"]).mpy is True
    assert parse(base + ["--py"]).mpy is False
    assert parse(base + ["--no-mpy"]).mpy is False


def test_bad_id_is_bad_usage(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's --id type: one line, exit 2
        cli.main(["flash", "--port", "/dev/null", "--id", "no spaces!", "--broker", "mqtt://h:1"])
    assert e.value.code == 2
    assert "--id" in capsys.readouterr().err


@pytest.mark.parametrize("device_id", ["no spaces!", "", "backend"])
def test_flash_refuses_what_is_not_a_device_id_before_touching_the_port(device_id):
    # The library entry point keeps the CLI's rule: "backend" is the PKI's
    # backend identity, whose certificate must never go onto a board.
    with pytest.raises(UsageError, match="device id"):
        flash("/dev/nonexistent-port", device_id)
