"""The two brokers besides Mosquitto that `esp32emu conformance` is pinned
against, each from its package registry, on a free loopback port:

- amqtt 0.12.1 (PyPI) runs from its own venv, `.venv-amqtt` (its pins, e.g.
  websockets 15, clash with the dashboard's; `make setup` makes it, and
  `amqtt_binary()` makes it when missing, under a lock);
- aedes 1.2.0 (npm, a devDependency in package.json) runs as
  `node tests/aedes_broker.mjs PORT`.

Each `Process` is started in its own process group, waited on until it
answers a real MQTT CONNECT with a CONNACK, and stopped (SIGTERM, then
SIGKILL) at the end.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from emulator.broker.mosquitto import free_port
from emulator.broker.probe import mqtt_connect_rc

REPO = Path(__file__).resolve().parent.parent
AMQTT_VERSION = "0.12.1"
AMQTT_VENV = REPO / ".venv-amqtt"
AEDES_SCRIPT = REPO / "tests" / "aedes_broker.mjs"


def amqtt_binary() -> Path:
    """`.venv-amqtt/bin/amqtt`, made with pip when missing (what `make setup` does)."""
    binary = AMQTT_VENV / "bin" / "amqtt"
    done = AMQTT_VENV / ".setup-done"
    if done.exists() and binary.exists():
        return binary
    REPO.joinpath(".venv-amqtt.lock").touch()
    with open(REPO / ".venv-amqtt.lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one xdist worker builds it, the others wait
        if not (done.exists() and binary.exists()):
            base = getattr(sys, "_base_executable", None) or sys.executable
            subprocess.run([base, "-m", "venv", str(AMQTT_VENV)], check=True, timeout=120)
            subprocess.run([str(AMQTT_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet",
                            f"amqtt=={AMQTT_VERSION}"], check=True, timeout=300)
            done.touch()
    return binary


class Process:
    """A broker child process on 127.0.0.1:`port`."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name, self.port, self.host = name, port, "127.0.0.1"
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         cwd=REPO, start_new_session=True)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def wait_accepting(self, timeout: float = 30.0) -> "Process":
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                if mqtt_connect_rc(self.host, self.port, client_id=f"probe-{self.name}", timeout=1.0) == 0:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not answer CONNECT within {timeout:g} s:\n"
                                   f"{self.log.read_text()[-2000:]}")
            time.sleep(0.1)  # nothing to wait on but the port: a child process of another runtime

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def start_amqtt(workdir: Path) -> Process:
    port = free_port()
    config = workdir / "amqtt.yaml"
    config.write_text(
        "listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:%d\n"
        "plugins:\n  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n" % port)
    return Process("amqtt", [str(amqtt_binary()), "-c", str(config)], port, workdir).wait_accepting()


def start_aedes(workdir: Path) -> Process:
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "aedes").is_dir():
        raise RuntimeError("aedes needs node and node_modules/aedes: run `make setup` (npm ci)")
    port = free_port()
    return Process("aedes", [node, str(AEDES_SCRIPT), str(port)], port, workdir).wait_accepting()
