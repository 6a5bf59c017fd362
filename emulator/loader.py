"""Loading firmware into emulated boards.

`FirmwareImage` compiles every ``firmware/*.py`` file once per process; each
board then executes those shared code objects in a module table of its own
(`BoardModules`), whose builtins route ``import``, ``open`` and ``print`` to
that board. Nothing here knows about MQTT or about any particular fake.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import sys
import types
from pathlib import Path
from typing import Callable

FIRMWARE_DIR = Path(__file__).resolve().parent.parent / "firmware"

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

# CPython modules that behave like their MicroPython namesakes closely enough
# to be shared by every board.
PASSTHROUGH = frozenset({"json", "struct", "binascii", "hashlib", "errno", "collections", "math", "re", "io", "array"})


# Names whose use makes a module board-specific even if it imports nothing
# board-specific: they reach the board's console, filesystem or importer.
_BOARD_BUILTINS = frozenset({"print", "open", "input", "__import__", "globals", "exec", "eval", "compile"})


class _ConstOnly:
    """The `micropython` module as the pure modules see it: just const()."""

    __name__ = "micropython"

    @staticmethod
    def const(x):
        return x


class FirmwareImage:
    """The compiled firmware, shared by every board in the process.

    Pure modules (they import only other pure modules, `micropython` and the
    passthrough standard modules, and reach no board builtins such as print
    or open) are executed once and their module object is shared by every
    board: the firmware gates already forbid module-level mutable state, so
    this is invisible to the firmware and saves each board its own copy of
    every class and function in the MQTT core.
    """

    def __init__(self, directory: Path | str = FIRMWARE_DIR):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"firmware directory not found: {self.directory}")
        self.sources: dict[str, str] = {}
        self.code: dict[str, types.CodeType] = {}
        for path in sorted(self.directory.glob("*.py")):
            name = path.stem
            source = path.read_text()
            self.sources[name] = source
            self.code[name] = compile(source, path.name, "exec", dont_inherit=True)
        self.pure = _pure_modules(self.sources)
        self._shared: dict[str, object] = {}
        self._shared_builtins = dict(builtins.__dict__)
        self._shared_builtins["__import__"] = self._import_shared

    def files(self) -> dict[str, bytes]:
        return {f"{name}.py": src.encode() for name, src in self.sources.items()}

    def shared_module(self, name: str) -> object:
        mod = self._shared.get(name)
        if mod is None:
            mod = types.ModuleType(name)
            mod.__dict__["__builtins__"] = self._shared_builtins
            mod.__file__ = self.code[name].co_filename
            self._shared[name] = mod
            try:
                exec(self.code[name], mod.__dict__)
            except BaseException:
                del self._shared[name]
                raise
        return mod

    def _import_shared(self, name, globals=None, locals=None, fromlist=(), level=0):
        name = ALIASES.get(name, name)
        if name in self.pure:
            return self.shared_module(name)
        if name == "micropython":
            return _ConstOnly
        if name in PASSTHROUGH:
            return sys.modules.get(name) or __import__(name)
        raise ImportError(f"no module named '{name}'")


_CONSTANT_NAME = re.compile(r"_?[A-Z][A-Z0-9_]*$")
_MUTABLE = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp, ast.Call)


def _holds_state(tree: ast.Module) -> bool:
    """True if the module could keep state of its own: `global`, a lowercase
    module-level name, or a mutable container at module or class level."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            return True
    for body, at_module in [(tree.body, True)] + [
        (n.body, False) for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
    ]:
        for stmt in body:
            if isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                value = stmt.value
                if isinstance(value, _MUTABLE) and not _is_const_call(value):
                    return True
                if at_module and not all(isinstance(t, ast.Name) and _CONSTANT_NAME.match(t.id) for t in targets):
                    return True
    return False


def _is_const_call(value: ast.expr) -> bool:
    return isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "const"


