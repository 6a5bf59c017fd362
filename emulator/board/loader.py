"""Loading firmware into emulated boards.

`FirmwareImage` compiles every ``firmware/*.py`` file once per process; each
board has a module table of its own (`BoardModules`), whose builtins route
``import``, ``open`` and ``print`` to that board.

Stateless firmware modules (no `global`, no lowercase module-level names, no
mutable module or class attributes — what the firmware gates demand anyway)
are executed once and shared by every board: a module-level ``import
machine`` in them binds a `ModuleProxy` that resolves, at each use, to the
module of the board whose code is running (a context variable set in every
task and greenlet of that board). Modules with state, or with a module-level
``from <board module> import name``, are executed per board. At 10,000
boards this is the difference between every board carrying its own copy of
every firmware class and function, and none doing so.

Nothing here knows about MQTT or about any particular fake.
"""

from __future__ import annotations

import ast
import builtins
import contextvars
import dis
import os
import re
import sys
import types
from pathlib import Path
from typing import Callable

from emulator.firmware.folder import ALIASES, FIRMWARE_DIR

# CPython modules that behave like their MicroPython namesakes closely enough
# to be shared by every board.
PASSTHROUGH = frozenset({"json", "struct", "binascii", "hashlib", "errno", "collections", "math", "re", "io", "array"})


class _ConstOnly:
    """The `micropython` module as the pure modules see it: just const()."""

    __name__ = "micropython"

    @staticmethod
    def const(x):
        return x


_CURRENT: contextvars.ContextVar["BoardModules"] = contextvars.ContextVar("esp32emu_board_modules")


def current_modules() -> "BoardModules":
    """The module table of the board whose code is running."""
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError("firmware code ran outside any emulated board") from None


def _board_import(name, globals=None, locals=None, fromlist=(), level=0):
    return current_modules()._import(name, globals, locals, fromlist, level)


def _board_print(*args, **kwargs):
    return current_modules().print_fn(*args, **kwargs)


def _board_open(*args, **kwargs):
    return current_modules().open_fn(*args, **kwargs)


