"""Your firmware everywhere (issue 13): which folder each command boots
(`--firmware`, else ./firmware with a main.py, else the bundled one), the
first line that says so, the exit 2 for a folder that cannot boot, the
plugin's marker path relative to the rootdir (papercut 7), and
`esp32emu new`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from emulator import cli
from emulator.board.backends import board_modules, emulated_board_modules
from emulator.firmware.deploy import deployed
from emulator.firmware.folder import FirmwareError, bundled_firmware, check, fw_version, resolve
from emulator.firmware.scaffold import adapt_ci, config_template, new_project
from emulator.realboard.flash import flash
from tests.boards import is_birth
from tests.helpers import FIRMWARE_DIR
from tests.test_flash import blank_board  # noqa: F401  (fixture: an emulated board with an empty filesystem)

REPO = Path(__file__).resolve().parent.parent
ESP32EMU = [sys.executable, "-m", "emulator"]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def firmware_copy(dest: Path, version: str = "7.7.7-copy") -> Path:
    """The project's firmware with another FW_VERSION, so a birth tells which one runs."""
    shutil.copytree(FIRMWARE_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    device = dest / "device.py"
    old = f'FW_VERSION = "{fw_version(FIRMWARE_DIR)}"'
    assert device.read_text().count(old) == 1, "device.py changed: update firmware_copy"
    device.write_text(device.read_text().replace(old, f'FW_VERSION = "{version}"'))
    return dest


def esp32emu(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*ESP32EMU, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=ENV)


# -- which folder -------------------------------------------------------------------------------


def test_the_bundled_firmware_in_a_checkout_is_the_repositorys_own():
    assert bundled_firmware() == FIRMWARE_DIR
    assert not (REPO / "emulator" / "_firmware").exists()  # the build copies it into the wheel, never the tree


def test_default_order_flag_then_dot_firmware_then_bundled(tmp_path):
    assert resolve(cwd=tmp_path).origin == "bundled"
    (tmp_path / "firmware").mkdir()
    (tmp_path / "firmware" / "app.py").write_text("X = 1\n")
    assert resolve(cwd=tmp_path).path == bundled_firmware()  # ./firmware without a main.py is not a firmware

    shutil.rmtree(tmp_path / "firmware")
    firmware_copy(tmp_path / "firmware", "1.2.3-here")
    here = resolve(cwd=tmp_path)
    assert (here.path, here.version, here.origin) == (tmp_path / "firmware", "1.2.3-here", "./firmware")

    firmware_copy(tmp_path / "mine", "4.5.6-flag")
    flagged = resolve("mine", cwd=tmp_path)  # relative to the working directory
    assert (flagged.path, flagged.version, flagged.origin) == (tmp_path / "mine", "4.5.6-flag", "--firmware")
    assert flagged.line() == f"esp32emu: booting firmware {tmp_path / 'mine'} (FW_VERSION 4.5.6-flag; from --firmware)"


def test_fw_version_is_the_module_level_constant(tmp_path):
    declared = re.search(r'^FW_VERSION = "([^"]+)"', (FIRMWARE_DIR / "device.py").read_text(), re.M)
    assert declared and fw_version(FIRMWARE_DIR) == declared.group(1)
    (tmp_path / "main.py").write_text('def f():\n    FW_VERSION = "not-module-level"\n')
    assert fw_version(tmp_path) is None


# -- a folder that cannot boot ---------------------------------------------------------------------

BROKEN = {
    # name: (file to write, its text, what the one line must say)
    "syntax": ("device.py", "X = 1\ndef broken(:\n    pass\n", "device.py:2: SyntaxError"),
    "indent": ("commands.py", "def f():\nreturn 1\n", "commands.py:2: IndentationError"),
    "missing-name": ("app.py", "def main():\n    from device import FW_VERSION, Devise\n",
                     "app.py:2: cannot import name 'Devise' from device"),
    "missing-module": ("leds.py", "import machine\nimport neopixel_driver\n",
                       "leds.py:2: no module named 'neopixel_driver'"),
    "relative": ("config.py", "from . import device\n", "config.py:1: relative import"),
    "not-utf8": ("bme280.py", b"X = '\xff'\n", "bme280.py: not UTF-8"),
}


def broken_firmware(dest: Path, case: str) -> tuple[Path, str]:
    firmware_copy(dest)
    name, text, says = BROKEN[case]
    (dest / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    return dest, says


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_check_names_the_file_and_line(tmp_path, case):
    folder, says = broken_firmware(tmp_path / "fw", case)
    with pytest.raises(FirmwareError) as e:
        check(folder, emulated_board_modules())
    assert str(folder / says) in str(e.value) and "\n" not in str(e.value)


def test_check_refuses_a_folder_without_main_and_a_missing_folder(tmp_path):
    firmware_copy(tmp_path / "fw")
    (tmp_path / "fw" / "main.py").unlink()
    with pytest.raises(FirmwareError, match=r"fw/main.py: missing"):
        check(tmp_path / "fw")
    with pytest.raises(FirmwareError, match="does not exist"):
        check(tmp_path / "nowhere")


def test_check_accepts_guarded_imports_and_unknown_modules_on_a_real_board(tmp_path):
    folder = firmware_copy(tmp_path / "fw")
    (folder / "extra.py").write_text(
        "try:\n    import neopixel\nexcept ImportError:\n    neopixel = None\n"
        "try:\n    from micropython import const\nexcept ImportError:\n    def const(x):\n        return x\n"
    )
    check(folder, emulated_board_modules())
    (folder / "extra.py").write_text("import neopixel\n")
    check(folder, None)  # a real board (flash): its modules are not ours to know
    with pytest.raises(FirmwareError, match="extra.py:1: no module named 'neopixel'"):
        check(folder, emulated_board_modules())


def test_the_project_firmware_passes_on_both_backends():
    check(FIRMWARE_DIR, emulated_board_modules())
    if shutil.which("micropython") or (Path(sys.executable).parent / "micropython").exists():
        check(FIRMWARE_DIR, board_modules("micropython"))


@pytest.mark.parametrize("command", ["run", "fleet", "serial", "flash"])
def test_every_command_exits_2_with_one_line_on_a_broken_firmware(tmp_path, command):
    folder, says = broken_firmware(tmp_path / "fw", "syntax")
    args = {
        "run": ["run", "--broker", "mqtt://127.0.0.1:9"],
        "fleet": ["fleet", "--devices", "2", "--broker", "mqtt://127.0.0.1:9"],
        "serial": ["serial", "--broker", "mqtt://127.0.0.1:9"],
        "flash": ["flash", "--id", "dev-1", "--broker", "mqtt://10.0.0.2:1883", "--port"],
    }[command]
    master, slave = os.openpty()  # flash checks that the port exists before the firmware
    try:
        if command == "flash":
            args.append(os.ttyname(slave))
        r = esp32emu("--state", str(tmp_path / "state"), *args, "--firmware", str(folder), cwd=tmp_path)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"esp32emu: {folder / says}"), r.stderr


# -- each command boots the chosen firmware ------------------------------------------------


@pytest.mark.mosquitto
@pytest.mark.integration
@pytest.mark.parametrize(
    "command, ids",
    [
        (["run", "--id", "dev-run"], ["dev-run"]),
        (["fleet", "--devices", "3", "--workers", "1", "--quiet"], ["dev-00001", "dev-00002", "dev-00003"]),
        (["serial", "--id", "dev-ser"], ["dev-ser"]),
        (["run", "--id", "dev-vm", "--vm", "micropython"], ["dev-vm"]),  # the real interpreter
    ],
    ids=["run", "fleet", "serial", "run-vm"],
)
def test_each_command_boots_the_firmware_given_and_says_so_first(tmp_path, broker, observer, command, ids):
    obs = observer(broker)
    obs.subscribe("devices/+/status")
    version = f"5.0.0-{ids[0]}"
    mine = firmware_copy(tmp_path / "mine", version)
    r = esp32emu("--state", str(tmp_path / "state"), *command, "--broker", broker.url, "--duration", "3",
                 "--firmware", "mine", cwd=tmp_path)  # relative to the working directory
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0] == f"esp32emu: booting firmware {mine} (FW_VERSION {version}; from --firmware)"
    for device_id in ids:
        assert obs.wait_for(is_birth(device_id), timeout=10).json()["fw"] == version
    if command[0] == "serial":  # the files went onto the board's flash, where mpremote sees them
        flash_dir = tmp_path / "state" / "serial" / "dev-ser" / "flash"
        assert (flash_dir / "device.py").read_text() == (mine / "device.py").read_text()


