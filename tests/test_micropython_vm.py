"""Run tests/micropython/test_*.py inside a real MicroPython VM (WebAssembly,
npm @micropython/micropython-webassembly-pyscript) via tests/micropython/run.mjs,
one pytest case per file; a failure shows the runner's output."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "tests" / "micropython" / "run.mjs"
PACKAGE = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
MP_TESTS = sorted((ROOT / "tests" / "micropython").glob("test_*.py"))


@pytest.mark.parametrize("test_file", MP_TESTS, ids=[p.name for p in MP_TESTS])
def test_under_micropython(test_file):
    node = shutil.which("node")
    assert node, "node (Node.js >= 18) is needed to run the MicroPython VM tests"
    assert PACKAGE.is_dir(), f"run `npm install` in {ROOT} first ({PACKAGE} is missing)"
    proc = subprocess.run([node, str(RUNNER), str(test_file)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    output = proc.stdout + proc.stderr
    fails = [line for line in output.splitlines() if line.startswith("FAIL ")]
    passes = [line for line in output.splitlines() if line.startswith("PASS ")]
    assert proc.returncode == 0 and not fails, f"MicroPython VM run failed:\n{output}"
    assert passes, f"no test ran:\n{output}"
    assert output.rstrip().splitlines()[-1] == f"{len(passes)} passed, 0 failed"
