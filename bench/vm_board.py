"""A firmware board on the real MicroPython VM, for the heap benchmarks
(bench/vm_heap.py) and tests/test_vm_heap.py (not a test itself).

The MicroPython unix port (`.venv/bin/micropython`, v1.29 preview, 64-bit:
8-byte words, so object-heavy code takes more heap than on an ESP32) runs
`-c "import boot, main"` with `-X heapsize=N` in a staged filesystem: the
files `esp32emu flash` deploys (the modules as .mpy, boot.py/main.py as
source; or the .py sources) plus minimal stubs of the ESP32's C modules
(machine, esp32, network, ntptime), compiled like the firmware. The stubs
are part of every heap figure (a board has them in flash, not in the heap).
A Driver on a private Mosquitto plays the backend: it waits for the birth,
sends commands and reads their results.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from emulator.broker.mosquitto import Broker  # noqa: E402
from emulator.realboard.flash import build_files, compile_mpy  # noqa: E402
from emulator.firmware.folder import FIRMWARE_DIR  # noqa: E402
from emulator.observe.recording import ObserverClient  # noqa: E402

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
    for name, data in build_files(config, firmware_dir=firmware_dir, mpy=mpy).items():
        (dest / name).write_bytes(data)
    for name, src in STUBS.items():
        (work / name).write_text(src)
        if mpy:
            (dest / (name[:-3] + ".mpy")).write_bytes(compile_mpy(work / name))
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


# -- a board on the VM ----------------------------------------------------------


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


def kib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f}"


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
            for r in rows]
    return "\n".join(out)


def mp_version() -> str:
    r = subprocess.run([str(MICROPYTHON), "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    return r.stdout.strip().split(";")[-1].strip()
