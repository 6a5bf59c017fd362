"""A private Eclipse Mosquitto for the emulator, the CLI and the tests.

`Broker` writes a `mosquitto.conf` into its own work directory, runs
`mosquitto -c mosquitto.conf` as a child process in its own process group and
only reports "started" once the broker has answered a real MQTT CONNECT with a
CONNACK. It can be stopped gracefully (SIGTERM: Mosquitto sends the Wills and
saves persistence), killed (SIGKILL: Wills are lost), paused (SIGSTOP: the
kernel still accepts TCP connections but nothing answers) and restarted on the
same port.

This module does no logging setup, imports no MQTT client library and knows
nothing about the CLI: the few raw MQTT 3.1.1 bytes it needs are built in
`emulator/broker/probe.py`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Iterable

from emulator.broker.certs import BACKEND_CN, BACKEND_IDENTITIES, backend_names
from emulator.broker.probe import mqtt_connect_rc

__all__ = [
    "OBSERVER_BACKLOG",
    "Broker",
    "BrokerError",
    "TlsConfig",
    "acl_text",
    "find_mosquitto",
    "free_port",
    "mosquitto_version",
]

# What goes into mosquitto.log by default: everything but `debug`, which logs
# every PINGREQ/PUBLISH and grows without bound with a large fleet.
DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information", "subscribe", "unsubscribe")

_MOSQUITTO_FALLBACKS = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/usr/local/bin/mosquitto")


class BrokerError(RuntimeError):
    """Mosquitto is missing, would not start, died, or did not answer in time."""


# A private broker's backlog per client. Mosquitto 2.0 keeps at most 1,000
# messages queued for a client beyond its in-flight window and drops the rest
# silently ("Outgoing messages are being dropped for client ..."). A fleet's
# observer is one client that gets every board's births (QoS 1) and
# telemetry: while it falls behind for a moment (10,000 boards booting at
# 500/s on a busy machine), the default would drop births and telemetry it
# counts, and a board would look never online or lossy. The backlog is
# bounded by what the observer is behind, not by the fleet.
OBSERVER_BACKLOG = ("max_queued_messages 1000000",)


@dataclass(frozen=True)
class TlsConfig:
    """Mutual-TLS listener settings (`esp32emu broker --tls`, TLS tests).

    With `use_identity_as_username` the client certificate's CN becomes the
    MQTT username, so an ACL line `pattern readwrite devices/%u/#` confines
    each device to its own topics. Unless `acl_file` names one, the broker
    writes that ACL itself (`acl_text`) for topic prefix `acl_prefix`, giving
    the `backend_users` identities fleet-wide rights; `acl_prefix=None`
    means no ACL at all (every valid certificate may use every topic).

    `bind_client_id` (on by default) adds `use_username_as_clientid true`:
    the client id becomes the certificate's CN, so one certificate cannot
    take over another device's session by connecting with its client id
    (the broker renames it to its own). Each backend client therefore holds
    its own certificate (`certs.BACKEND_IDENTITIES`, `esp32emu certs
    --backend NAME`); `from_pki` gives every one the PKI holds fleet-wide
    rights, and the well-known names always (a client may issue its own
    identity on demand after the broker started).
    """

    cafile: str | os.PathLike[str]
    certfile: str | os.PathLike[str]
    keyfile: str | os.PathLike[str]
    require_certificate: bool = True
    use_identity_as_username: bool = True
    acl_file: str | os.PathLike[str] | None = None
    acl_prefix: str | None = "devices"
    backend_users: tuple[str, ...] = (BACKEND_CN, *BACKEND_IDENTITIES)
    bind_client_id: bool = True

    @classmethod
    def from_pki(cls, directory: str | os.PathLike[str], **options) -> "TlsConfig":
        """The broker side of an `esp32emu certs` directory (ca.crt, broker.crt/.key)."""
        root = Path(directory)
        for name in ("ca.crt", "broker.crt", "broker.key"):
            if not (root / name).is_file():
                raise BrokerError(f"{root / name} is missing: run `esp32emu certs` first")
        options.setdefault("backend_users", tuple(dict.fromkeys((BACKEND_CN, *BACKEND_IDENTITIES, *backend_names(root)))))
        return cls(root / "ca.crt", root / "broker.crt", root / "broker.key", **options)

    def listener_lines(self) -> list[str]:
        lines = [
            f"cafile {Path(self.cafile).resolve()}",
            f"certfile {Path(self.certfile).resolve()}",
            f"keyfile {Path(self.keyfile).resolve()}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
            f"use_identity_as_username {'true' if self.use_identity_as_username else 'false'}",
        ]
        if self.bind_client_id:
            lines.append("use_username_as_clientid true")
        if self.acl_file is not None:
            lines.append(f"acl_file {Path(self.acl_file).resolve()}")
        return lines

    def acl_text(self) -> str | None:
        """The generated ACL (None when `acl_file` is given or ACLs are off)."""
        if self.acl_file is not None or self.acl_prefix is None:
            return None
        return acl_text(self.acl_prefix, self.backend_users)


def acl_text(prefix: str = "devices", backend_users: Iterable[str] = (BACKEND_CN, *BACKEND_IDENTITIES)) -> str:
    """A Mosquitto ACL: each device (username = certificate CN) may read and
    write only `<prefix>/<its id>/#`; backend identities may use the whole
    fleet's topics and read `$SYS`. Anything not granted is denied."""
    lines = [
        "# written by esp32emu (emulator/broker/mosquitto.py); regenerated on every start",
        "# devices: the certificate CN is the username (use_identity_as_username)",
        f"pattern readwrite {prefix}/%u/#",
    ]
    for user in backend_users:
        lines += ["", f"user {user}", f"topic readwrite {prefix}/#", "topic read $SYS/#"]
    return "\n".join(lines) + "\n"


