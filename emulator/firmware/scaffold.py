"""`esp32emu new DIR`: start a firmware project of your own.

DIR gets a copy of the bundled firmware (`firmware/`), a `config.json`
template for a board, `tests/` with the plugin's three example tests,
a `pytest.ini` that points the plugin at `firmware/`, the CI workflow
(`.github/workflows/firmware.yml`), a short README and a .gitignore; `cd DIR
&& pytest` passes at once. The examples and the workflow are the
repository's own `examples/` files (bundled in the wheel, see
folder.BUNDLED), adapted here, never a second copy.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from emulator.firmware.folder import bundled, fw_version

PYTEST_INI = """\
[pytest]
testpaths = tests
# The esp32emu pytest plugin boots this firmware folder in every emulated
# board (relative to this file; `pytest --firmware PATH` overrides it).
esp32emu_firmware = firmware
"""

GITIGNORE = """\
__pycache__/
.pytest_cache/
# emulated boards' flash and NVS, private brokers (esp32emu --state)
.esp32emu/
# dev PKI (esp32emu certs): private keys, never commit
certs/
*.mpy
"""

README = """\
# {name}

MicroPython firmware for ESP32 boards, tested on emulated boards with
[esp32emu](https://github.com/<owner>/esp32emu).

| path | what |
|---|---|
| `firmware/` | the files that go onto a board (`esp32emu flash --port PORT --id ID` deploys them) |
| `config.json` | a board's configuration, as a template (`flash` writes `id`, `broker` and `wifi`) |
| `tests/` | pytest tests on emulated boards against a private Mosquitto (`pytest`) |
| `pytest.ini` | points the esp32emu plugin at `firmware/` |
| `.github/workflows/firmware.yml` | runs the tests on every push (change the line that installs esp32emu) |

    pytest                                  # the tests (needs mosquitto: apt-get install -y mosquitto)
    esp32emu run --duration 30              # one emulated board booting ./firmware
    esp32emu fleet --devices 100            # a hundred of them, live view
    esp32emu flash --port /dev/ttyUSB0 --id dev-00001 --broker mqtt://192.168.1.10:1883 --wifi-ssid lab
"""

CONFIG_TEMPLATE_HOST = "192.168.1.10"  # a LAN address: a real board cannot reach the computer's 127.0.0.1
GIT_URL = "git+https://github.com/<owner>/esp32emu@<tag>"

_CI_HEADER = f"""\
# esp32emu new made this workflow for this firmware project: it runs tests/
# on emulated boards (pytest.ini points the plugin at firmware/) on every
# push. Change the line marked "1." to install esp32emu from wherever your
# team gets it, e.g. the git URL form:
#   python -m pip install "esp32emu @ {GIT_URL}"
"""
# (the example workflow's text, what it becomes in a project)
_CI_EDITS = [
    ("python -m pip install -e . ", f'python -m pip install "esp32emu @ {GIT_URL}" '),
    ("# 1. your esp32emu source", "# 1. where your team gets esp32emu"),
    ("python -m pytest examples/tests --firmware firmware", "python -m pytest tests"),
    ("# 2. your tests and your firmware folder", "# tests/ and firmware/ (pytest.ini)"),
]


class ScaffoldError(ValueError):
    """DIR cannot be used; one line."""


def config_template() -> dict:
    """A board's config.json, every key at its usual value (see the README's config.json)."""
    from emulator.firmware.config import default_config

    cfg = default_config("dev-00001", CONFIG_TEMPLATE_HOST, 1883)
    cfg["wifi"] = {"ssid": "your-wifi", "password": "your-wifi-password"}
    return cfg


def adapt_example(source: str) -> str:
    """An example test as the project's own: run with plain `pytest`."""
    return re.sub(r"(?m)^Run: pytest examples/tests\s*", "Run: pytest            ", source)


def adapt_ci(source: str) -> str:
    """The example workflow for a project made by `new` (ValueError if the example changed shape)."""
    head, sep, rest = source.partition("# As it stands")
    body = rest[rest.index("\nname:") + 1:] if sep and "\nname:" in rest else ""
    if not body:
        raise ValueError("examples/ci/github-actions.yml changed: update emulator/firmware/scaffold.py adapt_ci")
    text = head + _CI_HEADER + body
    for old, new in _CI_EDITS:
        if old not in text:
            raise ValueError(f"examples/ci/github-actions.yml has no {old!r}: update emulator/firmware/scaffold.py adapt_ci")
        text = text.replace(old, new)
    return text


def new_project(dest: Path) -> list[str]:
    """Make the project in `dest` (absent or an empty folder); returns what it made."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ScaffoldError(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()):
        raise ScaffoldError(f"{dest} exists and is not empty: give a new folder (nothing was written)")
    firmware, examples, ci = bundled("firmware"), bundled("examples/tests"), bundled("examples/ci")
    workflow = adapt_ci((ci / "github-actions.yml").read_text())
    tests = {p.name: adapt_example(p.read_text()) for p in sorted(examples.glob("test_*.py"))}
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(firmware, dest / "firmware", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.mpy"))
    (dest / "config.json").write_text(json.dumps(config_template(), indent=2) + "\n")
    (dest / "tests").mkdir()
    for name, text in tests.items():
        (dest / "tests" / name).write_text(text)
    (dest / "pytest.ini").write_text(PYTEST_INI)
    (dest / ".github" / "workflows").mkdir(parents=True)
    (dest / ".github" / "workflows" / "firmware.yml").write_text(workflow)
    (dest / "README.md").write_text(README.format(name=dest.resolve().name))
    (dest / ".gitignore").write_text(GITIGNORE)
    version = fw_version(dest / "firmware")
    return [
        f"firmware/ (FW_VERSION {version})" if version else "firmware/",
        "config.json",
        f"tests/ ({len(tests)} example tests)",
        "pytest.ini",
        ".github/workflows/firmware.yml",
        "README.md",
        ".gitignore",
    ]
