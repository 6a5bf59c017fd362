"""`esp32emu monitor`: a board's serial console with a timestamp on every
line, that survives the board resetting.

A devkit's USB-serial bridge (CP210x, CH340) keeps the port through a
reset: the ROM's `rst:` line shows up and is marked. Boards with native USB
(ESP32-S2/S3/C3) lose the port while they reset: the monitor says so and
reopens it as soon as it is back. The port is opened with DTR and RTS
released, so opening it does not reset the board (the auto-reset circuit of
ESP32 devkits); `mpremote connect PORT repl` is the interactive console.

`LineStamper` is the sans-I/O part (bytes in, stamped lines out); `monitor()`
is the pyserial loop around it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

IDLE_FLUSH_S = 0.3  # show a prompt ('>>> ') that no newline ends


def stamp(now: float) -> str:
    t = time.localtime(now)
    return time.strftime("%H:%M:%S", t) + f".{int((now % 1) * 1000):03d}"


class LineStamper:
    """Splits console bytes into lines, each prefixed with its arrival time."""

    def __init__(self) -> None:
        self._partial = b""
        self._since = 0.0  # arrival of the partial line's first byte

    def feed(self, data: bytes, now: float) -> list[str]:
        if data and not self._partial:
            self._since = now
        self._partial += data
        lines = []
        while b"\n" in self._partial:
            line, self._partial = self._partial.split(b"\n", 1)
            lines.append(self._render(line, self._since))
            self._since = now
        return lines

    def flush(self, now: float, idle: float = IDLE_FLUSH_S) -> list[str]:
        """The partial line, once nothing more came for `idle` seconds."""
        if not self._partial or now - self._since < idle:
            return []
        line, self._partial = self._partial, b""
        return [self._render(line, self._since)]

    @staticmethod
    def _render(raw: bytes, when: float) -> str:
        text = raw.rstrip(b"\r").decode("utf-8", "replace")
        text = "".join(ch for ch in text if ch >= " " or ch == "\t")
        mark = "  <-- board reset" if text.startswith("rst:") else ""
        return f"{stamp(when)} {text}{mark}"


def _open(port: str):
    import serial

    ser = serial.serial_for_url(port, baudrate=115200, timeout=0.1, do_not_open=True)
    ser.dtr = False  # released: opening the port does not reset the board
    ser.rts = False
    ser.open()
    return ser


def monitor(
    port: str,
    out: Callable[[str], None] = lambda line: print(line, flush=True),
    stop: threading.Event | None = None,
    retry_s: float = 0.5,
) -> int:
    """Print the console of the board on `port` until `stop` is set (or Ctrl-C)."""
    import serial

    stop = stop or threading.Event()
    stamper = LineStamper()
    waiting_said = False
    while not stop.is_set():
        try:
            ser = _open(port)
        except (serial.SerialException, OSError, ValueError) as e:
            if not waiting_said:
                out(f"--- {port}: {e}; waiting for it to come back (Ctrl-C quits) ---")
                waiting_said = True
            stop.wait(retry_s)
            continue
        waiting_said = False
        out(f"--- connected to {port} (115200 baud; Ctrl-C quits) ---")
        try:
            while not stop.is_set():
                data = ser.read(4096)
                now = time.time()
                for line in stamper.feed(data, now) + stamper.flush(now):
                    out(line)
        except (serial.SerialException, OSError) as e:
            for line in stamper.flush(time.time(), idle=0):
                out(line)
            out(f"--- {port} lost ({e}): board reset or unplugged; reconnecting ---")
        finally:
            ser.close()
    return 0


def run_monitor(port: str) -> int:
    """`esp32emu monitor --port PORT`: until Ctrl-C."""
    try:
        return monitor(port)
    except KeyboardInterrupt:
        sys.stdout.flush()
        return 0
