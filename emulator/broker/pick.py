"""Which broker a command talks to: the --broker URL it was given (checked,
with the state folder, before anything is said or started), or a private
Mosquitto started for the command and stopped after it; and one line at
once when nothing listens at a given URL.

Used by `esp32emu run`, `fleet` and `serial`; no board code here.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import replace
from pathlib import Path

from emulator.broker.mosquitto import OBSERVER_BACKLOG, Broker
from emulator.validation import BrokerURL, parse_broker_url
from emulator.validation import state_dir as check_state_dir


def check_inputs(url: str | None, state_dir: Path, credentials: bool = False) -> BrokerURL | None:
    """The --broker URL parsed (None: none given) and `state_dir` checked to be
    a writable folder: a UsageError before a command says or starts anything."""
    parsed = None if url is None else parse_broker_url(url, credentials=credentials)
    check_state_dir(state_dir)
    return parsed


@contextlib.contextmanager
def broker_for(url: str | None, state_dir: Path, say=lambda msg: print(msg, file=sys.stderr, flush=True),
               credentials: bool = False):
    """Yield the BrokerURL to use; start a private Mosquitto when url is None.
    Checks the URL (with user:password@ when the caller's boards and observer
    log in with `credentials`) and that `state_dir` is a writable folder first."""
    parsed = check_inputs(url, state_dir, credentials)
    if parsed is not None:
        yield parsed
        return
    broker = Broker(state_dir / "broker", extra_config=OBSERVER_BACKLOG)
    broker.start()
    say(f"esp32emu: started a private Mosquitto at {broker.url} (config and log in {broker.workdir})")
    try:
        yield replace(parse_broker_url(broker.url), broker=broker)
    finally:
        broker.stop()


def say_if_refused(url: BrokerURL) -> None:
    """One line on stderr at once when nothing listens at a given --broker
    (the board's console says it too; a vm=micropython board names its link
    proxy's port there) -- the board keeps retrying with backoff."""
    import socket

    if url.broker is not None:
        return  # ours: listening
    try:
        socket.create_connection((url.host, url.port), timeout=2).close()
    except ConnectionRefusedError:
        print(f"esp32emu: connection refused by {url.host}:{url.port} (the board keeps retrying)",
              file=sys.stderr, flush=True)
    except OSError:
        pass  # slow or unreachable: the board's console says what it sees
