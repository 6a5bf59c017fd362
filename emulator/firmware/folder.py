"""Which firmware folder a command boots, and whether it can boot at all.

`resolve(flag)` is the one place every command (`run`, `fleet`, `serial`,
`flash`) picks its firmware: `--firmware DIR`, else `./firmware` when the
current folder has one with a `main.py`, else the firmware bundled with
esp32emu. The pytest plugin takes its folder from the marker, option or ini
key and falls back on the same `bundled("firmware")`.

Bundled files: in a wheel the build (setup.py) copies the repository's
`firmware/`, `examples/tests/` and `examples/ci/` into this package
(`_firmware/`, `_templates/...`); in a source checkout (an editable install,
or the repository on sys.path) they are read where they are, so the
repository's folders stay the only copy.

`check(path)` refuses, with one line naming the file and line, a folder
that a board could not boot: no `main.py`, a file CPython cannot compile, or
an import that cannot resolve -- a firmware module that does not exist or
does not define the imported name, or (given `modules`) a module the board
does not have. Imports inside `try: ... except ImportError` are optional.
`pick_firmware` is that choice for a command: said on its first line, a
folder that cannot boot a UsageError. `KEEP_PY`: the files that stay source
on a board (`esp32emu flash --mpy` and the VM boards compile the rest).
No heavy imports here: `loader` imports this module.
"""

from __future__ import annotations

import ast
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from emulator.validation import UsageError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # emulator/
CHECKOUT_DIR = PACKAGE_DIR.parent  # the repository, when running from a source checkout
# repository folder -> where the wheel carries it (setup.py copies them at build time)
BUNDLED = {
    "firmware": "_firmware",
    "examples/tests": "_templates/tests",
    "examples/ci": "_templates/ci",
}
# MicroPython's u-prefixed aliases.
ALIASES = {
    "uasyncio": "asyncio",
    "utime": "time",
    "uos": "os",
    "ujson": "json",
    "ustruct": "struct",
    "usys": "sys",
    "urandom": "random",
    "ubinascii": "binascii",
    "uhashlib": "hashlib",
    "uerrno": "errno",
    "ucollections": "collections",
    "ussl": "ssl",
    "uselect": "select",
}

# What optional imports are guarded by.
_GUARDS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


class FirmwareError(ValueError):
    """The firmware folder cannot boot; the message is one line naming the file (and line)."""


def bundled(name: str = "firmware") -> Path:
    """A folder that ships with esp32emu (a key of BUNDLED): the wheel's copy
    inside the package, else the source checkout's own folder."""
    packaged = PACKAGE_DIR / BUNDLED[name]
    if packaged.is_dir():
        return packaged
    return CHECKOUT_DIR / name


def bundled_firmware() -> Path:
    return bundled("firmware")


FIRMWARE_DIR = bundled_firmware()  # the project's firmware/, or the wheel's copy of it
KEEP_PY = ("boot.py", "main.py")  # MicroPython runs these only as source: never compiled to .mpy


@dataclass(frozen=True)
class Firmware:
    path: Path
    version: str | None  # FW_VERSION, when a module defines it
    origin: str  # "--firmware", "./firmware" or "bundled"

    def line(self, verb: str = "booting") -> str:
        """The first line each command prints: which firmware, which version, and why that one."""
        version = f"FW_VERSION {self.version}" if self.version else "no FW_VERSION found"
        why = {
            "--firmware": "from --firmware",
            "./firmware": "./firmware in the current folder",
            "bundled": "bundled with esp32emu",
        }.get(self.origin, self.origin)
        return f"esp32emu: {verb} firmware {self.path} ({version}; {why})"


def resolve(flag: Path | str | None = None, *, cwd: Path | None = None, modules: frozenset[str] | None = None) -> Firmware:
    """The firmware a command boots: `flag`, else ./firmware (with a main.py),
    else the bundled one; checked (FirmwareError when it cannot boot)."""
    if flag:
        path, origin = (Path(cwd or os.getcwd()) / Path(flag).expanduser()).resolve(), "--firmware"
    elif (Path(cwd or os.getcwd()) / "firmware" / "main.py").is_file():
        path, origin = (Path(cwd or os.getcwd()) / "firmware").resolve(), "./firmware"
    else:
        path, origin = bundled_firmware(), "bundled"
    check(path, modules)
    return Firmware(path, fw_version(path), origin)


