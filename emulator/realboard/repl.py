"""MicroPython's REPL protocols as a sans-I/O state machine.

What a board speaks on its USB serial port once `boot.py`/`main.py` have
ended (or were interrupted with Ctrl-C), modelled on MicroPython's
`shared/runtime/pyexec.c`:

- the friendly REPL (`>>> `, line editing, `... ` continuation, Ctrl-E paste
  mode, Ctrl-D soft reset, Ctrl-A to the raw REPL);
- the raw REPL (Ctrl-A): source up to Ctrl-D, answered `OK`, then the code's
  output, `\\x04`, its traceback, `\\x04`, `>`; Ctrl-D on an empty line is a
  soft reset, Ctrl-B goes back to the friendly REPL;
- raw-paste mode (Ctrl-E `A` Ctrl-A at the raw prompt): answered `R\\x01`
  and a 2-byte little-endian window; the host may send that many bytes, and
  gets `\\x01` for each further window it may send; Ctrl-D ends the source
  (answered `\\x04`), then the same `output \\x04 traceback \\x04 >` framing.

No I/O and no executing here (like h11): feed bytes with `receive_data`,
take `Send`, `Execute` and `SoftReset` events from `next_event`, and report an
execution's end with `executed(traceback_text)`. `emulator/realboard/serial_board.py`
is the shell that owns the pty and runs the code inside the board.
"""

from __future__ import annotations

import codeop
import warnings
from collections import deque
from dataclasses import dataclass

CTRL_A, CTRL_B, CTRL_C, CTRL_D, CTRL_E = 0x01, 0x02, 0x03, 0x04, 0x05
BACKSPACE, DEL, ESC = 0x08, 0x7F, 0x1B

RAW_PROMPT = b"raw REPL; CTRL-B to exit\r\n>"
PASTE_PROMPT = b"paste mode; Ctrl-C to cancel, Ctrl-D to finish\r\n=== "
RAW_PASTE_WINDOW = 256  # MICROPY_REPL_STDIN_BUFFER_MAX on the ESP32 port

FRIENDLY, RAW = "friendly", "raw"


@dataclass(frozen=True)
class Send:
    """Bytes the board writes to the serial port."""

    data: bytes


@dataclass(frozen=True)
class Execute:
    """Run `source`. `single` (a friendly-REPL line: an expression's value is
    printed) or `file` (raw REPL, raw paste, paste mode). The output of the
    code goes straight to the port; call `executed()` when it ends."""

    source: str
    mode: str


@dataclass(frozen=True)
class SoftReset:
    """Ctrl-D at an empty prompt: the board soft-resets (`MPY: soft reboot`)."""


Event = Send | Execute | SoftReset


class ProtocolError(RuntimeError):
    """The shell drove the machine wrong (local misuse, not the host's fault)."""


def needs_more_input(source: str) -> bool:
    """Whether the friendly REPL should show `... ` (like mp_repl_continue_with_input)."""
    lines = source.split("\n")
    if len(lines) > 1:
        return lines[-1].strip() != ""  # in a block, an empty line ends it
    if source.rstrip().endswith(":"):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return codeop.compile_command(source, "<stdin>", "single") is None
    except (SyntaxError, ValueError, OverflowError):
        return False  # complete but wrong: let execution report it


