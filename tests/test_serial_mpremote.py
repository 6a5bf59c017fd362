"""The real mpremote against `esp32emu serial`: an emulated board whose
console is a pty speaking MicroPython's REPL protocols. Also the raw REPL
through pyserial, Ctrl-C into running code, soft and hard resets with the
firmware online on a real Mosquitto, the CLI as a user runs it, and the
serial monitor (timestamps, reconnecting)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from emulator.firmware.config import default_config
from emulator.realboard.monitor import LineStamper, monitor
from emulator.realboard.serial_board import SerialBoard
from emulator.testing.harness import Emulator
from tests.boards import is_birth

REPO = Path(__file__).resolve().parent.parent
MPREMOTE = [sys.executable, "-m", "mpremote"]

pytestmark = pytest.mark.integration


class Console:
    """Everything a serial board wrote to its pty, with waits that have deadlines."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._cond = threading.Condition()

    def __call__(self, chunk: bytes) -> None:
        with self._cond:
            self.data += chunk
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.data)

    def wait_for(self, needle: bytes, start: int = 0, timeout: float = 10.0) -> int:
        """Index just past the first `needle` at or after `start`."""
        with self._cond:
            ok = self._cond.wait_for(lambda: self.data.find(needle, start) >= 0, timeout)
            if not ok:
                tail = bytes(self.data[max(start, len(self.data) - 600) :])
                raise AssertionError(f"{needle!r} not on the console within {timeout} s; tail: {tail!r}")
            return self.data.find(needle, start) + len(needle)


@pytest.fixture
def serial_board(emu: Emulator, tmp_path: Path) -> Iterator[Callable[..., tuple[SerialBoard, Console]]]:
    made: list[SerialBoard] = []

    def make(device_id: str = "dev-serial", **kwargs) -> tuple[SerialBoard, Console]:
        console = Console()
        sb = SerialBoard(device_id, tmp_path / f"serial{len(made)}", tee=console, **kwargs)
        made.append(sb)
        emu.call(sb.start)
        console.wait_for(b"\r\n>>> " if not kwargs.get("firmware", True) else b"rst:")
        return sb, console

    yield make
    for sb in made:
        emu.run(sb.stop())


