"""`esp32emu flash`: deploy `firmware/` and one device's `config.json` (and
its TLS files) to a board running MicroPython, with mpremote.

Steps, each with an error that says what to do:
1. the port exists (else exit 2) and a MicroPython REPL answers on it
   (`probe`, with pyserial: Ctrl-C, Ctrl-B, wait for `>>> `);
2. survey the board (`mpremote exec`): free space, files, current config.json;
3. build the file set: `firmware/*.py` compiled to `.mpy` by mpy-cross (the
   default: compiled code needs less of the board's heap to load, and no
   compiler run on the board), except `boot.py`/`main.py`, which MicroPython
   runs only as source; or the `.py` sources with `mpy=False` (`--py`) and
   by default on an emulated board (`esp32emu serial`: CPython runs sources,
   not .mpy); the TLS files and `release.pub`, then `config.json` -- the current config's other keys kept,
   `id`, `broker` and `wifi` set;
4. check it fits, remove stale `.py`/`.mpy` twins, `mpremote fs cp` (which
   skips files whose sha256 already matches), then hash every file on the
   board with `hashlib.sha256` and compare;
5. `mpremote reset`.

Works the same against a real board and `esp32emu serial` (tests do that).
No argument parsing here; `cli.py` calls `flash()`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from emulator.board.vm.interpreter import VmError, compile_source
from emulator.firmware.deploy import deployed
from emulator.firmware.folder import FIRMWARE_DIR, KEEP_PY, pick_firmware
from emulator.validation import BrokerURL, UsageError, check_device_id, parse_broker_url

EMULATED = "(esp32emu)"  # in sys.implementation._machine of an emulated board
_URL_PORT = re.compile(r"^[a-z0-9+]+://")  # pyserial URLs (socket://, rfc2217://)


class FlashError(Exception):
    """The deploy failed; the message says why and what to try."""


# -- what goes onto the board ---------------------------------------------------------


def _firmware_config_module(firmware_dir: Path = FIRMWARE_DIR):
    """The firmware's config.py (pure), to validate the config.json we write:
    the deployed firmware's own when CPython can load it and it has
    validate() and ConfigError, else the bundled firmware's."""
    for folder in dict.fromkeys([Path(firmware_dir), FIRMWARE_DIR]):
        if not (folder / "config.py").is_file():
            continue
        sys.path.insert(0, str(folder))
        try:
            spec = importlib.util.spec_from_file_location("_esp32emu_fw_config", folder / "config.py")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        except Exception:
            if folder == FIRMWARE_DIR:
                raise
            continue  # MicroPython-only code: validate with the bundled firmware's rules
        finally:
            sys.path.remove(str(folder))
        if hasattr(mod, "validate") and hasattr(mod, "ConfigError"):
            return mod
    raise FlashError(f"no config.py with validate() in {firmware_dir} or {FIRMWARE_DIR}")


def board_config(
    device_id: str,
    broker: BrokerURL | None,
    wifi_ssid: str | None,
    wifi_password: str | None,
    current: dict | None,
    firmware_dir: Path = FIRMWARE_DIR,
) -> dict:
    """The config.json for this device: the board's current one (if any) with
    id, broker and WiFi set from the arguments. Raises UsageError when a
    needed value is neither given nor on the board, or a value is bad."""
    cfg = dict(current) if isinstance(current, dict) else {}
    cfg["id"] = device_id
    if broker is not None:
        cfg["broker"] = {**(cfg.get("broker") or {}), "host": broker.host, "port": broker.port, "tls": broker.tls}
    elif not isinstance(cfg.get("broker"), dict):
        raise UsageError("--broker mqtt://host:port is needed: the board has no config.json with a broker yet")
    wifi = dict(cfg.get("wifi") or {})
    if wifi_ssid is not None:
        wifi["ssid"] = wifi_ssid
    if wifi_password is not None:
        wifi["password"] = wifi_password
    if not wifi.get("ssid"):
        raise UsageError("--wifi-ssid is needed (or ESP32EMU_WIFI_SSID): the board has no WiFi configured yet")
    cfg["wifi"] = wifi
    config = _firmware_config_module(firmware_dir)
    try:
        config.validate(cfg, lambda msg: None)
    except config.ConfigError as e:
        raise UsageError(f"the config.json for {device_id} would not boot: {e}") from None
    return cfg


