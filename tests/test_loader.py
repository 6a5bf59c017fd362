"""The firmware loader: stateless modules are shared by every board and
reach the running board through proxies; modules with state, and boards
with their own copy of a module, get modules of their own."""

from __future__ import annotations

import textwrap
import types
from pathlib import Path

import pytest

from emulator.board.loader import BoardModules, FirmwareImage, ModuleProxy, current_modules


def image(tmp_path: Path, files: dict[str, str]) -> FirmwareImage:
    d = tmp_path / "fw"
    d.mkdir()
    for name, src in files.items():
        (d / name).write_text(textwrap.dedent(src))
    return FirmwareImage(d)


def board_modules(img: FirmwareImage, flash: Path, label: str) -> BoardModules:
    flash.mkdir(parents=True, exist_ok=True)
    hw = types.SimpleNamespace(label=label, read=lambda: f"read on {label}")
    lines: list[str] = []
    mods = BoardModules(img, flash, {"machine": lambda: hw}, lambda *a, **k: lines.append(" ".join(map(str, a))), open)
    mods.lines = lines
    return mods


def test_real_firmware_is_shared_except_the_scripts():
    img = FirmwareImage()
    assert {"mqtt_codec", "mqtt_session", "mqtt_client", "device", "commands", "config", "app"} <= img.shareable
    assert not img.shareable & {"boot", "main"}


FILES = {
    "codec.py": "from micropython import const\n_N = const(3)\nLIMIT = 10\n\ndef f(x):\n    return x * _N\n",
    "dev.py": "import machine\nfrom codec import f\n\ndef where():\n    print('here')\n    return machine.read(), f(2)\n",
    "counter.py": "n = 0\n\ndef bump():\n    global n\n    n += 1\n    return n\n",
    "cache.py": "class C:\n    seen = []\n",
    "pins.py": "from machine import read\n",
}


def test_what_is_shared(tmp_path):
    img = image(tmp_path, FILES)
    assert img.shareable == {"codec", "dev"}


def test_shared_module_reaches_the_running_board(tmp_path):
    img = image(tmp_path, FILES)
    a = board_modules(img, tmp_path / "a", "A")
    b = board_modules(img, tmp_path / "b", "B")
    dev_a, dev_b = a.context.run(a.load, "dev"), b.context.run(b.load, "dev")
    assert dev_a is dev_b, "one module object for every board"
    assert isinstance(dev_a.machine, ModuleProxy)
    assert a.context.run(dev_a.where) == ("read on A", 6)
    assert b.context.run(dev_b.where) == ("read on B", 6)
    assert a.lines == ["here"] and b.lines == ["here"], "print goes to the running board's console"


def test_state_stays_per_board(tmp_path):
    img = image(tmp_path, FILES)
    a = board_modules(img, tmp_path / "a", "A")
    b = board_modules(img, tmp_path / "b", "B")
    assert a.context.run(a.load, "counter") is not b.context.run(b.load, "counter")
    a.modules["counter"].bump()
    assert b.modules["counter"].bump() == 1


def test_a_board_with_its_own_copy_gets_its_own_modules(tmp_path):
    img = image(tmp_path, FILES)
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "codec.py").write_text("def f(x):\n    return -x\n")
    a = board_modules(img, tmp_path / "a", "A")
    b = board_modules(img, tmp_path / "b", "B")
    # dev imports codec: on board A both are A's own; B still shares them.
    assert a.context.run(lambda: a.load("dev").where()) == ("read on A", -2)
    assert b.context.run(lambda: b.load("dev").where()) == ("read on B", 6)
    assert a.modules["dev"] is not img.shared_module("dev")
    assert b.modules["dev"] is img.shared_module("dev")


def test_firmware_outside_any_board_fails_clearly(tmp_path):
    import contextvars

    img = image(tmp_path, FILES)
    a = board_modules(img, tmp_path / "a", "A")
    dev = a.context.run(a.load, "dev")
    with pytest.raises(RuntimeError, match="outside any emulated board"):
        contextvars.Context().run(dev.where)
    assert a.context.run(current_modules) is a