class ReplProtocol:
    """One board's REPL. The mode survives a soft reset (as pyexec_mode_kind
    does) and a hard reset returns to the friendly REPL with the input lost."""

    def __init__(self, banner: str, window: int = RAW_PASTE_WINDOW):
        self.banner = banner.replace("\r\n", "\n").replace("\n", "\r\n").encode()
        self.window = window
        self.mode = FRIENDLY
        self._state = "idle"  # idle | line | paste | raw | raw_paste | executing
        self._in = bytearray()
        self._events: deque[Event] = deque()
        self._line = bytearray()
        self._block: list[str] = []  # friendly continuation lines
        self._paste_left = 0  # raw paste: bytes until the next window
        self._exec_framing = b""
        self._after_cr = False
        self._esc = 0  # bytes of an escape sequence left to swallow

    # -- lifecycle --------------------------------------------------------------------

    @property
    def raw(self) -> bool:
        return self.mode == RAW

    @property
    def executing(self) -> bool:
        return self._state == "executing"

    def reset(self, soft: bool) -> None:
        """The board reset: a hard reset loses pending input and the raw mode."""
        if not soft:
            self.mode = FRIENDLY
            self._in.clear()
        self._events.clear()
        self._state = "idle"
        self._line.clear()
        self._block.clear()

    def start(self) -> None:
        """boot.py/main.py ended: the REPL prints its prompt and reads input."""
        if self.raw:
            self._enter_raw(b"")
        else:
            self._enter_friendly(b"")

    # -- h11-style API ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        self._in += data

    def next_event(self) -> Event | None:
        while not self._events and self._in and self._state not in ("idle", "executing"):
            c = self._in[0]
            del self._in[0]
            self._step(c)
        return self._events.popleft() if self._events else None

    def executed(self, error: str | None) -> None:
        """The last `Execute` finished; `error` is its traceback text, if any."""
        if self._state != "executing":
            raise ProtocolError("executed() without an Execute in progress")
        err = (error or "").replace("\r\n", "\n").replace("\n", "\r\n").encode()
        if self.mode == RAW:
            self._state = "raw"
            self._send(b"\x04" + err + b"\x04>")
        else:
            self._state = "line"
            self._send(err + b">>> ")

    # -- internals ---------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if data:
            self._events.append(Send(data))

    def _execute(self, source: str, mode: str) -> None:
        self._state = "executing"
        self._events.append(Execute(source, mode))

    def _soft_reset(self) -> None:
        self._state = "idle"
        self._events.append(SoftReset())

    def _enter_friendly(self, before: bytes) -> None:
        self.mode = FRIENDLY
        self._state = "line"
        self._line.clear()
        self._block.clear()
        self._send(before + self.banner + b"\r\n>>> ")

    def _enter_raw(self, before: bytes) -> None:
        self.mode = RAW
        self._state = "raw"
        self._line.clear()
        self._send(before + RAW_PROMPT)

    def _step(self, c: int) -> None:
        getattr(self, "_on_" + self._state)(c)

    # friendly REPL

    def _on_line(self, c: int) -> None:
        if self._esc == 1:  # after ESC: a CSI sequence, or one more byte
            self._esc = 2 if c == ord("[") else 0
            return
        if self._esc == 2:  # inside CSI (arrow keys...): swallow up to the final byte
            if 0x40 <= c <= 0x7E:
                self._esc = 0
            return
        after_cr, self._after_cr = self._after_cr, c == 0x0D
        if c == ESC:
            self._esc = 1
        elif c == CTRL_A:
            self._enter_raw(b"\r\n")
        elif c == CTRL_B:
            self._enter_friendly(b"\r\n")
        elif c == CTRL_C:
            self._line.clear()
            self._block.clear()
            self._send(b"\r\n>>> ")
        elif c == CTRL_D:
            if not self._line and not self._block:
                self._send(b"\r\n")
                self._soft_reset()
        elif c == CTRL_E:
            self._line.clear()
            self._block.clear()
            self._state = "paste"
            self._send(b"\r\n" + PASTE_PROMPT)
        elif c in (0x0D, 0x0A):
            if c == 0x0A and after_cr:
                return
            self._send(b"\r\n")
            self._block.append(self._line.decode("utf-8", "replace"))
            self._line.clear()
            source = "\n".join(self._block)
            if not source.strip():
                self._block.clear()
                self._send(b">>> ")
            elif needs_more_input(source):
                self._send(b"... ")
            else:
                self._block.clear()
                self._execute(source.rstrip("\n") + "\n", "single")
        elif c in (BACKSPACE, DEL):
            if self._line:
                del self._line[-1]
                self._send(b"\x08 \x08")
        elif c >= 0x20 or c == 0x09:
            self._line.append(c)
            self._send(bytes([c]))

    def _on_paste(self, c: int) -> None:
        if c == CTRL_C:
            self._line.clear()
            self._state = "line"
            self._send(b"\r\n>>> ")
        elif c == CTRL_D:
            self._send(b"\r\n")
            source = self._line.decode("utf-8", "replace")
            self._line.clear()
            self._execute(source, "file")
        elif c == 0x0D:
            self._line.append(0x0A)
            self._send(b"\r\n=== ")
        elif c != 0x0A or not self._line.endswith(b"\n"):
            self._line.append(c)
            self._send(bytes([c]) if c != 0x0A else b"\r\n=== ")

    # raw REPL

    def _on_raw(self, c: int) -> None:
        if c == CTRL_A:
            if len(self._line) == 2 and self._line[0] == CTRL_E:
                self._start_raw_paste(self._line[1])
                return
            self._line.clear()
            self._send(RAW_PROMPT)  # "reset raw REPL"
        elif c == CTRL_B:
            self._enter_friendly(b"\r\n")
        elif c == CTRL_C:
            self._line.clear()
        elif c == CTRL_D:
            self._send(b"OK")
            if not self._line:
                self._send(b"\r\n")
                self._soft_reset()
                return
            source = self._line.decode("utf-8", "replace")
            self._line.clear()
            self._execute(source, "file")
        else:
            self._line.append(c)

    def _start_raw_paste(self, command: int) -> None:
        self._line.clear()
        if command != ord("A"):
            self._send(b"R\x00")  # understood, not supported: stay in raw REPL
            return
        self._state = "raw_paste"
        self._paste_left = self.window
        self._send(b"R\x01" + self.window.to_bytes(2, "little"))

    def _on_raw_paste(self, c: int) -> None:
        if c == CTRL_D:
            self._send(b"\x04")
            source = self._line.decode("utf-8", "replace")
            self._line.clear()
            self._execute(source, "file")
            return
        if c == CTRL_C:
            self._line.clear()
            self._state = "raw"
            self._send(b"\x04" + b"\x04Traceback (most recent call last):\r\nKeyboardInterrupt: \r\n\x04>")
            return
        self._line.append(c)
        self._paste_left -= 1
        if self._paste_left == 0:
            self._paste_left = self.window
            self._send(b"\x01")  # the host may send another window

    def _on_idle(self, c: int) -> None:  # pragma: no cover - next_event never steps in idle
        raise ProtocolError("input stepped while the REPL is not running")

    _on_executing = _on_idle