def compile_mpy(source: Path) -> bytes:
    """`source` as mpy-cross compiles it for a board (the VM backend's
    compiler and its content-keyed cache: the same bytes either way)."""
    return compile_text(source.name, source.read_bytes())


def compile_text(name: str, text: bytes, opt: str | None = None) -> bytes:
    """The file `name` with content `text`, compiled as `compile_mpy` does
    (`opt`: an mpy-cross optimisation level instead of the deployed one)."""
    try:
        return compile_source(name, text) if opt is None else compile_source(name, text, opt=opt)
    except VmError as e:
        raise FlashError(str(e)) from None


def build_files(
    config: dict,
    *,
    firmware_dir: Path = FIRMWARE_DIR,
    tls_files: dict[str, bytes] | None = None,
    mpy: bool = False,
    as_written: bool = False,
) -> dict[str, bytes]:
    """Board path -> content, in copy order (config.json last, so a board
    interrupted mid-deploy never boots a new config with old firmware).
    `as_written`: the sources unchanged and .mpy with line numbers (tracebacks
    name the source's functions and lines; about 7 KiB more heap), instead of
    the deployed copy (private names shortened, emulator/firmware/deploy.py)."""
    files: dict[str, bytes] = {}
    sources = {p.name: p.read_bytes() for p in sorted(Path(firmware_dir).glob("*.py"))} if as_written \
        else deployed(Path(firmware_dir))
    for name, text in sources.items():
        if mpy and name not in KEEP_PY:
            files[name[:-3] + ".mpy"] = compile_text(name, text, opt="-O0" if as_written else None)
        else:
            files[name] = text
    files.update(tls_files or {})
    files["config.json"] = (json.dumps(config, indent=2) + "\n").encode()
    return files


def stale_files(files: dict[str, bytes], on_board: dict[str, int]) -> list[str]:
    """Twins that would shadow or linger: MicroPython imports `x.py` before `x.mpy`."""
    stale = []
    for name in files:
        stem, ext = os.path.splitext(name)
        twin = stem + (".py" if ext == ".mpy" else ".mpy" if ext == ".py" else "")
        if twin != stem and twin in on_board and twin not in files:
            stale.append(twin)
    return stale


def blocks_needed(files: dict[str, bytes], on_board: dict[str, int], stale: list[str], block: int) -> int:
    """Extra filesystem blocks the deploy takes (negative: it frees some)."""

    def blocks(n: int) -> int:
        return max(1, math.ceil(n / block))

    extra = sum(blocks(len(data)) for data in files.values())
    extra -= sum(blocks(on_board[name]) for name in files if name in on_board)
    extra -= sum(blocks(on_board[name]) for name in stale)
    return extra


# -- talking to the board ------------------------------------------------------------------

SURVEY = """\
import os, sys, json
st = os.statvfs('/')
files = {}
for e in os.ilistdir('/'):
    if e[1] & 0x8000:
        files[e[0]] = e[3] if len(e) > 3 else 0
cfg = None
try:
    with open('/config.json') as f:
        cfg = json.load(f)
except Exception:
    pass
print('SURVEY' + json.dumps({'block': st[0], 'free': st[3], 'files': files, 'config': cfg, 'mpy': getattr(sys.implementation, '_mpy', 0) & 0xff, 'machine': getattr(sys.implementation, '_machine', '')}))
"""

VERIFY = """\
import hashlib, binascii
def _h(n):
    d = hashlib.sha256()
    with open(n, 'rb') as f:
        while True:
            b = f.read(512)
            if not b:
                break
            d.update(b)
    return binascii.hexlify(d.digest()).decode()
for _n in %r:
    try:
        print('SHA256', _n, _h('/' + _n))
    except OSError:
        print('SHA256', _n, '-')
"""

