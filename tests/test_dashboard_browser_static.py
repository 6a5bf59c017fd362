"""The page's files without a browser: the vendored uPlot is the version
package.json pins, with its licence, and no page module writes HTML (device
strings are untrusted: SPEC §6)."""

from __future__ import annotations

import json
import re
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "emulator" / "dashboard" / "static"
ROOT = STATIC.parents[2]


def test_vendored_uplot_is_the_pinned_version_with_its_licence():
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["uplot"]
    head = (STATIC / "vendor" / "uPlot.esm.js").read_text()[:400]
    m = re.search(r"uPlot \(v(\d+\.\d+\.\d+)\)", head)
    assert m, head
    assert m.group(1) == pinned
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/uplot"]["version"] == pinned
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()
    assert (STATIC / "vendor" / "uPlot.min.css").stat().st_size > 0


def test_page_modules_never_write_html():
    sinks = re.compile(r"\.innerHTML|\.outerHTML|insertAdjacentHTML|document\.write|createContextualFragment|\beval\(|new Function\(")
    modules = sorted(STATIC.glob("*.js"))
    assert {p.name for p in modules} >= {"app.js", "store.js", "fleet.js", "panel.js", "util.js"}
    for path in modules:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not sinks.search(line), f"{path.name}:{n}: {line.strip()}"


def test_index_loads_only_files_that_exist():
    html = (STATIC / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^":#]+)"', html)
    assert "app.js" in refs and "vendor/uPlot.min.css" in refs
    for ref in refs:
        assert (STATIC / ref).is_file(), ref
    for path in STATIC.glob("*.js"):
        for ref in re.findall(r'from "\./([^"]+)"', path.read_text()):
            assert (STATIC / ref).is_file(), f"{path.name} imports {ref}"
