"""Heap bytes firmware/mqtt_client.py allocates to send one QoS 0 publish on
the real MicroPython VM (issue 15: fewer allocations a message on the board).

A session stand-in hands the client one 150-byte packet per flush; the
stream is asyncio's own, over a loopback socket to a peer that reads
everything (so the socket takes each write at once, as it does for nearly
every telemetry message). The collector is off for 100 flushes. One row per
firmware directory given (e.g. an older checkout's `firmware/` first).

    .venv/bin/python bench/vm_publish_alloc.py /tmp/before/firmware firmware

Not a test; prints a table (markdown).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from emulator.board.vm.interpreter import micropython_executable  # noqa: E402

SCRIPT = """\
import sys
sys.path.insert(0, sys.argv[1])
import asyncio, gc
import mqtt_client


class Session:
    def __init__(self):
        self.left = 0
        self.chunk = b"p" * 150

    def has_data_to_send(self):
        return self.left > 0

    def data_to_send(self):
        if self.left <= 0:
            return b""
        self.left -= 1
        return self.chunk


async def main():
    r, w = await asyncio.open_connection("127.0.0.1", int(sys.argv[2]))
    c = mqtt_client.MqttClient(Session(), None)
    c._writer = w
    for i in range(5):
        c.session.left = 1
        await c._flush()
    gc.collect()
    gc.disable()
    a = gc.mem_alloc()
    for i in range(100):
        c.session.left = 1
        await c._flush()
    b = gc.mem_alloc()
    gc.enable()
    print((b - a) / 100)


asyncio.run(main())
"""


def measure(firmware: Path, script: Path) -> str:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)

        def drain() -> None:
            conn, _ = lsock.accept()
            with conn:
                while conn.recv(65536):
                    pass

        threading.Thread(target=drain, daemon=True).start()
        r = subprocess.run([micropython_executable(), "-X", "heapsize=256k", str(script), str(firmware),
                            str(lsock.getsockname()[1])], capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        return "failed: " + (r.stderr or r.stdout).strip().splitlines()[-1]
    return r.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("firmware", nargs="*", type=Path, default=[REPO / "firmware"])
    args = ap.parse_args()
    script = Path("/tmp") / f"vm_publish_alloc_{__import__('os').getpid()}.py"
    script.write_text(SCRIPT)
    try:
        print("| firmware | heap bytes per publish flush |")
        print("|---|---|")
        for fw in args.firmware:
            if not (fw / "mqtt_client.py").is_file():
                print(f"error: no mqtt_client.py in {fw}", file=sys.stderr)
                raise SystemExit(2)
            print(f"| {fw} | {measure(fw, script)} |")
    finally:
        script.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
