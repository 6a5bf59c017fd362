"""The firmware as it goes onto a MicroPython interpreter: `deployed(folder)`.

Every path that puts firmware on MicroPython (`esp32emu flash`, the boards
on the real interpreter, an OTA release build) deploys what this returns;
the CPython boards run the source as it is.

The one change: private names (`_name`: a module-private global, function
or class, a private attribute or method, a private local or argument), and
argument names that nothing but their own function (or a closure in it)
reaches, get names the interpreter has built in, in the deployed copy
only. A `.mpy` (and a `.py` compiled on the board) interns every such name,
and those strings stay in the heap for good: on the 64-bit unix port a
301st string costs a 3.5 KiB pool. A built-in name (`append`, `KeyError`,
...) costs nothing, so the source keeps readable names and the board does
not pay for them. `rename_map(sources)` is the map (to read a board's
traceback). Compiling (mpy-cross, -O3) is the caller's: emulator/board/vm.

The renaming is one consistent map over all the deployed files, applied to
identifiers only (not to strings or comments, so every line stays where it
was): a plain renaming of the program. A private name keeps its name when
anything could reach it other than as an identifier of these files:
- it appears inside a string anywhere (getattr/hasattr, JSON or config
  keys, `__slots__`, `%`-formats, f-strings); docstrings do not count;
- it is not bound in these files (an attribute of a module or object from
  elsewhere: `sys.implementation._mpy`), it is imported from a module that
  is not one of them, or read as an attribute of such a module;
- it is a keyword argument that no function of these files takes;
- it is a module-level `const()` (MicroPython keeps private constants out
  of the module already: a public name would put them back);
- it is dunder or name-mangled (`__x`), or the caller lists it in `keep`.
An argument name keeps its name when it is anywhere else too: a global or
builtin, an attribute, a keyword in a call, a function or class name, in a
string, or declared global/nonlocal (`_not_only_local`). A target name is
never one that appears anywhere in these files (as an identifier or inside
a string), so nothing is shadowed, and never one that MicroPython or
asyncio call on an object by name (`read`, `send`, `keys`, `cancel`, ...).
When a file does not parse, nothing is renamed; when the targets run out,
the rest keep their names.

May import only emulator.validation (see __init__); nothing here imports a
board or runs an interpreter.
"""

from __future__ import annotations

import ast
import functools
import io
import re
import tokenize
from pathlib import Path

# Names every MicroPython build has interned (methods of the core types,
# builtins, exception types, the names in the built-in modules an ESP32
# build has): present in the unix port and in an ESP32 build alike
# (tests/test_deploy.py checks the unix port; a name a build lacks costs
# that build a string, nothing worse). Not here: names
# the runtime or asyncio calls on objects by name (read, write, readinto,
# readline, close, flush, send, throw, cancel, done, keys, items, values,
# get, value, args, errno, data, key, format, ...).
BUILT_IN_NAMES = (
    "append", "extend", "insert", "remove", "reverse", "sort", "popitem", "setdefault", "fromkeys",
    "lstrip", "rstrip", "rsplit", "rfind", "rindex", "partition", "rpartition", "center", "isdigit",
    "isalpha", "isspace", "isupper", "islower", "startswith", "endswith", "splitlines", "difference",
    "difference_update", "intersection", "intersection_update", "isdisjoint", "issubset", "issuperset",
    "symmetric_difference", "symmetric_difference_update", "union", "discard", "to_bytes", "from_bytes",
    "count", "index", "upper", "lower", "replace", "decode", "encode", "strip", "split", "join", "find",
    "update", "copy", "clear", "pop", "add",
    "abs", "all", "any", "bin", "callable", "chr", "dir", "divmod", "hash", "hex", "id", "isinstance",
    "issubclass", "iter", "len", "max", "min", "next", "oct", "ord", "pow", "print", "repr", "round",
    "sorted", "sum", "getattr", "setattr", "hasattr", "delattr", "globals", "locals", "compile", "eval",
    "exec", "input", "open", "bytearray", "memoryview", "frozenset", "staticmethod", "classmethod",
    "property", "reversed", "enumerate", "filter", "map", "zip", "range", "slice", "super", "object",
    "tuple", "type", "list", "dict", "set", "str", "bytes", "int", "float", "bool",
    "KeyboardInterrupt", "StopIteration", "GeneratorExit", "SystemExit", "ZeroDivisionError",
    "NotImplementedError", "OverflowError", "IndexError", "LookupError", "AssertionError",
    "AttributeError", "ImportError", "NameError", "RuntimeError", "EOFError", "UnicodeError", "TypeError",
    "KeyError", "MemoryError", "OSError", "ValueError", "Exception", "BaseException", "StopAsyncIteration",
    # the built-in modules' names: micropython, sys, gc, struct, json, random, errno, select, print()
    "micropython", "opt_level", "mem_info", "qstr_info", "stack_use", "heap_lock", "heap_unlock", "kbd_intr",
    "schedule", "maxsize", "byteorder", "implementation", "platform", "version", "version_info", "modules",
    "path", "argv", "exit", "stdin", "stdout", "stderr", "print_exception", "unpack", "pack", "pack_into",
    "unpack_from", "calcsize", "collect", "enable", "disable", "isenabled", "mem_free", "mem_alloc",
    "threshold", "dumps", "loads", "getrandbits", "randint", "randrange", "choice", "uniform", "seed",
    "EAGAIN", "ETIMEDOUT", "ECONNRESET", "EINPROGRESS", "ENOMEM", "EEXIST", "ENOENT", "EBADF", "EIO", "EINVAL",
    "EPERM", "ECONNABORTED", "ECONNREFUSED", "EHOSTUNREACH", "EALREADY", "ENOBUFS", "ENODEV", "EOPNOTSUPP",
    "EISDIR", "EACCES", "errorcode", "POLLIN", "POLLOUT", "POLLERR", "POLLHUP", "sep", "end", "file",
    # math, binascii, collections, heapq, hashlib, socket
    "sqrt", "sin", "cos", "pi", "ceil", "floor", "exp", "fabs", "fmod", "frexp", "ldexp", "modf", "isnan",
    "isinf", "isfinite", "trunc", "atan2", "tan", "asin", "acos", "atan", "degrees", "radians", "copysign",
    "hexlify", "unhexlify", "a2b_base64", "b2a_base64", "crc32", "deque", "namedtuple", "OrderedDict",
    "popleft", "appendleft", "heapify", "heappush", "heappop", "sha256", "sha1", "digest", "getaddrinfo",
    "AF_INET", "AF_INET6", "SOCK_STREAM", "SOCK_DGRAM", "SOL_SOCKET", "SO_REUSEADDR",
)

