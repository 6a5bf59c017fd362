# The channel to the host (emulator/vm/board.py): one blocking loopback TCP
# socket for requests (one JSON line out, one JSON line back), and a second
# one, read by an asyncio task, for what the host pushes (button IRQs).
# Board state lives on the host; this module keeps only what this boot
# was told at hello: reset cause, RTC offset, MAC.
import json
import socket
import sys as _sys

_sock = None
_port = 0
cause = 1
rtc_delta = 0  # ESP32-epoch seconds = utime.time() + rtc_delta
mac = b"\x24\x0a\xc4\x00\x00\x00"
_irqs = {}  # pin id -> handler
_irq_task = None
_flag_done = False


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
    if not _flag_done and "asyncio" in _sys.modules:
        _install_flag()
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


def _install_flag():
    # Once the firmware has imported asyncio (never earlier: its heap is the
    # firmware's), at its next request to the host -- before it reaches the
    # BOOT button task, which comes after WiFi and MQTT setup.
    global _flag_done
    _flag_done = True
    _sys.modules["asyncio"].ThreadSafeFlag = ThreadSafeFlag


class ThreadSafeFlag:
    # asyncio.ThreadSafeFlag as this VM needs it (installed by _install_flag).
    # The unix port polls an object without a file descriptor (the built-in
    # flag) by waking every 1 ms: ~900 poll(2) calls and ~1.3 % of a core per
    # board while the firmware waits for its BOOT button. Here "IRQ" handlers
    # run in the event loop (_irq_loop), so an Event does the same job: set()
    # wakes the one waiter, wait() clears the flag when it returns.
    def __init__(self):
        import asyncio

        self._e = asyncio.Event()

    def set(self):
        self._e.set()

    def clear(self):
        self._e.clear()

    async def wait(self):
        await self._e.wait()
        self._e.clear()
