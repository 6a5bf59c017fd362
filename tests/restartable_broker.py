"""A private Mosquitto (persistence on) that restarts gracefully on SIGUSR1,
so that `esp32emu conformance --restart-cmd "kill -USR1 <pid>"` can restart
it the way a user's service manager would (tests/test_conformance_brokers.py).

    python tests/restartable_broker.py WORKDIR

prints "port N" once Mosquitto answers CONNECT; SIGTERM stops it (gracefully)
and exits.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from emulator.broker.mosquitto import Broker  # noqa: E402


def main() -> int:
    wake = threading.Event()
    todo: list[int] = []

    def on_signal(sig: int, frame: object) -> None:
        todo.append(sig)
        wake.set()

    signal.signal(signal.SIGUSR1, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    broker = Broker(sys.argv[1], persistence=True).start()
    print(f"port {broker.port}", flush=True)
    try:
        while True:
            wake.wait()
            wake.clear()
            while todo:
                if todo.pop(0) == signal.SIGTERM:
                    return 0
                broker.restart(graceful=True)
                print("restarted", flush=True)
    finally:
        broker.stop()


if __name__ == "__main__":
    sys.exit(main())