REMOVE = """\
import os
for _n in %r:
    try:
        os.remove('/' + _n)
    except OSError:
        pass
"""


def probe(port: str, timeout: float = 3.0) -> None:
    """A MicroPython REPL answers on `port`, or FlashError says why not."""
    import serial

    try:
        ser = serial.serial_for_url(port, baudrate=115200, timeout=0.1, do_not_open=True, exclusive=True)
        ser.dtr = False  # keep the ESP32's auto-reset circuit idle
        ser.rts = False
        ser.open()
    except (serial.SerialException, OSError, ValueError) as e:
        raise FlashError(
            f"cannot open {port}: {e} -- is another program (a serial monitor, mpremote) using it, "
            "or do you lack permission (Linux: add yourself to the 'dialout' group)?"
        ) from None
    try:
        ser.write(b"\r\x03\x03\x02")  # stop main.py; raw REPL -> friendly REPL; shows '>>> '
        seen = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen += ser.read(256)
            if b">>> " in seen or b"raw REPL" in seen:
                return
        raise FlashError(
            f"the board on {port} does not answer (no MicroPython prompt within {timeout:g} s): "
            "is MicroPython installed (see README, 'Flashing a real board'), is it the right port, "
            "and is the baud rate 115200?"
        )
    finally:
        ser.close()


class Mpremote:
    """Runs `mpremote connect PORT ...` and turns its failures into FlashErrors."""

    def __init__(self, port: str, timeout: float = 120.0, say: Callable[[str], None] = print):
        self.port = port
        self.timeout = timeout
        self.say = say

    def run(self, *args: str) -> str:
        cmd = [sys.executable, "-m", "mpremote", "connect", self.port, *args]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise FlashError(f"mpremote did not finish within {self.timeout:g} s on {self.port}") from None
        if r.returncode != 0:
            raise FlashError(self._explain(r.stdout + r.stderr))
        return r.stdout

    def exec(self, code: str) -> str:
        return self.run("exec", code)

    def _explain(self, output: str) -> str:
        text = output.strip()
        if "ENOSPC" in text or "Errno 28" in text or "No space left" in text:
            return f"the board's filesystem is full ({self.port}); remove files (`mpremote connect {self.port} fs rm :NAME`) or erase the flash"
        if "failed to access" in text:
            return f"cannot open {self.port}: it may be in use by another program (a serial monitor?)"
        if "could not enter raw repl" in text:
            return f"the board on {self.port} does not answer mpremote (no raw REPL); press its EN/RST button and retry"
        last = "\n".join(text.splitlines()[-6:])
        return f"mpremote failed on {self.port}:\n{last}"


# -- the command -----------------------------------------------------------------------------


def check_port(port: str) -> None:
    if _URL_PORT.match(port):
        return
    if not os.path.exists(port):
        hint = "`mpremote connect list` lists the serial ports" if sys.platform != "win32" else "check Device Manager"
        raise UsageError(f"serial port {port} not found: is the board plugged in? ({hint})")


