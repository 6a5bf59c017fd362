"""The REPL protocol machine (emulator/realboard/repl.py) fed bytes, asserting events:
friendly REPL, raw REPL with its OK / \\x04 framing, raw-paste flow control,
soft reset, and how a reset changes the mode. No pty, no board."""

from __future__ import annotations

import pytest

from emulator.realboard.repl import (
    PASTE_PROMPT,
    RAW_PROMPT,
    Execute,
    ProtocolError,
    ReplProtocol,
    Send,
    SoftReset,
    needs_more_input,
)

BANNER = "MicroPython v1.24.1 on test; ESP32\nType \"help()\" for more information."
FRIENDLY_PROMPT = BANNER.replace("\n", "\r\n").encode() + b"\r\n>>> "


def drain(repl: ReplProtocol, data: bytes = b"") -> list:
    """Feed data; collect events up to (and including) the first Execute/SoftReset."""
    repl.receive_data(data)
    events = []
    while (ev := repl.next_event()) is not None:
        events.append(ev)
        if not isinstance(ev, Send):
            break
    return events


def sent(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Send))


@pytest.fixture
def repl() -> ReplProtocol:
    r = ReplProtocol(BANNER, window=8)
    r.reset(soft=False)
    r.start()
    assert sent(drain(r)) == FRIENDLY_PROMPT
    return r


def test_friendly_line_echoes_and_executes_single(repl):
    events = drain(repl, b"1+2\r")
    assert sent(events) == b"1+2\r\n"
    assert events[-1] == Execute("1+2\n", "single")
    assert drain(repl) == []  # nothing more until the shell reports the end
    repl.executed(None)
    assert sent(drain(repl)) == b">>> "


def test_friendly_continuation_block_ends_on_empty_line(repl):
    events = drain(repl, b"for i in range(2):\r")
    assert sent(events).endswith(b"\r\n... ")
    events = drain(repl, b"  print(i)\r\r")
    assert events[-1] == Execute("for i in range(2):\n  print(i)\n", "single")


def test_friendly_backspace_ctrl_c_and_escape_sequences(repl):
    assert sent(drain(repl, b"ab\x7f")) == b"ab\x08 \x08"
    assert sent(drain(repl, b"\x1b[A")) == b""  # arrow key swallowed
    assert sent(drain(repl, b"\x03")) == b"\r\n>>> "
    events = drain(repl, b"x\r")
    assert events[-1] == Execute("x\n", "single")  # the 'a' was cleared by Ctrl-C


def test_friendly_error_then_prompt(repl):
    drain(repl, b"1/0\r")
    repl.executed("Traceback (most recent call last):\nZeroDivisionError: divide by zero\n")
    assert sent(drain(repl)) == b"Traceback (most recent call last):\r\nZeroDivisionError: divide by zero\r\n>>> "


def test_ctrl_d_at_empty_friendly_prompt_is_soft_reset_and_keeps_friendly(repl):
    events = drain(repl, b"\x04")
    assert sent(events) == b"\r\n" and events[-1] == SoftReset()
    repl.reset(soft=True)
    repl.start()
    assert sent(drain(repl)) == FRIENDLY_PROMPT


def test_paste_mode(repl):
    assert sent(drain(repl, b"\x05")) == b"\r\n" + PASTE_PROMPT
    events = drain(repl, b"a = 1\rb = 2\r\x04")
    assert events[-1] == Execute("a = 1\nb = 2\n", "file")
    repl.executed(None)
    assert sent(drain(repl)) == b">>> "


def test_raw_repl_ok_and_eof_framing(repl):
    assert sent(drain(repl, b"\r\x01")) == b"\r\n>>> " + b"\r\n" + RAW_PROMPT
    events = drain(repl, b"print(1)\x04")
    assert sent(events) == b"OK"
    assert events[-1] == Execute("print(1)", "file")
    repl.executed(None)
    assert sent(drain(repl)) == b"\x04\x04>"
    drain(repl, b"x\x04")
    repl.executed("Traceback (most recent call last):\nNameError: x\n")
    assert sent(drain(repl)) == b"\x04Traceback (most recent call last):\r\nNameError: x\r\n\x04>"


def test_raw_repl_ctrl_a_resets_ctrl_c_clears_ctrl_b_leaves(repl):
    drain(repl, b"\x01")
    assert sent(drain(repl, b"junk\r\x01")) == RAW_PROMPT  # mpremote's "\r\x01" when already raw
    drain(repl, b"abc\x03")
    events = drain(repl, b"1\x04")
    assert events[-1] == Execute("1", "file")
    repl.executed(None)
    drain(repl)
    assert sent(drain(repl, b"\r\x02")) == b"\r\n" + FRIENDLY_PROMPT
    assert not repl.raw


def test_raw_soft_reset_stays_raw_and_hard_reset_goes_friendly(repl):
    drain(repl, b"\x01")
    events = drain(repl, b"\x04")
    assert sent(events) == b"OK\r\n" and events[-1] == SoftReset()
    repl.reset(soft=True)
    assert repl.raw  # pyexec_mode_kind survives a soft reset: main.py is skipped
    repl.start()
    assert sent(drain(repl)) == RAW_PROMPT
    repl.receive_data(b"pending")
    repl.reset(soft=False)
    repl.start()
    assert not repl.raw
    assert sent(drain(repl)) == FRIENDLY_PROMPT  # the pending input died with the reset


def test_raw_paste_window_flow_control_and_end(repl):
    drain(repl, b"\x01")
    assert sent(drain(repl, b"\x05A\x01")) == b"R\x01" + (8).to_bytes(2, "little")
    source = b"print('0123456789')"  # 19 bytes: two full windows of 8
    events = drain(repl, source)
    assert sent(events) == b"\x01\x01"
    events = drain(repl, b"\x04")
    assert sent(events) == b"\x04"
    assert events[-1] == Execute(source.decode(), "file")
    repl.executed(None)
    assert sent(drain(repl)) == b"\x04\x04>"


def test_raw_paste_refused_for_unknown_command_and_ctrl_c_aborts(repl):
    drain(repl, b"\x01")
    assert sent(drain(repl, b"\x05B\x01")) == b"R\x00"
    drain(repl, b"\x05A\x01")
    out = sent(drain(repl, b"abc\x03"))
    assert out.startswith(b"\x04\x04") and b"KeyboardInterrupt" in out and out.endswith(b"\x04>")


def test_input_waits_while_executing(repl):
    events = drain(repl, b"1\r2\r")
    assert events[-1] == Execute("1\n", "single")
    assert drain(repl) == []
    repl.executed(None)
    events = drain(repl)
    assert events[-1] == Execute("2\n", "single")


def test_executed_without_execute_is_local_misuse(repl):
    with pytest.raises(ProtocolError):
        repl.executed(None)


@pytest.mark.parametrize(
    "source, more",
    [("x = 1", False), ("if x:", True), ("f(1,", True), ('s = """a', True), ("if x:\n  y()", True), ("if x:\n  y()\n", False), ("1 +* 2", False)],
)
def test_needs_more_input(source, more):
    assert needs_more_input(source) is more
