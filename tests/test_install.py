"""esp32emu installed like any tool, outside the repository (issue 13).

One wheel and one fresh venv for the whole module: `python -m build` makes
an sdist and the wheel from it (so the sdist carries what the wheel needs),
the wheel goes into a new venv in a temporary folder (its dependencies from
the package index through pip and its cache), and every command runs from a
temporary folder with nothing of the repository on its path:

- `esp32emu run --duration 5` boots the bundled firmware against the private
  Mosquitto it starts, and an observer sees the birth;
- `esp32emu new myfw && cd myfw && pytest` passes (the three example tests);
- `esp32emu fleet --devices 20 --duration 10 --firmware myfw/firmware`
  boots that copy: every birth carries the copy's changed FW_VERSION.

The module prints its timings (build, venv + install, wheel size).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from emulator.firmware.folder import fw_version
from tests.boards import is_birth
from tests.helpers import FIRMWARE_DIR, REPO_ROOT, Observer

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.mosquitto]

TIMINGS: dict[str, float] = {}


class Installed:
    """The fresh venv with the wheel installed, and a clean environment to run it in."""

    def __init__(self, root: Path, wheel: Path):
        self.root = root
        self.wheel = wheel
        self.venv = root / "venv"
        self.bin = self.venv / "bin"
        self.work = root / "work"  # where the user types commands
        self.work.mkdir()
        path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(sys.executable).parent]
        self.env = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("PYTEST_", "PYTHONPATH", "VIRTUAL_ENV", "COV_"))
        }
        self.env["PATH"] = os.pathsep.join([str(self.bin), *path])

    def run(self, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=cwd or self.work, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def popen(self, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        return subprocess.Popen([str(a) for a in args], cwd=cwd or self.work, env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("outside")
    assert REPO_ROOT not in root.parents
    t0 = time.monotonic()
    dist = root / "dist"
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO_ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = dist.glob("esp32emu-*.whl")
    TIMINGS["build (sdist, then the wheel from it)"] = time.monotonic() - t0
    TIMINGS["wheel size KiB"] = wheel.stat().st_size / 1024

    inst = Installed(root, wheel)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "venv", str(inst.venv)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    TIMINGS["venv"] = time.monotonic() - t0
    t0 = time.monotonic()
    # pytest: the user's own tests (esp32emu's plugin comes with the wheel)
    r = inst.run(inst.bin / "pip", "install", "--disable-pip-version-check", "-q", wheel, "pytest", timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    TIMINGS["pip install wheel + pytest"] = time.monotonic() - t0
    return inst


@pytest.fixture(scope="module", autouse=True)
def _print_timings():
    t0 = time.monotonic()
    yield
    TIMINGS["module wall time"] = time.monotonic() - t0
    print("\n" + "\n".join(f"test_install: {k}: {v:.1f}" for k, v in TIMINGS.items()))


class Lines:
    """A child's output stream read on a thread; `wait(regex, timeout)` returns the first match."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._done = False
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = re.search(pattern, line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or self._done:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; got:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def all(self, timeout: float = 10) -> list[str]:
        with self._cond:
            self._cond.wait_for(lambda: self._done, timeout)
            return list(self.lines)


def test_the_wheel_carries_the_firmware_and_the_templates(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for src in FIRMWARE_DIR.glob("*.py"):
        assert f"emulator/_firmware/{src.name}" in names
    for src in (REPO_ROOT / "examples" / "tests").glob("test_*.py"):
        assert f"emulator/_templates/tests/{src.name}" in names
    assert "emulator/_templates/ci/github-actions.yml" in names
    static = REPO_ROOT / "emulator" / "dashboard" / "static"  # the dashboard's page, every file of it
    for src in (p for p in static.rglob("*") if p.is_file()):
        assert f"emulator/dashboard/static/{src.relative_to(static).as_posix()}" in names
    r = installed.run(installed.bin / "python", "-c", "import emulator; print(emulator.__file__)")
    assert r.returncode == 0 and str(installed.venv) in r.stdout, r  # not the repository's package


def test_run_boots_the_bundled_firmware_and_an_observer_sees_its_birth(installed):
    proc = installed.popen(installed.bin / "esp32emu", "run", "--duration", "5")
    err, out = Lines(proc.stderr), Lines(proc.stdout)
    try:
        url = err.wait(r"started a private Mosquitto at mqtt://([\d.]+):(\d+)", timeout=30)
        obs = Observer(url.group(1), int(url.group(2)), client_id="install-observer").connect()
        try:
            obs.subscribe("devices/#")
            birth = obs.wait_for(is_birth("dev-00001"), timeout=15)  # live, or retained if it came first
        finally:
            obs.close()
        assert proc.wait(timeout=60) == 0, "\n".join(err.all())
    finally:
        proc.kill()
        proc.wait()
    assert birth.json()["fw"] == fw_version(FIRMWARE_DIR)
    first = err.all()[0]
    assert first.startswith(f"esp32emu: booting firmware {installed.venv}/"), first
    assert first.endswith(f"emulator/_firmware (FW_VERSION {fw_version(FIRMWARE_DIR)}; bundled with esp32emu)"), first
    assert any("mqtt: online" in line for line in out.all()), out.all()


def test_new_project_tests_pass_then_the_fleet_boots_its_firmware(installed, broker, observer):
    r = installed.run(installed.bin / "esp32emu", "new", "myfw")
    assert r.returncode == 0, r.stderr
    project = installed.work / "myfw"
    r = installed.run(installed.bin / "pytest", "-q", "-p", "no:cacheprovider", cwd=project, timeout=300)
    assert r.returncode == 0 and "3 passed" in r.stdout, r.stdout[-4000:] + r.stderr[-2000:]

    # Prove it is the copy that runs: change its version.
    device = project / "firmware" / "device.py"
    old = f'FW_VERSION = "{fw_version(FIRMWARE_DIR)}"'
    assert device.read_text().count(old) == 1
    device.write_text(device.read_text().replace(old, 'FW_VERSION = "0.9.9-myfw"'))

    obs = observer(broker)
    obs.subscribe("devices/+/status")
    r = installed.run(installed.bin / "esp32emu", "fleet", "--devices", "20", "--duration", "10", "--quiet",
                      "--firmware", "myfw/firmware", "--broker", broker.url, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.splitlines()[0] == (
        f"esp32emu: booting firmware {project / 'firmware'} (FW_VERSION 0.9.9-myfw; from --firmware)"
    ), r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["devices"] == 20 and report["online_at_end"] == 20, report
    for i in range(1, 21):
        assert obs.wait_for(is_birth(f"dev-{i:05d}"), timeout=10).json()["fw"] == "0.9.9-myfw"
