# The channel to the host (emulator/board/vm/board.py): one blocking loopback TCP
# socket for requests (one JSON line out, one JSON line back), and a second
# one, read by an asyncio task, for what the host pushes (button IRQs).
# Board state lives on the host; this module keeps only what this boot
# was told at hello: reset cause, RTC offset, MAC.
import json
import socket

_sock = None
_port = 0
cause = 1
rtc_delta = 0  # ESP32-epoch seconds = utime.time() + rtc_delta
mac = b"\x24\x0a\xc4\x00\x00\x00"
_irqs = {}  # pin id -> handler
_irq_task = None


def start(port):
    global _sock, _port, cause, rtc_delta, mac
    _port = port
    _sock = _connect("ctl")
    r = call("hello")
    cause, rtc_delta, mac = r[0], r[1], bytes(r[2])


def _connect(kind):
    s = socket.socket()
    s.connect(socket.getaddrinfo("127.0.0.1", _port)[0][-1])
    s.write(kind.encode() + b"\n")
    return s


def call(*req):
    # A request the host answers at once; a reset or deep sleep is never
    # answered (the host ends this process).
    try:
        _sock.write(json.dumps(req).encode() + b"\n")
        line = _sock.readline()
    except OSError:
        line = b""
    if not line:
        # The host is gone (the emulator ended without stopping this board):
        # nobody can answer again, so the board ends here.
        import sys

        sys.exit(3)
    r = json.loads(line)
    if r[0] == "ok":
        return r[1]
    if r[0] == "err":
        raise OSError(r[1])
    raise _EXC.get(r[1], RuntimeError)(r[2])


_EXC = {"ValueError": ValueError, "TypeError": TypeError, "OverflowError": OverflowError}


def set_irq(pin, handler):
    global _irq_task
    if handler is None:
        _irqs.pop(pin, None)
    else:
        _irqs[pin] = handler
    call("irq", pin, handler is not None)
    if _irq_task is None and handler is not None:
        import asyncio

        _irq_task = asyncio.create_task(_irq_loop())


async def _irq_loop():
    import asyncio

    s = _connect("evt")
    s.setblocking(False)
    r = asyncio.StreamReader(s)
    while True:
        line = await r.readline()
        if not line:
            return
        pin = int(line)
        h = _irqs.get(pin)
        if h is not None:
            import machine

            h(machine.Pin(pin))