def mpremote(port: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    r = subprocess.run([*MPREMOTE, "connect", port, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and r.returncode != 0:
        raise AssertionError(f"mpremote {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def test_fs_commands_work_on_the_boards_flash(serial_board, tmp_path):
    sb, _ = serial_board(firmware=False)
    flash = sb.board.flash_dir
    local = tmp_path / "blob.bin"
    local.write_bytes(bytes(range(256)) * 9 + b"tail")  # binary, more than one 256-byte chunk
    t0 = time.monotonic()
    r = mpremote(sb.path, "fs", "mkdir", ":lib", "+", "fs", "cp", str(local), ":lib/blob.bin", "+", "fs", "ls", ":lib")
    assert (flash / "lib" / "blob.bin").read_bytes() == local.read_bytes()
    assert f"{local.stat().st_size} blob.bin" in r.stdout

    digest = mpremote(sb.path, "fs", "sha256sum", ":lib/blob.bin").stdout
    import hashlib

    assert hashlib.sha256(local.read_bytes()).hexdigest() in digest

    back = tmp_path / "back.bin"
    mpremote(sb.path, "fs", "cp", ":lib/blob.bin", str(back))
    assert back.read_bytes() == local.read_bytes()

    (tmp_path / "hello.txt").write_text("hello\nboard\n")
    mpremote(sb.path, "fs", "cp", str(tmp_path / "hello.txt"), ":")
    assert mpremote(sb.path, "fs", "cat", ":hello.txt").stdout.replace("\r\n", "\n").endswith("hello\nboard\n")

    mpremote(sb.path, "fs", "rm", ":lib/blob.bin", "+", "fs", "rmdir", ":lib", "+", "fs", "rm", ":hello.txt")
    assert list(flash.iterdir()) == []

    tree = tmp_path / "pkg"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "m.py").write_text("X = 1\n")
    r = mpremote(sb.path, "fs", "cp", "-r", str(tree), ":", "+", "fs", "touch", ":t.txt", "+", "fs", "tree", "+", "df")
    assert (flash / "pkg" / "sub" / "m.py").read_text() == "X = 1\n" and (flash / "t.txt").exists()
    assert "m.py" in r.stdout and "<VfsLfs2>" in r.stdout
    mpremote(sb.path, "fs", "rm", "-r", ":pkg", "+", "soft-reset")
    assert not (flash / "pkg").exists()
    r = mpremote(sb.path, "fs", "rm", ":missing.py", check=False)
    assert r.returncode == 1 and "No such file" in r.stderr
    print(f"fs round trip: {time.monotonic() - t0:.2f} s")


def test_exec_eval_run_and_errors(serial_board, tmp_path):
    sb, _ = serial_board(firmware=False)
    assert mpremote(sb.path, "eval", "6 * 7").stdout.strip() == "42"
    # one connection: globals survive between commands (no soft reset in between)
    r = mpremote(sb.path, "exec", "import machine, sys; u = machine.unique_id()", "+", "eval", "(len(u), sys.platform)")
    assert r.stdout.strip() == "(6, 'esp32')"
    script = tmp_path / "script.py"
    script.write_text("import os\nfor i in range(3):\n    print('line', i)\nprint(os.getcwd())\n")
    r = mpremote(sb.path, "run", str(script))
    assert r.stdout.replace("\r\n", "\n") == "line 0\nline 1\nline 2\n/\n"
    r = mpremote(sb.path, "exec", "undefined_name", check=False)
    assert r.returncode == 1
    assert 'File "<stdin>", line 1' in r.stdout and "NameError" in r.stdout
    r = mpremote(sb.path, "exec", "open('/nope.txt')", check=False)
    assert "OSError: [Errno 2] ENOENT" in r.stdout


def test_raw_repl_by_hand_and_ctrl_c_interrupts_running_code(serial_board):
    sb, _ = serial_board(firmware=False)
    with serial.Serial(sb.path, 115200, timeout=5) as port:
        port.write(b"\r\x01")
        assert port.read_until(b"raw REPL; CTRL-B to exit\r\n>").endswith(b">")
        port.write(b"print(6 * 7)\x04")
        assert port.read_until(b"\x04>") == b"OK42\r\n\x04\x04>"
        port.write(b"import time\ntime.sleep(60)\x04")
        assert port.read(2) == b"OK"
        t0 = time.monotonic()
        port.write(b"\x03")
        out = port.read_until(b"\x04>")
        assert out.startswith(b"\x04Traceback") and b"KeyboardInterrupt" in out and out.endswith(b"\x04>")
        assert time.monotonic() - t0 < 3
        port.write(b"\x02")
        assert port.read_until(b">>> ").endswith(b">>> ")
        port.write(b"x = 3\r")
        port.write(b"x * 2\r")
        assert port.read_until(b"6\r\n>>> ").endswith(b"6\r\n>>> ")


def test_firmware_interrupted_soft_reset_and_hard_reset(serial_board, broker, observer):
    obs = observer(broker)
    obs.subscribe("devices/#")
    cfg = default_config("dev-tty", broker.host, broker.port, keepalive=5, interval=1)
    sb, console = serial_board("dev-tty", config=cfg)
    obs.wait_for(is_birth("dev-tty", boot=1), timeout=10)

    # mpremote's Ctrl-C stops main.py; its auto soft reset comes from the raw
    # REPL, so main.py does not run again (as on a board).
    mark = console.mark()
    assert mpremote(sb.path, "eval", "1").stdout.strip() == "1"
    after = console.wait_for(b"KeyboardInterrupt", mark)
    after = console.wait_for(b"MPY: soft reboot\r\n", after)
    end = console.wait_for(b"raw REPL; CTRL-B to exit\r\n", after)
    assert b"esp32emu fw" not in console.data[after:end]
    assert not sb.board.link.connections or all(c.abandoned for c in sb.board.link.connections)

    # Ctrl-D at the friendly prompt: soft reset that reruns main.py
    n = len(obs.messages)
    with serial.Serial(sb.path, 115200, timeout=5) as port:
        port.write(b"\x04")
        assert b"MPY: soft reboot" in port.read_until(b"soft reboot\r\n")
    msg = obs.wait_for(is_birth("dev-tty", boot=2), timeout=10, start=n)
    assert msg.json()["reset"] == "soft"

    # mpremote reset: machine.reset() is a hard reset; the pty stays
    n = len(obs.messages)
    mark = console.mark()
    t0 = time.monotonic()
    mpremote(sb.path, "reset")
    console.wait_for(b"rst:0xc (SW_CPU_RESET)", mark)
    msg = obs.wait_for(is_birth("dev-tty", boot=3), timeout=10, start=n)
    assert msg.json()["reset"] == "hard"
    print(f"mpremote reset -> online again: {time.monotonic() - t0:.2f} s")
    assert mpremote(sb.path, "exec", "import machine; print(machine.reset_cause())").stdout.strip() == "5"


def test_cli_serial_prints_pty_and_serves_mpremote(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, "-m", "emulator", "--state", str(tmp_path / "state"), "serial", "--no-firmware",
         "--broker", "mqtt://127.0.0.1:1883", "--id", "dev-cli", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        path = p.stdout.readline().strip()
        assert path.startswith("/dev/pts/"), path
        assert mpremote(path, "eval", "'%s' % 'pong'").stdout.strip() == "pong"
        mpremote(path, "exec", "open('note.txt', 'w').write('x')")
        assert (tmp_path / "state" / "serial" / "dev-cli" / "flash" / "note.txt").read_text() == "x"
    finally:
        p.send_signal(signal.SIGINT)
        rc = p.wait(10)
    assert rc == 0, p.stderr.read()


def test_line_stamper_splits_and_flushes_prompts():
    s = LineStamper()
    (line,) = s.feed(b"a\r\nb", 1000.0)
    assert line.endswith(" a") and line[2] == ":" and line[-6] == "."
    assert s.flush(1000.1) == []  # 'b' may still be continued
    (line,) = s.flush(1000.5)
    assert line.endswith(" b")
    (line,) = s.feed(b"rst:0xc (SW_CPU_RESET)\r\n", 1001.0)
    assert line.endswith("rst:0xc (SW_CPU_RESET)  <-- board reset")


def test_monitor_stamps_lines_and_reconnects(serial_board, tmp_path):
    link = tmp_path / "ttyESP"
    a, _ = serial_board("dev-a", firmware=False)
    os.symlink(a.path, link)
    lines: list[str] = []
    cond = threading.Condition()

    def out(line: str) -> None:
        with cond:
            lines.append(line)
            cond.notify_all()

    def wait_line(pred, start: int = 0, timeout: float = 10) -> int:
        with cond:
            if not cond.wait_for(lambda: any(pred(x) for x in lines[start:]), timeout):
                raise AssertionError(f"no such line in {lines}")
            return next(i for i in range(start, len(lines)) if pred(lines[i])) + 1

    stop = threading.Event()
    t = threading.Thread(target=monitor, args=(str(link), out, stop, 0.05), daemon=True)
    t.start()
    try:
        i = wait_line(lambda x: x.startswith("--- connected"))
        a.board.loop.call_soon_threadsafe(a.board.hard_reset)
        i = wait_line(lambda x: x.endswith("<-- board reset") and x[2] == ":" and x[12] == " ", i)
        i = wait_line(lambda x: x.endswith(">>> "), i)

        # the board's port disappears (native USB while resetting), then returns
        a.board.loop.call_soon_threadsafe(a.close)
        i = wait_line(lambda x: " lost " in x, i)
        b, _ = serial_board("dev-b", firmware=False)
        tmp_link = tmp_path / "ttyESP.new"
        os.symlink(b.path, tmp_link)
        os.replace(tmp_link, link)
        i = wait_line(lambda x: x.startswith("--- connected"), i)
        b.board.loop.call_soon_threadsafe(b.board.hard_reset)
        wait_line(lambda x: "rst:0xc" in x, i)
    finally:
        stop.set()
        t.join(5)
