"""SPEC section 5: MicroPython compatibility gates over every firmware/*.py.

The gate logic lives in tools/check_firmware.py (also run by `make lint`);
this file parametrizes it per firmware file, discovered at collection time,
and proves that each gate rejects what it must.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers import FIRMWARE_DIR, load_tool

check = load_tool("check_firmware")
FIRMWARE_FILES = check.firmware_files(FIRMWARE_DIR)
IDS = [p.name for p in FIRMWARE_FILES]

pytestmark = pytest.mark.gates


@pytest.fixture(scope="module")
def type_problems() -> dict[Path, list[str]]:
    """One mypy run over all of firmware/ (the modules import each other)."""
    return check.check_types(FIRMWARE_FILES)  # type: ignore[no-any-return]


def _report(problems: list[str]) -> str:
    return "\n".join("  " + p for p in problems)


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=IDS)
def test_mpy_cross_compiles(path: Path, tmp_path: Path) -> None:
    problems = check.check_mpy([path], outdir=tmp_path)
    assert not problems, _report(problems.get(path, []))
    assert (tmp_path / (path.stem + ".mpy")).stat().st_size > 0


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=IDS)
def test_types_against_esp32_stubs(path: Path, type_problems: dict[Path, list[str]]) -> None:
    problems = type_problems.get(path, [])
    assert not problems, f"{path.name} uses APIs or types the board does not have:\n{_report(problems)}"


@pytest.mark.parametrize("path", FIRMWARE_FILES, ids=IDS)
def test_static_import_time_and_globals(path: Path) -> None:
    problems = check.static_problems(path)
    assert not problems, f"{path.name}:\n{_report(problems)}"


# --- the gates bite -------------------------------------------------------


def _write(tmp_path: Path, name: str, source: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def test_type_gate_accepts_board_apis_and_rejects_cpython_only(tmp_path: Path) -> None:
    good = _write(
        tmp_path,
        "good.py",
        """
        import asyncio
        import time
        import machine
        import network

        def uptime_ms(start):
            return time.ticks_diff(time.ticks_ms(), start)

        async def main():
            wlan = network.WLAN(network.STA_IF)
            wlan.active(True)
            cause = machine.reset_cause()
            await asyncio.sleep_ms(10)
            return cause
        """,
    )
    bad = _write(
        tmp_path,
        "bad.py",
        """
        import asyncio
        import time

        def now():
            return time.perf_counter()

        async def loop():
            return asyncio.get_running_loop()
        """,
    )
    problems = check.check_types([good, bad])
    assert good not in problems, problems
    messages = "\n".join(problems[bad])
    assert '"perf_counter"' in messages and "line 6" in messages
    assert '"get_running_loop"' in messages and "line 9" in messages


def test_type_gate_rejects_cpython_only_modules_and_bare_ignores(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "mod.py",
        """
        import dataclasses
        import time

        def a():
            return time.monotonic()  # type: ignore

        def b():
            return time.monotonic()  # type: ignore[attr-defined]
        """,
    )
    messages = "\n".join(check.check_types([path])[path])
    assert '"dataclasses"' in messages
    assert "line 6: bare '# type: ignore'" in messages
    assert "line 9: '# type: ignore[...]' needs a reason" in messages


def test_type_gate_accepts_const_fallback_and_reasoned_ignore(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "mod.py",
        """
        try:
            from micropython import const
        except ImportError:  # CPython
            def const(x):
                return x

        import time

        _N = const(3)

        def t():
            return time.monotonic()  # type: ignore[attr-defined]  # emulator-only helper
        """,
    )
    assert check.check_types([path]) == {}


def test_mpy_gate_rejects_what_micropython_cannot_compile(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.py", "def f():\n    return (yield from)\n")
    assert "mpy-cross" in check.check_mpy([path])[path][0]


def test_static_gate_flags_import_time_work_and_module_state(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "mod.py",
        """
        import machine
        import dataclasses
        BUF = bytearray(64)
        TABLE = {"a": 1}
        counter = 0
        LED = machine.Pin(2)
        print("booting")

        class Device:
            cache = {}

        def bump():
            global counter
            counter += 1
        """,
    )
    problems = "\n".join(check.static_problems(path))
    for expected in (
        "line 3: `import dataclasses` at run time",
        "line 4: mutable module-level `bytearray(64)`",
        "line 5: mutable module-level `{'a': 1}`",
        "line 6: module global `counter`",
        "line 7: `machine.Pin(2)` runs at import",
        "line 8: `Expr` statement runs at import",
        "line 11: class attribute Device.cache",
        "line 14: `global counter`",
    ):
        assert expected in problems, problems


def test_static_gate_allows_constants_defs_and_const_fallback(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "mod.py",
        '''
        """A pure module."""
        try:
            from micropython import const
        except ImportError:
            def const(x):
                return x
        import errno

        TYPE_CHECKING = False
        if TYPE_CHECKING:
            from typing import Any

        _MAX = const(1 << 20)
        _NEG = -202
        NAMES = ("t", "h")
        TIMEOUT_ERRORS = (errno.ETIMEDOUT, 116)
        __version__ = "0.1.0"

        class Codec:
            __slots__ = ("buf",)
            KIND = 3

            def __init__(self):
                self.buf = bytearray(16)

        if __name__ == "__main__":
            print(Codec())
        ''',
    )
    assert check.static_problems(path) == []


def test_entry_scripts_may_run_code_at_import(tmp_path: Path) -> None:
    path = _write(tmp_path, "main.py", "import app\napp.main()\n")
    assert check.static_problems(path) == []