def find_mosquitto() -> str:
    """Path of the mosquitto binary (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in _MOSQUITTO_FALLBACKS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise BrokerError("mosquitto not found: apt-get install -y mosquitto")


def mosquitto_version(binary: str | None = None) -> tuple[int, int, int]:
    """(major, minor, patch) of the installed Mosquitto, from `mosquitto -h`.

    Behaviour differs by patch release: e.g. `max_keepalive` refuses MQTT
    3.1.1 clients (CONNACK 2) only since 2.0.12; 2.0.11 (Debian 11/12)
    accepts them with the keepalive they asked for.
    """
    out = subprocess.run(
        [binary or find_mosquitto(), "-h"], capture_output=True, text=True, timeout=10
    )
    match = re.search(r"mosquitto version (\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if match is None:
        raise BrokerError(f"cannot read mosquitto version from: {(out.stdout + out.stderr)[:200]!r}")
    major, minor, patch = (int(g) for g in match.groups())
    return major, minor, patch


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, release it).

    Another process may take it before we use it; `Broker.start` retries on
    "address in use" when it picked the port itself.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# --- the broker process --------------------------------------------------


class Broker:
    """One private Mosquitto process with its config, log and persistence in `workdir`."""

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        persistence: bool = False,
        max_keepalive: int | None = None,
        users: dict[str, str] | None = None,
        password_file: str | os.PathLike[str] | None = None,
        extra_config: Iterable[str] = (),
        tls: TlsConfig | None = None,
        log_to_file: bool = True,
        log_types: Iterable[str] = DEFAULT_LOG_TYPES,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.host = host
        self._fixed_port = port is not None
        self._port = port
        self.persistence = persistence
        self.max_keepalive = max_keepalive
        self.users = dict(users) if users else None
        self.password_file = Path(password_file).resolve() if password_file else None
        self.extra_config = list(extra_config)
        self.tls = tls
        self.log_to_file = log_to_file
        # "notice" carries the "mosquitto version X running" line start() waits for.
        types = tuple(log_types)
        self.log_types = types if ("notice" in types or "all" in types) else types + ("notice",)
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._binary: str | None = None
        self._log_marks = (0, 0)  # log/stderr sizes when the current process was launched

    # ----- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise BrokerError("broker has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "mosquitto.stderr"

    # ----- config

    def config_text(self) -> str:
        """The mosquitto.conf this broker runs with (port must be known)."""
        lines = [
            "# written by esp32emu (emulator/broker/mosquitto.py); regenerated on every start",
            f"listener {self.port} {self.host}",
        ]
        if self.tls is not None:
            lines += self.tls.listener_lines()
            if self.tls.acl_text() is not None:
                lines.append(f"acl_file {self._acl_path()}")
        if self.users is not None or self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self._password_path()}"]
        elif self.tls is not None:
            lines.append("allow_anonymous false")
        else:
            lines.append("allow_anonymous true")
        if os.geteuid() == 0:
            # As root Mosquitto would drop to user "mosquitto", which cannot
            # write our log and persistence files in a root-owned workdir.
            lines.append("user root")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "persistence_file mosquitto.db",
            ]
        else:
            lines.append("persistence false")
        if self.max_keepalive is not None:
            lines.append(f"max_keepalive {int(self.max_keepalive)}")
        if self.log_to_file:
            lines.append(f"log_dest file {self.log_path}")
        else:
            lines.append("log_dest stderr")
        lines += [f"log_type {t}" for t in self.log_types]
        lines += [
            "connection_messages true",
            "log_timestamp true",
            "set_tcp_nodelay true",
        ]
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def _acl_path(self) -> Path:
        return self.workdir / "acl"

    def _write_acl_file(self) -> None:
        text = self.tls.acl_text() if self.tls is not None else None
        if text is not None:
            self._acl_path().write_text(text)

    def _password_path(self) -> Path:
        return self.password_file if self.password_file is not None else self.workdir / "passwd"

    def _write_password_file(self) -> None:
        if self.users is None:
            return
        path = self.workdir / "passwd"
        path.write_text("".join(f"{user}:{password}\n" for user, password in self.users.items()))
        path.chmod(0o600)
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        if not os.access(tool, os.X_OK):
            raise BrokerError("mosquitto_passwd not found: apt-get install -y mosquitto")
        result = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"mosquitto_passwd -U failed: {result.stderr.strip()}")

    # ----- lifecycle

    def start(self, timeout: float = 10.0) -> "Broker":
        """Start Mosquitto and return once it answers CONNECT with CONNACK."""
        if self.running:
            raise BrokerError(f"broker already running (pid {self.pid}) at {self.url}")
        if self._binary is None:
            self._binary = find_mosquitto()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_password_file()
        self._write_acl_file()
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            if not self._fixed_port and (self._port is None or attempt > 0):
                self._port = free_port(self.host)
            try:
                self._launch_and_wait(timeout)
                return self
            except _AddressInUse:
                if attempt == attempts - 1:
                    raise BrokerError(
                        f"port {self._port} on {self.host} is in use\n{self._log_tail()}"
                    ) from None
        raise AssertionError("unreachable")

    def _launch_and_wait(self, timeout: float) -> None:
        self.config_path.write_text(self.config_text())
        self._log_marks = self._log_sizes()
        assert self._binary is not None
        with open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
                start_new_session=True,  # own process group: Ctrl-C goes to us, not it
            )
        self._paused = False
        try:
            self.wait_accepting(timeout)
        except BaseException:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            raise

    def wait_accepting(self, timeout: float = 10.0) -> None:
        """Block until the broker answers a real CONNECT, or raise BrokerError."""
        proc = self._proc
        if proc is None:
            raise BrokerError("broker not started")
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        probe = 0
        while True:
            code = proc.poll()
            if code is not None:
                tail = self._log_tail()
                if "Address already in use" in self._launch_log_text() and not self._fixed_port:
                    raise _AddressInUse()
                raise BrokerError(f"mosquitto exited with status {code} during start\n{tail}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(
                    f"mosquitto (pid {proc.pid}) did not accept MQTT on {self.host}:{self.port} "
                    f"within {timeout:g} s (last error: {last_error})\n{self._log_tail()}"
                )
            probe += 1
            # Only this launch's "running" line counts: a probe alone could be
            # answered by another broker that already holds the port.
            started = _RUNNING_LINE.search(self._launch_log_text()) is not None
            try:
                if not started:
                    raise ConnectionError("mosquitto has not logged 'running' yet")
                if self.tls is not None:
                    # The probe holds no client certificate: an accepted TCP
                    # connection is the best evidence available here.
                    socket.create_connection((self.host, self.port), timeout=min(1.0, remaining)).close()
                else:
                    mqtt_connect_rc(
                        self.host,
                        self.port,
                        client_id=f"esp32emu-probe-{os.getpid()}-{probe}",
                        timeout=min(1.0, remaining),
                    )
                if proc.poll() is None:
                    return  # any CONNACK, even "not authorized", means it speaks MQTT
            except OSError as exc:
                last_error = exc
            # Not up yet: give the child a moment without spinning.
            try:
                proc.wait(timeout=min(0.05, max(remaining, 0.0)))
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout: float = 10.0) -> int | None:
        """Graceful stop (SIGTERM): Mosquitto sends Wills and saves persistence.

        Falls back to SIGKILL after `timeout`. Returns the exit status.
        """
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        proc.send_signal(signal.SIGTERM)
        if self._paused:
            proc.send_signal(signal.SIGCONT)
            self._paused = False
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def kill(self) -> int | None:
        """SIGKILL: no Wills, nothing saved since the last autosave."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc is not None else None
        proc.kill()
        self._paused = False
        return proc.wait()

    def pause(self) -> None:
        """SIGSTOP: TCP connects still complete (kernel backlog) but nothing answers."""
        if not self.running or self._proc is None:
            raise BrokerError("cannot pause: broker not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if not self.running or self._proc is None:
            raise BrokerError("cannot resume: broker not running")
        self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self, graceful: bool = True, timeout: float = 10.0) -> "Broker":
        """Stop (SIGTERM, or SIGKILL when not graceful) and start again on the same port."""
        if graceful:
            self.stop(timeout=timeout)
        else:
            self.kill()
        self._fixed_port = True  # clients must find it where it was
        return self.start(timeout=timeout)

    # ----- logs

    def log_text(self) -> str:
        """Everything Mosquitto wrote to its log file and stderr so far."""
        parts = []
        for path in (self.log_path, self.stderr_path):
            try:
                parts.append(path.read_text(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def _log_sizes(self) -> tuple[int, int]:
        sizes = []
        for path in (self.log_path, self.stderr_path):
            try:
                sizes.append(path.stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
        return sizes[0], sizes[1]

    def _launch_log_text(self) -> str:
        """What the current process logged (log file and stderr) since it was launched."""
        parts = []
        for path, mark in zip((self.log_path, self.stderr_path), self._log_marks):
            try:
                with open(path, "rb") as f:
                    f.seek(mark)
                    parts.append(f.read().decode(errors="replace"))
            except FileNotFoundError:
                pass
        return "".join(parts)

    def _log_tail(self, lines: int = 20) -> str:
        tail = self.log_text().splitlines()[-lines:]
        if not tail:
            return "(mosquitto wrote no log)"
        return "mosquitto log (tail):\n" + "\n".join("  " + line for line in tail)

    # ----- context manager

    def __enter__(self) -> "Broker":
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        where = f"{self.host}:{self._port}" if self._port is not None else self.host
        return f"<Broker {where} {state} pid={self.pid}>"


_RUNNING_LINE = re.compile(r"mosquitto version \S+ running")


class _AddressInUse(Exception):
    """Internal: the port picked by free_port() was taken before Mosquitto bound it."""

