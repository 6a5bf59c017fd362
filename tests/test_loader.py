"""The firmware loader: pure modules are shared by every board, anything
that could hold board state or reach board builtins is executed per board."""

from __future__ import annotations

import textwrap
from pathlib import Path

from emulator.loader import BoardModules, FirmwareImage


def image(tmp_path: Path, files: dict[str, str]) -> FirmwareImage:
    d = tmp_path / "fw"
    d.mkdir()
    for name, src in files.items():
        (d / name).write_text(textwrap.dedent(src))
    return FirmwareImage(d)


def modules(img: FirmwareImage, flash: Path) -> BoardModules:
    flash.mkdir(parents=True, exist_ok=True)
    return BoardModules(img, flash, {"machine": lambda: object()}, print, open)


def test_real_firmware_shares_the_mqtt_core():
    pure = FirmwareImage().pure
    assert {"mqtt_codec", "mqtt_session", "backoff", "commands", "jsonval"} <= pure
    # these reach the board (machine, time, asyncio, print/open)
    assert not pure & {"device", "app", "wifi", "mqtt_client", "config", "main", "boot"}


def test_what_is_shared_and_what_is_not(tmp_path):
    img = image(
        tmp_path,
        {
            "codec.py": "from micropython import const\n_N = const(3)\nLIMIT = 10\n\ndef f(x):\n    return x * _N\n",
            "uses_codec.py": "import codec\nimport json\n\ndef g():\n    return codec.f(2)\n",
            "counter.py": "n = 0\n\ndef bump():\n    global n\n    n += 1\n    return n\n",
            "cache.py": "class C:\n    seen = []\n",
            "hw.py": "import machine\n",
            "talks.py": "def hello():\n    print('hi')\n",
            "on_hw.py": "import hw\n",
        },
    )
    assert img.pure == {"codec", "uses_codec"}
    a = modules(img, tmp_path / "a")
    b = modules(img, tmp_path / "b")
    assert a.load("codec") is b.load("codec")
    assert a.load("uses_codec").g() == 6
    assert a.load("counter") is not b.load("counter")
    a.load("counter").bump()
    assert b.load("counter").bump() == 1, "per-board state stays per board"


def test_a_board_with_its_own_copy_gets_its_own_module(tmp_path):
    img = image(tmp_path, {"codec.py": "def f():\n    return 1\n"})
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "codec.py").write_text("def f():\n    return 2\n")
    a = modules(img, tmp_path / "a")
    b = modules(img, tmp_path / "b")
    assert a.load("codec").f() == 2 and b.load("codec").f() == 1
    assert a.load("codec") is not img.shared_module("codec")
