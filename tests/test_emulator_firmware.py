"""The real firmware on an emulated board, without a broker: what a user sees
on the console when config.json is wrong. The broker address is a free
loopback port nobody listens on, so boot gets as far as connecting."""

from __future__ import annotations

from emulator.broker.mosquitto import free_port
from tests.test_emulator_board import Console


def add(emu, device_id: str, **cfg):
    console = Console()
    port = free_port()
    board = emu.add_board(device_id, "127.0.0.1", port, console=console, **cfg)
    return board, console, port


def test_bad_config_value_stops_boot_with_one_line_naming_the_key(emu):
    board, con, _ = add(emu, "cfg-bad", keepalive="x")
    line = con.wait("keepalive")
    con.wait("^>>> $", start=line)
    lines = con.snapshot()
    assert lines[line].startswith("boot stopped:")
    assert "Traceback (most recent call last):" not in lines
    assert [ln for ln in lines if "keepalive" in ln] == [lines[line]]
    assert board.halted is True and board.boots == 1


def test_unknown_config_key_warns_and_boot_continues(emu):
    board, con, port = add(emu, "cfg-extra", colour="blue", wifi={"channel": 6})
    warn = con.wait('unknown key "colour"')
    con.wait(r'unknown key "wifi\.channel"')
    booted = con.wait("^esp32emu fw .*device cfg-extra, boot 1, reset power_on", start=warn)
    # It goes on to WiFi and the (absent) broker, and keeps trying.
    con.wait(f"127.0.0.1:{port}", 5, start=booted)
    assert emu.call(lambda: board.radio.connected) is True
    assert "Traceback (most recent call last):" not in con.snapshot()
    assert board.halted is False


def test_stopping_a_running_board_prints_no_traceback(emu):
    board, con, port = add(emu, "cfg-stop")
    con.wait(f"127.0.0.1:{port}", 5)
    emu.run(board.stop())
    lines = con.snapshot()
    assert "Traceback (most recent call last):" not in lines and "CancelledError" not in lines
    assert board.running is False
