"""The deploy step (emulator/firmware/deploy.py): private names get built-in
names in the copy that goes onto MicroPython, consistently across files, and
never where something could reach the name other than as an identifier.
Run under CPython (the renamed program must do what the source does) and
checked on the real interpreter (the targets are built in there)."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

from emulator.board.vm.interpreter import micropython_executable
from emulator.firmware.deploy import BUILT_IN_NAMES, deployed, rename_map, shorten
from emulator.firmware.folder import FIRMWARE_DIR

ROOT = Path(__file__).resolve().parent.parent

CODEC = '''\
"""A module docstring that names _buf and _helper: docstrings do not count."""
from micropython import const
import sys

_LIMIT = const(4)  # a private constant: MicroPython keeps it out of the module
_TABLE = {"a": 1}


def _helper(x, _scale=2):
    return x * _scale


class Decoder:
    FIELDS = ("_slot",)  # reached by name: setattr(obj, FIELDS[0], ...)

    def __init__(self):
        self._buf = bytearray(_LIMIT)
        self._pos = 0
        self._slot = 1

    def _advance(self, n):
        self._pos += _helper(n, _scale=1)
        return self._pos

    def by_string(self):
        return getattr(self, "_pos")

    def formatted(self):
        self._label = "pos"
        n = len(self._buf)
        return "%s=%d %s" % (self._label, self._pos, "_label") + f" {n}"

    def __repr__(self):
        return "Decoder"


def outside():
    return sys.implementation._mpy if hasattr(sys.implementation, "_mpy") else 0


def to_json():
    return {"_key": _TABLE["a"]}


def call(f):
    return f(_kw=3)


limit = 5


def scale(x, factor, limit=limit):
    def inner(extra):
        return min(x * factor + extra, limit)
    return inner(len([factor]))


def measure(len=0, size=1):
    return len + size
'''

SESSION = '''\
import codec
from codec import Decoder, _helper


class Session:
    def __init__(self):
        self.decoder = Decoder()

    def step(self):
        d = self.decoder
        d._advance(2)  # another module reads the decoder's private state
        return d._pos, _helper(3), codec._TABLE["a"], codec._LIMIT, codec.scale(1, 3), codec.measure(2, size=3)
'''


def _sources():
    return {"codec.py": CODEC, "session.py": SESSION}


def _load(sources: dict[str, str]) -> dict[str, types.ModuleType]:
    """Run `sources` as modules under CPython (const from a stand-in micropython)."""
    mods: dict[str, types.ModuleType] = {}
    saved = {n: sys.modules.get(n) for n in ("micropython", "codec", "session")}
    try:
        sys.modules["micropython"] = types.SimpleNamespace(const=lambda x: x)  # type: ignore[assignment]
        for name in ("codec.py", "session.py"):
            mod = types.ModuleType(name[:-3])
            sys.modules[mod.__name__] = mod
            exec(compile(sources[name], name, "exec"), mod.__dict__)
            mods[mod.__name__] = mod
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m
    return mods


def test_private_names_are_renamed_consistently_and_the_program_still_runs():
    names = rename_map(_sources())
    # renamed: private globals, functions, attributes, methods, arguments, across both files
    assert {"_TABLE", "_helper", "_buf", "_advance", "_scale"} <= names.keys()
    assert all(new in BUILT_IN_NAMES for new in names.values())
    assert len(set(names.values())) == len(names)
    out = shorten(_sources())
    assert "_advance" not in out["session.py"] and "_helper" not in out["codec.py"].split('"""')[2]
    before, after = _load(_sources()), _load(out)
    for mods in (before, after):
        s = mods["session"].Session()
        assert s.step() == (2, 6, 1, 4, 4, 5)
        assert s.decoder.by_string() == 2 and s.decoder.formatted() == "pos=2 _label 4"
        assert mods["codec"].to_json() == {"_key": 1}
        assert mods["codec"].call(lambda **kw: kw) == {"_kw": 3}
        assert mods["codec"].outside() == 0


def test_names_reachable_other_than_as_identifiers_keep_their_names():
    names = rename_map(_sources())
    assert "_pos" not in names  # getattr(self, "_pos")
    assert "_slot" not in names  # named in a string (FIELDS)
    assert "_label" not in names  # inside a string
    assert "_LIMIT" not in names  # const(): already kept out of the module
    assert "_mpy" not in names  # sys.implementation's, not bound here
    assert "_key" not in names and "_kw" not in names  # a dict key, a keyword nobody here takes
    assert "__init__" not in names and "__repr__" not in names
    assert "_buf" in names  # the docstring names it: docstrings do not count


def test_argument_names_are_renamed_only_where_nothing_else_can_reach_them():
    names = rename_map(_sources())
    assert {"factor", "extra", "x"} <= names.keys()  # arguments, a closure's too
    assert "step" not in names  # also a method
    assert "limit" not in names  # also a global
    assert "len" not in names  # also the builtin
    assert "size" not in names  # passed by keyword
    assert "self" not in names and "scale" not in names and "measure" not in names


def test_a_target_is_never_a_name_the_files_use():
    used = {"codec.py": CODEC.replace("return x * _scale", "return [x * _scale].append or x * _scale")}
    used["session.py"] = SESSION
    names = rename_map(used)
    assert "append" not in names.values()
    assert names == rename_map({**used, "more.py": "VALUE = 1\n"})  # a file without private names changes nothing


def test_nothing_is_renamed_when_a_file_does_not_parse():
    broken = {**_sources(), "bad.py": "def f(:\n"}
    assert rename_map(broken) == {}
    assert shorten(broken) == broken


def test_the_firmware_as_deployed():
    src = {p.name: p.read_text() for p in sorted(FIRMWARE_DIR.glob("*.py"))}
    names = rename_map(src)
    out = deployed(FIRMWARE_DIR)
    assert set(out) == set(src) and len(names) >= 80
    for name, text in out.items():
        compile(text, name, "exec")
        assert text.decode().count("\n") == src[name].count("\n")  # line numbers as in the source
    # an attribute the emulator's VM shims or the entry script read keeps its name
    shims = " ".join(p.read_text() for p in (ROOT / "emulator" / "board" / "vm" / "shims").glob("*.py"))
    assert not [n for n in names if n.startswith("_") and re.search(r"\.%s\b" % n, shims)]


def test_the_targets_are_built_into_the_interpreter(tmp_path):
    """Each target name costs the unix port no string: compiling code that
    uses them all interns none of them."""
    (tmp_path / "names.txt").write_text(" ".join(BUILT_IN_NAMES))
    (tmp_path / "probe.py").write_text(textwrap.dedent("""\
        import micropython, sys
        names = open(sys.argv[1]).read().split()
        exec("def f(o):\\n" + "".join(" o.%s = 1\\n" % n for n in names))
        micropython.qstr_info(1)
        """))
    r = subprocess.run([micropython_executable(), "-X", "heapsize=2m", str(tmp_path / "probe.py"),
                        str(tmp_path / "names.txt")], capture_output=True, text=True, timeout=30, check=False)
    interned = {line[2:-1] for line in r.stdout.splitlines() if line.startswith("Q(")}
    assert r.returncode == 0 and "qstr pool" in r.stdout, r.stdout + r.stderr
    assert not interned & set(BUILT_IN_NAMES)
