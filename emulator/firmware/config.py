"""The config.json the emulator gives a board (SPEC §2): the emulated
access point, the broker, and the sensors of SPEC §2's reference board;
`board_broker` its broker section for a --broker URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emulator.validation import BrokerURL


def default_config(device_id: str, host: str, port: int, **overrides) -> dict:
    """The config.json the emulator writes for a board (SPEC §2)."""
    cfg = {
        "id": device_id,
        "wifi": {"ssid": "esp32emu", "password": "emulated"},
        "broker": {"host": host, "port": port, "tls": False},
        "prefix": "devices",
        "keepalive": 30,
        "interval": 10,
        "backoff": {"base_ms": 500, "cap_ms": 30000},
        "wdt_ms": 0,
        # SPEC §2: a BME280, a battery divider and the MCU sensor.
        "sensors": [
            {"type": "bme280", "i2c": 0, "sda": 21, "scl": 22, "addr": 0x76},
            {"type": "battery", "pin": 35, "atten": 11, "divider": 2.0},
            {"type": "mcu"},
        ],
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def board_broker(url: BrokerURL) -> dict:
    """The `broker` section of a board's config.json for `url` (beside host and port)."""
    section: dict = {"tls": url.tls}
    if url.username is not None:
        section.update(username=url.username, password=url.password)
    return section