def flash(
    port: str,
    device_id: str,
    broker: str | None = None,
    *,
    wifi_ssid: str | None = None,
    wifi_password: str | None = None,
    mpy: bool | None = None,
    as_written: bool = False,
    certs_dir: Path | str = "certs",
    firmware_dir: Path | str | None = None,
    reset: bool = True,
    probe_timeout: float = 3.0,
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """Deploy to the board on `port`; returns board path -> sha256 as verified.
    `firmware_dir`: the --firmware folder (emulator.firmware.folder.pick_firmware for the default)."""
    check_device_id(device_id)  # the rule the firmware and the PKI share (not the backend's name)
    url = parse_broker_url(broker) if broker else None
    check_port(port)
    # A real board has modules we do not know of: only the firmware's own imports are checked.
    firmware_dir = pick_firmware(firmware_dir, verb="flashing", say=say)
    if url is not None and url.host in ("localhost", "127.0.0.1", "::1"):
        say(f"esp32emu: note: a real board cannot reach {url.host} (this computer's loopback); use its LAN address")
    t0 = time.monotonic()
    probe(port, probe_timeout)
    mp = Mpremote(port, say=say)

    survey = _parse_survey(mp.exec(SURVEY))
    on_board: dict[str, int] = survey["files"]
    cfg = board_config(device_id, url, wifi_ssid, wifi_password, survey.get("config"), firmware_dir)
    tls_files: dict[str, bytes] = {}
    if cfg["broker"].get("tls"):
        from emulator.broker.certs import CertError, board_files

        try:
            tls_files = board_files(certs_dir, device_id)
        except CertError as e:
            raise UsageError(str(e)) from None
    release_pub = Path(certs_dir) / "release.pub"  # OTA manifests verify against it (issue 18)
    if release_pub.is_file():
        tls_files["release.pub"] = release_pub.read_bytes()
    else:
        say(f"esp32emu: note: no {release_pub}: the board will refuse OTA updates (`esp32emu certs` makes one)")
    if mpy is None:
        # .mpy unless the board is an emulated one (`esp32emu serial`): it
        # runs the .py sources with CPython and cannot execute .mpy files.
        mpy = EMULATED not in str(survey.get("machine", ""))
        if not mpy:
            say("esp32emu: note: an emulated board runs the .py sources: deploying those instead of .mpy")
    if mpy and survey.get("mpy") not in (0, 6):
        say(f"esp32emu: note: the board reports .mpy version {survey.get('mpy')}; mpy-cross emits v6")

    with tempfile.TemporaryDirectory(prefix="esp32emu-flash-") as tmp:
        stage = Path(tmp) / "stage"
        stage.mkdir()
        files = build_files(cfg, firmware_dir=firmware_dir, tls_files=tls_files, mpy=mpy, as_written=as_written)
        stale = stale_files(files, on_board)
        block = survey["block"] or 4096
        extra = blocks_needed(files, on_board, stale, block)
        if extra > survey["free"]:
            raise FlashError(
                f"the board's filesystem is full: the firmware needs {extra * block // 1024} KiB more, "
                f"{survey['free'] * block // 1024} KiB are free; remove files "
                f"(`mpremote connect {port} fs rm :NAME`) or erase the flash"
            )
        for name, data in files.items():
            (stage / name).write_bytes(data)
            if name.endswith(".key"):
                (stage / name).chmod(0o600)
        names = list(files)
        args: list[str] = []
        if stale:
            args += ["exec", REMOVE % (stale,), "+"]
        args += ["fs", "cp", *[str(stage / n) for n in names], ":", "+", "exec", VERIFY % (names,)]
        say(f"esp32emu: copying {len(names)} files to {port} (unchanged ones are skipped)")
        out = mp.run(*args)

    got = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "SHA256":
            got[parts[1]] = parts[2]
    want = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    bad = [n for n in names if got.get(n) != want[n]]
    if bad:
        raise FlashError(f"verification failed: {', '.join(bad)} on the board differ from what was sent; run flash again")
    say(f"esp32emu: verified {len(names)} files by sha256 ({time.monotonic() - t0:.1f} s)")
    if reset:
        mp.run("reset")
        scheme = "mqtts" if cfg["broker"].get("tls") else "mqtt"
        say(
            f"esp32emu: {port} reset; it comes online as {device_id} on "
            f"{scheme}://{cfg['broker']['host']}:{cfg['broker']['port']} "
            f"(watch it: esp32emu monitor --port {port})"
        )
    return got


def _parse_survey(out: str) -> dict:
    for line in out.splitlines():
        if line.startswith("SURVEY"):
            try:
                data = json.loads(line[len("SURVEY") :])
            except ValueError:
                break
            data["files"] = {str(k): int(v) for k, v in (data.get("files") or {}).items()}
            return data
    raise FlashError(f"unexpected answer from the board while surveying it: {out.strip()[-300:]!r}")
