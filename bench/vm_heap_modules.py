"""The firmware's heap per module on the real MicroPython VM (used by
bench/vm_heap.py): a fresh VM imports the stubs and the system modules,
then each firmware module after the firmware modules it imports, with
gc.collect() around the import; a module's figure is the gc.mem_alloc()
delta (the least over several qstr-pool fill levels)."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from vm_board import MICROPYTHON, STUB_NAMES, SYSTEM_MODULES

_IMPORT_PROBE = """\
import gc, sys
for _n in sys.argv[2:-1]:
    __import__(_n)
class _O:
    pass
_o = _O()
for _i in range(int(sys.argv[1])):  # fill the qstr pool to a given level
    hasattr(_o, "pad%d" % _i)
gc.collect()
_a = gc.mem_alloc()
__import__(sys.argv[-1])
gc.collect()
print("HEAP", gc.mem_alloc() - _a)
"""
PADS = (0, 37, 75, 150, 300, 600)  # qstr pool fill levels tried per module


def import_order(firmware_dir: Path) -> list[str]:
    """Firmware modules (not boot/main), each after the firmware modules it
    imports at module level."""
    deps = module_deps(firmware_dir)
    order: list[str] = []

    def visit(name: str, seen: tuple[str, ...] = ()) -> None:
        if name in order or name not in deps or name in seen:
            return
        for d in sorted(deps[name]):
            visit(d, seen + (name,))
        order.append(name)

    for name in sorted(deps):
        visit(name)
    return order


def module_deps(firmware_dir: Path) -> dict[str, set[str]]:
    """Each firmware module's module-level imports of other firmware modules."""
    names = {p.stem for p in firmware_dir.glob("*.py")} - {"boot", "main"}
    deps: dict[str, set[str]] = {}
    for name in names:
        tree = ast.parse((firmware_dir / f"{name}.py").read_text())
        found: set[str] = set()
        for node in tree.body:
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
        deps[name] = found & names
    return deps


def module_heap(fs: Path, firmware_dir: Path, heap: str = "2m") -> dict[str, int]:
    """Bytes of heap each module adds when imported, each in a fresh VM
    after the stubs, the system modules and every firmware module it
    imports; the least of several runs with the qstr pool filled to
    different levels (PADS), so that a new qstr pool -- sized by the
    interpreter's history, landing on whichever import overflows the last
    one -- is not charged to the module. Its own qstrs are."""
    (fs / "_heap_probe.py").write_text(_IMPORT_PROBE)
    deps = module_deps(firmware_dir)
    order = import_order(firmware_dir)
    got: dict[str, int] = {}
    try:
        for name in list(STUB_NAMES) + order:
            pre = list(SYSTEM_MODULES) if name in order else []
            if name in order:
                pre = list(STUB_NAMES) + pre + [m for m in order if m in _closure(deps, name)]
            least: int | None = None
            for pad in PADS:
                r = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={heap}", "_heap_probe.py", str(pad), *pre,
                                    name], cwd=fs, capture_output=True, text=True, timeout=60)
                m = re.search(r"^HEAP (\d+)$", r.stdout, re.M)
                if not m:
                    raise RuntimeError(f"import probe of {name} failed in {fs}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                least = int(m.group(1)) if least is None else min(least, int(m.group(1)))
            got[name] = least or 0
    finally:
        (fs / "_heap_probe.py").unlink()
    return got


def _closure(deps: dict[str, set[str]], name: str) -> set[str]:
    seen: set[str] = set()
    todo = list(deps.get(name, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(deps.get(n, ()))
    return seen


def resident_modules(firmware_dir: Path) -> list[str]:
    """The firmware modules still loaded once a board without BME280 or TLS
    is online: all but the lazy ones, config unless app.py drops it, and
    app unless main.py drops it."""
    drop = {"bme280", "tlsctx", "ota", "otaboot", "otaupd", "otachk", "otahttp", "otarun", "p256"}  # lazy
    if 'sys.modules.pop("config"' in (firmware_dir / "app.py").read_text():
        drop.add("config")
    if 'sys.modules.pop("app"' in (firmware_dir / "main.py").read_text():
        drop.add("app")
    return [n for n in import_order(firmware_dir) if n not in drop]