def fw_version(path: Path) -> str | None:
    """The string a module-level `FW_VERSION = "..."` sets (the firmware's
    birth reports it as `fw`), from the first file that has one."""
    for src in sorted(Path(path).glob("*.py")):
        try:
            tree = ast.parse(src.read_text())
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError):
            continue
        for node in tree.body:
            target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else getattr(node, "target", None)
            if (isinstance(target, ast.Name) and target.id == "FW_VERSION" and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                return node.value.value
    return None


def check(path: Path, modules: frozenset[str] | None = None) -> None:
    """FirmwareError unless `path` can boot: a folder with main.py whose
    .py files all compile and whose imports resolve (see the module doc).
    `modules`: the modules the board provides besides the firmware's own
    (None: not checked, e.g. a real board, which has more than we know)."""
    path = Path(path)
    if not path.exists():
        raise FirmwareError(f"firmware folder {path} does not exist")
    if not path.is_dir():
        raise FirmwareError(f"firmware folder {path} is not a folder")
    if not (path / "main.py").is_file():
        raise FirmwareError(f"{path / 'main.py'}: missing (a board runs main.py at boot)")
    trees: dict[str, tuple[Path, ast.Module]] = {}
    for src in sorted(path.glob("*.py")):
        try:
            source = src.read_text()
        except UnicodeDecodeError as e:
            raise FirmwareError(f"{src}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        try:
            code = compile(source, str(src), "exec", flags=ast.PyCF_ONLY_AST, dont_inherit=True)
            compile(code, str(src), "exec", dont_inherit=True)  # what the AST alone does not catch
        except SyntaxError as e:
            raise FirmwareError(f"{src}:{e.lineno}: {type(e).__name__}: {e.msg}") from None
        except ValueError as e:  # e.g. a NUL byte
            raise FirmwareError(f"{src}: {e}") from None
        trees[src.stem] = (src, code)
    defined = {name: _top_level_names(tree) for name, (_, tree) in trees.items()}
    for name, (src, tree) in trees.items():
        for node, guarded in _imports(tree.body):
            problem = _import_problem(node, defined, modules, path)
            if problem and not guarded:
                raise FirmwareError(f"{src}:{node.lineno}: {problem}")


def pick_firmware(
    flag: Path | str | None,
    modules: frozenset[str] | None = None,
    *,
    verb: str = "booting",
    say=lambda msg: print(msg, file=sys.stderr, flush=True),
) -> Path:
    """The firmware folder a command uses (`--firmware`, else ./firmware with a
    main.py, else the bundled one: resolve), said on the
    command's first line with its FW_VERSION. One that cannot boot -- no
    main.py, a file that does not compile, an import that does not resolve
    (given the board's `modules`, also a module the board lacks:
    emulator.board.backends.board_modules) -- is
    a UsageError (exit 2) naming the file and line."""
    try:
        fw = resolve(flag, modules=modules)
    except FirmwareError as e:
        raise UsageError(str(e)) from None
    say(fw.line(verb))
    return fw.path


# -- the import check -------------------------------------------------------------------------


def _top_level_names(tree: ast.Module) -> set[str]:
    """Names a module defines at its top level (also inside if/try/with blocks there)."""
    names: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(a.name == "*" for a in node.names):
                names.add("*")
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for field in ("body", "orelse", "finalbody"):
                todo.extend(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                todo.extend(handler.body)
    return names


def _is_guard(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in _GUARDS for t in types)


def _imports(nodes, guarded: bool = False):
    """Every import statement in `nodes` (and below), with whether a
    try/except ImportError wraps it."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, guarded
        elif isinstance(node, ast.Try):
            yield from _imports(node.body, guarded or any(_is_guard(h) for h in node.handlers))
            yield from _imports([*node.handlers, *node.orelse, *node.finalbody], guarded)
        else:
            yield from _imports(ast.iter_child_nodes(node), guarded)


def _import_problem(node: ast.Import | ast.ImportFrom, defined: dict[str, set[str]],
                    modules: frozenset[str] | None, folder: Path) -> str | None:
    if isinstance(node, ast.ImportFrom) and node.level:
        return "relative import: the firmware folder is flat (import the module by its name)"
    wanted = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
    for full in wanted:
        top = full.split(".")[0]
        name = ALIASES.get(top, top)
        if name in defined:
            if isinstance(node, ast.ImportFrom) and "*" not in defined[name]:
                for alias in node.names:
                    if alias.name != "*" and alias.name not in defined[name]:
                        return f"cannot import name {alias.name!r} from {name} ({name}.py defines no {alias.name})"
            continue
        if (folder / "lib" / f"{name}.py").is_file() or (folder / "lib" / name).is_dir():
            continue
        if modules is not None and name not in modules:
            return (f"no module named {top!r}: neither a file of the firmware folder nor a module "
                    f"the emulated board has")
    return None