def _imports_and_names(source: str) -> tuple[set[str], set[str], bool]:
    """What a module imports, which names it uses, and whether it holds state."""
    tree = ast.parse(source)
    imports: set[str] = set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imports.update(ALIASES.get(a.name, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imports.add(ALIASES.get(node.module, node.module))
        elif isinstance(node, ast.Name):
            names.add(node.id)
    return imports, names, _holds_state(tree)


def _pure_modules(sources: dict[str, str]) -> frozenset[str]:
    info = {}
    for name, source in sources.items():
        try:
            info[name] = _imports_and_names(source)
        except SyntaxError:
            continue
    pure = {
        n
        for n, (_, names, stateful) in info.items()
        if not stateful and not names & _BOARD_BUILTINS and n not in ("boot", "main")
    }
    changed = True
    while changed:  # drop every module that imports something not pure
        changed = False
        for n in list(pure):
            imports = info[n][0]
            if any(m not in pure and m not in PASSTHROUGH and m != "micropython" for m in imports):
                pure.discard(n)
                changed = True
    return frozenset(pure)


class BoardModules:
    """One board's module table and builtins.

    Lookup order for ``import X``: modules already loaded on this board, a
    ``X.py`` in the board's flash directory that differs from the image (a
    user copied it there), the shared firmware image, ``/lib/X.py`` on the
    flash, the board's fakes, the passthrough standard modules. Anything else raises ImportError like
    MicroPython does.
    """

    def __init__(
        self,
        image: FirmwareImage,
        flash_dir: Path,
        fakes: dict[str, Callable[[], object]],
        print_fn: Callable[..., None],
        open_fn: Callable[..., object],
    ):
        self.image = image
        self.flash_dir = flash_dir
        self.fakes = fakes
        self.modules: dict[str, object] = {}
        self.builtins = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        self.builtins["print"] = print_fn
        self.builtins["open"] = open_fn
        self.builtins.pop("input", None)

    def _overridden(self, name: str) -> bool:
        """True when the board's flash holds its own, different copy of `name`."""
        source = _read(self.flash_dir / f"{name}.py")
        return source is not None and source != self.image.sources.get(name)

    def _code_for(self, name: str) -> types.CodeType | None:
        # The board's sys.path is ['', '.frozen', '/lib']: the flash root
        # (where the image's files live), then /lib (where `mip` installs).
        source = _read(self.flash_dir / f"{name}.py")
        if source is not None:
            if self.image.sources.get(name) == source:
                return self.image.code[name]
            return compile(source, f"{name}.py", "exec", dont_inherit=True)
        if name in self.image.code:
            return self.image.code[name]
        source = _read(self.flash_dir / "lib" / f"{name}.py")
        if source is not None:
            return compile(source, f"lib/{name}.py", "exec", dont_inherit=True)
        return None

    def _import(self, name, globals=None, locals=None, fromlist=(), level=0):
        if level:
            raise ImportError("relative import not supported")
        name = ALIASES.get(name, name)
        mod = self.modules.get(name)
        if mod is None:
            mod = self.load(name)
        if fromlist:
            for attr in fromlist:
                if not hasattr(mod, attr):
                    raise ImportError(f"can't import name {attr}")
        return mod

    def load(self, name: str) -> object:
        if name in self.image.pure and not self._overridden(name):
            mod = self.image.shared_module(name)
            self.modules[name] = mod
            return mod
        code = self._code_for(name) if "." not in name else None
        if code is not None:
            return self.exec_module(name, code)
        factory = self.fakes.get(name)
        if factory is not None:
            mod = factory()
        elif name in PASSTHROUGH:
            mod = sys.modules.get(name) or __import__(name)
        else:
            raise ImportError(f"no module named '{name}'")
        self.modules[name] = mod
        return mod

    def exec_module(self, name: str, code: types.CodeType) -> types.ModuleType:
        mod = types.ModuleType(name)
        mod.__dict__["__builtins__"] = self.builtins
        mod.__file__ = code.co_filename
        self.modules[name] = mod
        try:
            exec(code, mod.__dict__)
        except BaseException:
            self.modules.pop(name, None)
            raise
        return mod

    def run_script(self, filename: str) -> bool:
        """Run ``boot.py``/``main.py`` as ``__main__``; False if the file is absent."""
        name = filename[:-3]
        code = self._code_for(name)
        if code is None:
            return False
        glb = {"__builtins__": self.builtins, "__name__": "__main__", "__file__": filename}
        exec(code, glb)
        return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def firmware_frames(tb) -> list[tuple[str, int, str]]:
    """The traceback frames that belong to firmware (not emulator) code."""
    frames = []
    while tb is not None:
        co = tb.tb_frame.f_code
        if not os.path.isabs(co.co_filename) and co.co_filename.endswith(".py"):
            frames.append((co.co_filename, tb.tb_lineno, co.co_name))
        tb = tb.tb_next
    return frames


def format_micropython_exception(exc: BaseException) -> str:
    """Render like MicroPython's sys.print_exception."""
    lines = ["Traceback (most recent call last):"]
    for filename, lineno, func in firmware_frames(exc.__traceback__):
        lines.append(f'  File "{filename}", line {lineno}, in {func}')
    msg = str(exc)
    lines.append(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)
    return "\n".join(lines)
