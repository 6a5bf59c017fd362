"""The layout of `emulator/` stays as docs/architecture.md draws it.

Every module's imports of `emulator.*` are read with `ast` (also those inside
functions and under `if TYPE_CHECKING:`: a dependency is a dependency) and
checked against LAYERS, the one statement of the allowed direction:

- a unit (a subpackage of `emulator`, or a top-level module) may import
  itself and the units of LOWER layers only -- never a higher layer, never a
  peer in its own layer;
- no import circle between modules (so none between subpackages either);
- every unit is in LAYERS and in the folder map of docs/architecture.md,
  and every `emulator/...` path that document names exists;
- a subpackage's `__init__.py` has a docstring (what it holds, what it must
  not import) and imports nothing;
- a module over MAX_LINES lines says why on a `# size: <reason>` line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "emulator"
ARCHITECTURE = REPO / "docs" / "architecture.md"
MAX_LINES = 600

# Lowest first. A unit may import units of lower layers only (see the module doc).
LAYERS: list[set[str]] = [
    {"validation", "rng"},  # base: what users type; seeded randomness
    {"net", "firmware", "broker"},  # the link model; the firmware folder; Mosquitto and the PKI
    {"board", "observe"},  # one emulated board (both backends); paho observers
    {"run", "dashboard", "ota"},  # `esp32emu run` and `broker`, scenarios, stopping; the web backend on an observer; OTA releases and rollouts
    {"fleet", "testing", "realboard"},  # thousands of boards; the pytest plugin; real boards
    {"conformance", "cluster"},  # `esp32emu conformance` (boards on the testing harness against any broker); a fleet's groups as Ray actors
    {"cli"},  # the command line: thin, argparse only
    {"__main__"},  # `python -m emulator`
]
# Not host code: MicroPython modules the VM boards run (they never import emulator).
NOT_HOST = ("board/vm/shims/",)


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(NOT_HOST) or rel.startswith(("_firmware/", "_templates/")):  # a built tree's data
            continue
        parts = ["emulator", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def unit(module: str) -> str:
    """`emulator.board.vm.board` -> "board"; `emulator` itself -> ""."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(module: str, path: Path) -> list[tuple[str, int]]:
    """The emulator modules `module` imports, with the line of each import."""
    is_package = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from emulator.x import y`: y is a module when emulator.x.y is one
            names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for name in names:
            if name == "emulator" or name.startswith("emulator."):
                while name not in MODULES and "." in name:  # `import emulator.x.y` of an attribute
                    name = name.rsplit(".", 1)[0]
                if name != module:
                    out.append((name, node.lineno))
    return out


GRAPH = {m: imports(m, p) for m, p in MODULES.items()}


def layer_of(u: str) -> int:
    for i, layer in enumerate(LAYERS):
        if u in layer:
            return i
    raise KeyError(u)


def test_every_unit_has_a_layer():
    units = {unit(m) for m in MODULES} - {""}
    missing = sorted(u for u in units if not any(u in layer for layer in LAYERS))
    assert not missing, f"add {missing} to LAYERS in tests/test_layering.py and to docs/architecture.md"
    stale = sorted(u for layer in LAYERS for u in layer if u not in units)
    assert not stale, f"LAYERS names {stale}, which emulator/ does not have"


def test_no_import_goes_up_or_sideways():
    wrong = []
    for module, deps in GRAPH.items():
        u = unit(module)
        for dep, line in deps:
            d = unit(dep)
            if d == u or dep == "emulator":
                continue
            if u == "" or layer_of(d) >= layer_of(u):
                wrong.append(f"{MODULES[module].relative_to(REPO)}:{line}: {module} imports {dep} "
                             f"({u or 'emulator'} may not import {d})")
    assert not wrong, "imports against the layering (tests/test_layering.py LAYERS):\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_between_modules():
    graph = {m: {d for d, _ in deps} for m, deps in GRAPH.items()}
    assert _cycles(graph) == []


def test_no_import_circle_between_subpackages():
    graph: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        graph.setdefault(unit(m), set()).update(unit(d) for d, _ in deps if unit(d) != unit(m))
    assert _cycles(graph) == []


def test_the_checker_sees_what_it_must():
    # the checker itself: a function-local import, a relative import and a cycle are all seen
    assert ("emulator.board.vm.interpreter", 0) in [(d, 0) for d, _ in GRAPH["emulator.board.backends"]]
    assert any(d == "emulator.validation" for d, _ in GRAPH["emulator.board.vm.interpreter"])
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("board") > layer_of("net") and layer_of("fleet") > layer_of("board")


def test_subpackage_inits_are_light_and_say_their_rules():
    for module, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        doc = ast.get_docstring(tree)
        assert doc, f"{path.relative_to(REPO)}: say in a docstring what the package holds and must not import"
        if module.count(".") == 1:  # emulator.board, emulator.net...: the rule of the layer
            assert "may import" in doc.lower(), f"{path.relative_to(REPO)}: the docstring says what it may import"
        stmts = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert not stmts, f"{path.relative_to(REPO)}:{stmts[0].lineno}: no imports at package import"


def test_long_modules_say_why():
    long = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES and not any(line.lstrip().startswith("# size:") for line in lines):
            long.append(f"{path.relative_to(REPO)}: {len(lines)} lines (split it by job, or say why on a '# size:' line)")
    assert not long, "\n".join(long)


def test_the_folder_map_matches_the_tree():
    text = ARCHITECTURE.read_text()
    named = set(re.findall(r"`(emulator/[\w/.]*)`", text))
    missing_paths = sorted(p for p in named if not (REPO / p).exists())
    assert not missing_paths, f"docs/architecture.md names paths that do not exist: {missing_paths}"
    folders = {f"emulator/{p.parent.relative_to(PACKAGE).as_posix()}/" for m, p in MODULES.items()
               if p.name == "__init__.py" and m != "emulator"}
    top = {f"emulator/{p.name}" for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    unmapped = sorted((folders | top) - named)
    assert not unmapped, f"add to the folder map in docs/architecture.md: {unmapped}"
