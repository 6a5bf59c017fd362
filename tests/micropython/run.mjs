// Run firmware tests inside a real MicroPython VM (WebAssembly, npm package
// @micropython/micropython-webassembly-pyscript) under Node.js.
//
//   node tests/micropython/run.mjs [tests/micropython/test_x_mp.py ...]
//
// Every firmware/*.py is copied to /fw and every tests/micropython/*.py to
// /tests in the VM filesystem, both on sys.path. Each test file (default: all
// tests/micropython/test_*.py) gets a fresh VM; every module-level function
// named test_* is called (in name order) with no arguments. Output: one line
// per test, `PASS file::name` or `FAIL file::name: <exception>` (followed by
// the indented traceback), then `N passed, M failed`. Exit code 1 on any
// failure or when no test ran. Test files are plain MicroPython: no pytest.

import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import { readdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..", "..");

function pyFiles(dir) {
  return readdirSync(dir).filter((f) => f.endsWith(".py")).sort();
}

// The harness runs inside the VM; __file_name__ and __module__ are substituted.
const HARNESS = `
import sys
sys.path.insert(0, "/tests")
sys.path.insert(0, "/fw")

def _report(name, exc):
    import io
    buf = io.StringIO()
    sys.print_exception(exc, buf)
    lines = buf.getvalue().rstrip().split("\\n")
    print("FAIL %s: %s" % (name, lines[-1]))
    for line in lines[:-1]:
        print("    " + line)

def _run(file_name, module_name):
    passed = failed = 0
    try:
        mod = __import__(module_name)
    except BaseException as e:
        _report(file_name + "::<import>", e)
        return 0, 1
    names = sorted(n for n in dir(mod) if n.startswith("test_"))
    for n in names:
        fn = getattr(mod, n)
        if not callable(fn):
            continue
        try:
            fn()
        except BaseException as e:
            failed += 1
            _report(file_name + "::" + n, e)
        else:
            passed += 1
            print("PASS %s::%s" % (file_name, n))
    return passed, failed

_passed, _failed = _run(__file_name__, __module__)
`;

async function runFile(testPath) {
  const lines = [];
  const write = (s) => {
    for (const line of String(s).replace(/\n$/, "").split("\n")) {
      lines.push(line);
      console.log(line);
    }
  };
  const mp = await loadMicroPython({ stdout: write, stderr: write });
  mp.FS.mkdir("/fw");
  mp.FS.mkdir("/tests");
  const fwDir = path.join(root, "firmware");
  for (const f of pyFiles(fwDir)) {
    mp.FS.writeFile("/fw/" + f, readFileSync(path.join(fwDir, f)));
  }
  // the test file's own folder (helpers live next to the tests)
  const testDir = path.dirname(testPath);
  for (const f of pyFiles(testDir)) {
    mp.FS.writeFile("/tests/" + f, readFileSync(path.join(testDir, f)));
  }
  const fileName = path.basename(testPath);
  const moduleName = fileName.replace(/\.py$/, "");
  const src = HARNESS.replace("__file_name__", JSON.stringify(fileName)).replace(
    "__module__",
    JSON.stringify(moduleName),
  );
  try {
    mp.runPython(src);
  } catch (e) {
    write(`FAIL ${fileName}::<harness>: ${String(e).split("\n").pop()}`);
    return [0, 1];
  }
  return [mp.globals.get("_passed"), mp.globals.get("_failed")];
}

let files = process.argv.slice(2).map((f) => path.resolve(f));
if (files.length === 0) {
  files = pyFiles(here)
    .filter((f) => f.startsWith("test_"))
    .map((f) => path.join(here, f));
}

let passed = 0;
let failed = 0;
for (const f of files) {
  const [p, m] = await runFile(f);
  passed += p;
  failed += m;
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed > 0 || passed === 0 ? 1 : 0);