_PRIVATE = re.compile(r"_[A-Za-z0-9]\w*\Z")
_WORD = re.compile(r"[A-Za-z_]\w*")
_STRING_TOKENS = {tokenize.STRING} | ({tokenize.FSTRING_MIDDLE} if hasattr(tokenize, "FSTRING_MIDDLE") else set())


def deployed(folder: Path, keep: frozenset[str] = frozenset()) -> dict[str, bytes]:
    """file name -> the text to put on the board, for every `*.py` of `folder`
    (the same sources again: from a cache, as every VM board's boot asks)."""
    return dict(_deployed(tuple((p.name, p.read_text()) for p in sorted(Path(folder).glob("*.py"))), keep))


@functools.lru_cache(maxsize=8)
def _deployed(sources: tuple[tuple[str, str], ...], keep: frozenset[str]) -> tuple[tuple[str, bytes], ...]:
    return tuple((name, text.encode()) for name, text in shorten(dict(sources), keep).items())


def shorten(sources: dict[str, str], keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """`sources` (file name -> text) with `rename_map(sources, keep)` applied."""
    names = rename_map(sources, keep)
    return {name: _rename(text, names) for name, text in sources.items()} if names else dict(sources)


def rename_map(sources: dict[str, str], keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """Private name (and argument name) -> the built-in name it gets, the same
    in every file ({} when a file does not parse)."""
    try:
        trees = {name: ast.parse(text, name) for name, text in sources.items()}
    except SyntaxError:
        return {}
    modules = {Path(name).stem for name in sources}
    bound: set[str] = set()
    params: set[str] = set()
    unsafe: set[str] = set(keep)
    words: set[str] = set()
    for name, text in sources.items():
        words |= _identifiers(text)
        unsafe |= _words_in_strings(text, _docstrings(trees[name]))
        _scan(trees[name], modules, bound, params, unsafe)
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg and node.arg not in params:
                unsafe.add(node.arg)
    private = sorted(n for n in bound if _PRIVATE.match(n) and not n.startswith("__") and n not in unsafe)
    words |= unsafe
    local = set(params)
    for tree in trees.values():
        local -= _not_only_local(tree)
    arguments = sorted(n for n in local - unsafe - set(private) if not n.startswith("__") and n not in ("self", "cls"))
    targets = [t for t in BUILT_IN_NAMES if t not in words]
    return dict(zip(private + arguments, targets))


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _not_only_local(tree: ast.Module) -> set[str]:
    """Names that are somewhere more than a function's own argument or local
    (or a closure's): a global or builtin, an attribute, a keyword, a
    function or class name, declared global. An argument name outside this
    set is reached only inside the functions that bind it."""
    out: set[str] = set()

    def visit(node: ast.AST, scopes: list[set[str]]) -> None:
        if isinstance(node, _SCOPES):
            a = node.args
            names = {x.arg for x in a.posonlyargs + a.args + a.kwonlyargs} | {x.arg for x in (a.vararg, a.kwarg) if x}
            body = node.body if isinstance(node.body, list) else [node.body]
            for sub in body:
                for n in ast.walk(sub):
                    if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load):
                        names.add(n.id)
                    elif isinstance(n, ast.ExceptHandler) and n.name:
                        names.add(n.name)
            for d in a.defaults + [d for d in a.kw_defaults if d is not None]:
                visit(d, scopes)
            if not isinstance(node, ast.Lambda):
                out.add(node.name)
                for d in node.decorator_list:
                    visit(d, scopes)
            for sub in body:
                visit(sub, scopes + [names])
            return
        if isinstance(node, ast.ClassDef):
            out.add(node.name)
            for sub in node.body:  # the class body is not a function scope
                visit(sub, [])
            return
        if isinstance(node, (ast.Global, ast.Nonlocal)):
            out.update(node.names)
        elif isinstance(node, ast.Name) and not any(node.id in s for s in scopes):
            out.add(node.id)
        elif isinstance(node, ast.ExceptHandler) and node.name and not scopes:
            out.add(node.name)
        elif isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            out.add(node.arg)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out.update(n for alias in node.names for n in (alias.asname or alias.name).split("."))
        for child in ast.iter_child_nodes(node):
            visit(child, scopes)

    visit(tree, [])
    return out


def _scan(tree: ast.Module, modules: set[str], bound: set[str], params: set[str], unsafe: set[str]) -> None:
    external: set[str] = set()  # names bound to modules that are not these files
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            source = node.module if isinstance(node, ast.ImportFrom) else None
            for alias in node.names:
                top = (source or alias.name).split(".")[0]
                ours = top in modules and not getattr(node, "level", 0)
                unsafe.update(alias.name.split("."))
                unsafe.update((source or "").split("."))
                if ours:
                    unsafe.discard(alias.name)
                    bound.add(alias.asname or alias.name)
                else:
                    local = alias.asname or alias.name.split(".")[0]
                    external.add(local)
                    unsafe.add(local)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
            params.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            bound.add(node.id)
        elif isinstance(node, ast.Attribute) and not isinstance(node.ctx, ast.Load):
            bound.add(node.attr)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in external:
            unsafe.add(node.attr)
    for node in tree.body:
        if isinstance(node, ast.Assign) and _is_const(node.value):
            unsafe.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and node.value is not None and _is_const(node.value):
            if isinstance(node.target, ast.Name):
                unsafe.add(node.target.id)


def _is_const(value: ast.expr) -> bool:
    f = value.func if isinstance(value, ast.Call) else None
    return (isinstance(f, ast.Name) and f.id == "const") or (isinstance(f, ast.Attribute) and f.attr == "const")


def _docstrings(tree: ast.Module) -> set[tuple[int, int]]:
    """Where each docstring starts (line, column)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                found.add((first.lineno, first.col_offset))
    return found


def _tokens(text: str) -> list[tokenize.TokenInfo]:
    return list(tokenize.generate_tokens(io.StringIO(text).readline))


def _identifiers(text: str) -> set[str]:
    """Every identifier and every word inside a string of `text`."""
    out = set()
    for tok in _tokens(text):
        if tok.type == tokenize.NAME:
            out.add(tok.string)
        elif tok.type in _STRING_TOKENS:
            out.update(_WORD.findall(tok.string))
    return out


def _words_in_strings(text: str, docstrings: set[tuple[int, int]]) -> set[str]:
    return {w for tok in _tokens(text) if tok.type in _STRING_TOKENS and tok.start not in docstrings
            for w in _WORD.findall(tok.string)}


def _rename(text: str, names: dict[str, str]) -> str:
    """`text` with each NAME token in `names` replaced; every other character as it was."""
    lines = text.splitlines(keepends=True)
    edits: dict[int, list[tuple[int, int, str]]] = {}
    for tok in _tokens(text):
        if tok.type == tokenize.NAME and tok.string in names:
            (row, col), (_, end) = tok.start, tok.end
            edits.setdefault(row - 1, []).append((col, end, names[tok.string]))
    for row, spans in edits.items():
        line = lines[row]
        for col, end, new in sorted(spans, reverse=True):
            line = line[:col] + new + line[end:]
        lines[row] = line
    return "".join(lines)