@pytest.mark.mosquitto
@pytest.mark.integration
def test_run_without_the_flag_boots_dot_firmware(tmp_path, broker, observer):
    obs = observer(broker)
    obs.subscribe("devices/+/status")
    firmware_copy(tmp_path / "firmware", "3.0.0-here")
    r = esp32emu("--state", str(tmp_path / "state"), "run", "--broker", broker.url, "--id", "dev-here", "--duration", "3",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[0].endswith("(FW_VERSION 3.0.0-here; ./firmware in the current folder)"), r.stderr
    assert obs.wait_for(is_birth("dev-here"), timeout=10).json()["fw"] == "3.0.0-here"


@pytest.mark.integration
def test_flash_deploys_the_firmware_given_and_says_so_first(blank_board, tmp_path):  # noqa: F811
    sb = blank_board()
    mine = firmware_copy(tmp_path / "mine", "8.0.0-flash")
    said: list[str] = []
    flash(sb.path, "dev-fw", "mqtt://192.0.2.1:1883", mpy=False, reset=False, firmware_dir=mine, say=said.append,
          wifi_ssid="esp32emu", wifi_password="emulated")
    assert said[0] == f"esp32emu: flashing firmware {mine} (FW_VERSION 8.0.0-flash; from --firmware)"
    assert (sb.board.flash_dir / "device.py").read_bytes() == deployed(mine)["device.py"]  # as deploy.py shortens it


# -- the plugin: a marker's firmware= is relative to the rootdir (papercut 7) ----------------------


@pytest.mark.mosquitto
@pytest.mark.integration
def test_plugin_marker_firmware_is_relative_to_the_rootdir_and_a_broken_one_fails_in_one_line(tmp_path):
    firmware_copy(tmp_path / "fw", "9.0.0-marker")
    broken_firmware(tmp_path / "broken", "missing-name")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    deep = tmp_path / "tests" / "deep"
    deep.mkdir(parents=True)
    (deep / "test_marker.py").write_text(
        "import pytest\n\n\n"
        "@pytest.mark.esp32emu(firmware='fw')\n"
        "def test_marker_firmware(board, observer):\n"
        "    board.boot()\n"
        "    birth = observer.expect(board.topic('status'), {'online': True}, timeout=10)\n"
        "    assert birth.json()['fw'] == '9.0.0-marker'\n\n\n"
        "@pytest.mark.esp32emu(firmware='broken')\n"
        "def test_broken_firmware(board):\n"
        "    board.boot()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    r = subprocess.run([sys.executable, "-m", "pytest", ".", "-p", "no:cacheprovider", "-q", "-p", "no:randomly"],
                       cwd=deep, env=env, capture_output=True, text=True, timeout=120)  # run from deep inside
    assert "1 passed, 1 error" in r.stdout, r.stdout + r.stderr  # the broken one fails in its setup
    assert f"esp32emu: {tmp_path / 'broken' / 'app.py'}:2: cannot import name 'Devise'" in r.stdout, r.stdout


# -- esp32emu new ------------------------------------------------------------------------------


def test_new_makes_a_project_that_points_the_plugin_at_its_firmware(tmp_path, capsys):
    assert cli.main(["new", str(tmp_path / "proj")]) == 0
    proj = tmp_path / "proj"
    assert "FW_VERSION" in capsys.readouterr().out
    for src in FIRMWARE_DIR.glob("*.py"):
        assert (proj / "firmware" / src.name).read_bytes() == src.read_bytes()
    assert sorted(p.name for p in (proj / "tests").iterdir()) == sorted(
        p.name for p in (REPO / "examples" / "tests").glob("test_*.py"))
    assert all("examples/tests" not in p.read_text() for p in (proj / "tests").iterdir())
    assert "esp32emu_firmware = firmware" in (proj / "pytest.ini").read_text()
    workflow = (proj / ".github" / "workflows" / "firmware.yml").read_text()
    assert "python -m pytest tests" in workflow and "examples/" not in workflow and "-e ." not in workflow
    assert "git+https://github.com/<owner>/esp32emu" in workflow


def test_new_config_template_boots_on_the_firmware():
    from emulator.realboard.flash import _firmware_config_module

    mod = _firmware_config_module(FIRMWARE_DIR)
    mod.validate(json.loads(json.dumps(config_template())), lambda msg: pytest.fail(f"warning: {msg}"))


def test_new_ci_adaptation_fails_loudly_when_the_example_changes():
    with pytest.raises(ValueError, match="update emulator/firmware/scaffold.py"):
        adapt_ci("# As it stands\nname: x\nrun: pytest something-else\n")


@pytest.mark.parametrize("existing", ["file", "non-empty folder"])
def test_new_refuses_an_existing_target_in_one_line(tmp_path, existing):
    target = tmp_path / "proj"
    if existing == "file":
        target.write_text("mine\n")
    else:
        target.mkdir()
        (target / "notes.txt").write_text("mine\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = esp32emu("new", str(target), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and str(target) in r.stderr, r
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_new_into_an_empty_folder(tmp_path):
    (tmp_path / "proj").mkdir()
    assert new_project(tmp_path / "proj")[0].startswith("firmware/")


@pytest.mark.mosquitto
@pytest.mark.integration
@pytest.mark.slow
def test_new_project_tests_pass_right_away(tmp_path):
    assert esp32emu("new", "myfw", cwd=tmp_path).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"], cwd=tmp_path / "myfw",
                       env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "3 passed" in r.stdout, r.stdout + r.stderr