class ModuleProxy:
    """Stands for a board-specific module inside a shared module.

    A fake module's class may name, in `SHARED`, attributes that are the same
    object on every board (`time.ticks_diff`, `asyncio.sleep_ms`): the first
    lookup of one keeps it on the proxy, so shared firmware code reaches it
    at plain attribute speed instead of through `__getattr__` (the board's
    module looked up by context variable), a good part of a board's idle
    cost at 10,000 boards."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        # current_modules().module(name), inlined: shared firmware code goes
        # through here for every `time.ticks_ms()`, thousands of times a second
        mods = _CURRENT.get(None)
        if mods is None:
            mods = current_modules()  # raises, saying why
        mod = mods.modules.get(self._name)
        if mod is None:
            mod = mods.load(self._name)
        value = getattr(mod, attr)
        if attr in getattr(type(mod), "SHARED", ()):
            self.__dict__[attr] = value
        return value

    def __repr__(self) -> str:
        return f"<module '{self._name}' of the running board>"


class FirmwareImage:
    """The compiled firmware, shared by every board in the process."""

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
        self.imports, self.shareable = _analyse(self.sources)
        self._shared: dict[str, object] = {}
        self._exec_depth = 0  # > 0 while a shared module's top level runs
        self._shared_builtins = dict(builtins.__dict__)
        self._shared_builtins.pop("input", None)
        self._shared_builtins["__import__"] = self._import_shared
        self._shared_builtins["print"] = _board_print
        self._shared_builtins["open"] = _board_open
        # The builtins of every board's own modules (boot.py, main.py, a
        # module a board carries in its flash): one table for all, whose
        # `__import__`, `print` and `open` are the running board's.
        self.board_builtins = dict(builtins.__dict__)
        self.board_builtins.pop("input", None)
        self.board_builtins["__import__"] = _board_import
        self.board_builtins["print"] = _board_print
        self.board_builtins["open"] = _board_open

    def files(self) -> dict[str, bytes]:
        return {f"{name}.py": src.encode() for name, src in self.sources.items()}

    def depends_on(self, name: str) -> set[str]:
        """Every firmware module `name` imports, directly or not."""
        seen: set[str] = set()
        todo = [name]
        while todo:
            for dep in self.imports.get(todo.pop(), ()):
                if dep in self.code and dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen

    def shared_module(self, name: str) -> object:
        mod = self._shared.get(name)
        if mod is None:
            mod = types.ModuleType(name)
            mod.__dict__["__builtins__"] = self._shared_builtins
            mod.__file__ = self.code[name].co_filename
            self._shared[name] = mod
            self._exec_depth += 1
            try:
                exec(self.code[name], mod.__dict__)
            except BaseException:
                del self._shared[name]
                raise
            finally:
                self._exec_depth -= 1
        return mod

    def _import_shared(self, name, globals=None, locals=None, fromlist=(), level=0):
        name = ALIASES.get(name, name)
        if self._exec_depth == 0:
            # An import inside a function of a shared module, at run time:
            # the running board's module (one already loaded, the common
            # case, straight from its table: sensors.py imports esp32 for
            # every reading).
            mods = _CURRENT.get(None)
            if mods is not None and not fromlist and not level:
                mod = mods.modules.get(name)
                if mod is not None:
                    return mod
            return current_modules()._import(name, globals, locals, fromlist, level)
        if name in self.shareable:
            return self.shared_module(name)
        if name == "micropython":
            return _ConstOnly
        if name in PASSTHROUGH:
            return sys.modules.get(name) or __import__(name)
        return ModuleProxy(name)


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


def _module_level_from_imports(tree: ast.Module) -> set[str]:
    """Modules named by `from X import y` outside any function or class."""
    found: set[str] = set()
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(ALIASES.get(node.module, node.module))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    todo.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return found


def _analyse(sources: dict[str, str]) -> tuple[dict[str, set[str]], frozenset[str]]:
    """Each module's imports, and which modules can be shared by all boards."""
    imports: dict[str, set[str]] = {}
    candidates: dict[str, set[str]] = {}
    for name, source in sources.items():
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(ALIASES.get(a.name, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps.add(ALIASES.get(node.module, node.module))
        imports[name] = deps
        if name not in ("boot", "main") and not _holds_state(tree):
            candidates[name] = _module_level_from_imports(tree)
    shareable = set(candidates)
    changed = True
    while changed:  # `from X import y` at module level needs X shared (or constant) too
        changed = False
        for n in list(shareable):
            if any(m not in shareable and m not in PASSTHROUGH and m != "micropython" for m in candidates[n]):
                shareable.discard(n)
                changed = True
    return imports, frozenset(shareable)


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
        self.print_fn = print_fn
        self.open_fn = open_fn
        # Shared by every board; `__import__`, `print`, `open` go to the
        # board whose code runs (the context variable this table sets).
        self.builtins = image.board_builtins
        # The context every task and greenlet of this board runs in.
        self.context = contextvars.copy_context()
        self.context.run(_CURRENT.set, self)

    def _owns(self, name: str) -> bool:
        """Does the flash carry its own copy of `name`, or of a module it
        imports? (Then `name` cannot be the shared one.) Read at the import,
        not at boot: an OTA update installed by main.py before `import app`
        (firmware/otaboot.py recover) counts."""
        try:  # one listing, then only the files that are there are read (a boot of 10,000 boards)
            present = set(os.listdir(self.flash_dir))
        except OSError:
            return False
        for m in (name, *self.image.depends_on(name)):
            if f"{m}.py" in present and _read(self.flash_dir / f"{m}.py") not in (None, self.image.sources[m]):
                return True
        return False

    def module(self, name: str) -> object:
        """The board's module `name`, loading it if needed (for ModuleProxy)."""
        mod = self.modules.get(name)
        return mod if mod is not None else self.load(name)

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
        if _CURRENT.get(None) is not self:
            # Called from outside the board's tasks (a test driving the
            # module table directly): this thread now runs this board's code.
            _CURRENT.set(self)
        if name in self.image.shareable and not self._owns(name):
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


_ENDS_AFTER: dict[tuple[types.CodeType, int], bool] = {}  # (code, offset of the call) -> nothing follows it


def main_ends_in(frame) -> tuple[str, int, str] | None:
    """Where main.py's top level calls the function whose frame is `frame`
    (an emulator fake: `asyncio.run`), if that call is main.py's last act:
    its result dropped, then the script returns, outside any try or with
    block. Then nothing of main.py needs to wait for the call: the board can
    run it without keeping main.py's frame (and the greenlet under it)
    suspended. None otherwise (another script, code after the call, a
    handler around it): the caller keeps main.py waiting."""
    f = frame.f_back
    while f is not None and os.path.isabs(f.f_code.co_filename):  # the fake's own frames
        f = f.f_back
    if f is None or f.f_code.co_filename != "main.py" or f.f_code.co_name != "<module>":
        return None
    if f.f_globals.get("__name__") != "__main__" or f.f_back is None or f.f_back.f_code is not BoardModules.run_script.__code__:
        return None
    key = (f.f_code, f.f_lasti)
    ends = _ENDS_AFTER.get(key)
    if ends is None:
        ends = _ENDS_AFTER[key] = _nothing_after(f.f_code, f.f_lasti)
    return ("main.py", f.f_lineno, "<module>") if ends else None


def _nothing_after(code: types.CodeType, offset: int) -> bool:
    """Does the call at `offset` drop its result and return None next, outside any handler?"""
    bc = dis.Bytecode(code)
    if any(e.start <= offset < e.end for e in bc.exception_entries):
        return False
    after = [i for i in bc if i.offset > offset and i.opname not in ("NOP", "CACHE")]
    ops = [(i.opname, i.argval) for i in after[:3]]
    if ops[:1] != [("POP_TOP", None)]:
        return False
    return ops[1:2] == [("RETURN_CONST", None)] or ops[1:3] == [("LOAD_CONST", None), ("RETURN_VALUE", None)]  # 3.12+ / 3.11


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


def format_micropython_exception(exc: BaseException, outer: tuple[tuple[str, int, str], ...] = ()) -> str:
    """Render like MicroPython's sys.print_exception; `outer`: the frames
    the exception passed through before its traceback began (main.py's
    top level, when `main_ends_in` let it go on outside main.py)."""
    lines = ["Traceback (most recent call last):"]
    for filename, lineno, func in (*outer, *firmware_frames(exc.__traceback__)):
        lines.append(f'  File "{filename}", line {lineno}, in {func}')
    msg = str(exc)
    lines.append(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)
    return "\n".join(lines)
