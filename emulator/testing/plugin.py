"""The esp32emu pytest plugin: test your own firmware without hardware.

Installed with the package (entry point `pytest11`), so `pytest` in any
project that has esp32emu installed gets these fixtures:

- `mosquitto`: a private Mosquitto on a free loopback port (per test, or
  one per session with `--esp32emu-broker-scope=session`); `.url`,
  `.restart()`, `.kill()`, `.pause()`/`.resume()`. `mosquitto_tls`: the
  same with mutual TLS and a throwaway PKI (`.pki`).
- `esp32emu_prefix`: the topic prefix of the test's boards: `devices`, or
  on the session's shared broker one of the test's own (`devices-<n>`), so
  an earlier test's retained births and late Wills never reach a later
  test and its observer sees only its own test's traffic.
- `board` / `boards(n)`: emulated boards running the firmware folder
  (marker `firmware=PATH` or ini `esp32emu_firmware`, both relative to the
  rootdir, or `--firmware PATH`; default the firmware bundled with esp32emu),
  not yet booted so `.config` can be edited: `board.boot()`.
- `observer`: a paho-mqtt client on `mosquitto`, subscribed to `#`, with
  `expect(topic, predicate, timeout)` and `collect(...)`
  (`esp32emu_observer` is the same fixture under a name no conftest
  overrides; `observer_factory(broker)` makes more).
- `esp32emu`: the `Emulator` (event loop thread) the boards live on.

Keepalive, telemetry interval, time scale (a factor on every
`expect`/`collect` timeout, for slow CI runners), board backend and heap
come from, in order: the marker
`@pytest.mark.esp32emu(keepalive=2, interval=1, time_scale=2, vm="micropython", heap="100k")`,
the options `--esp32emu-keepalive` / `--esp32emu-interval` /
`--esp32emu-time-scale` / `--esp32emu-vm` / `--esp32emu-heap`, the ini
options `esp32emu_keepalive` / ... / `esp32emu_vm` / `esp32emu_heap`, and
the defaults (2 s, 1 s, 1.0, cpython, `emulator.board.vm.interpreter.DEFAULT_HEAP`).
`boards(n, vm=..., heap=...)` overrides them per call, and
`@pytest.mark.parametrize("esp32emu_vm", ["cpython", "micropython"])` runs a
test on both backends. A vm=micropython board is one real MicroPython
process (emulator/board/vm/).

When a test fails, its report gets one section per board (console tail,
link and power log) and one per observer (its last messages).

The classes live in `emulator/testing/handles.py`; this module only makes fixtures.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from emulator.board.loader import FirmwareImage
from emulator.broker.mosquitto import Broker, TlsConfig
from emulator.firmware.folder import FirmwareError, bundled_firmware
from emulator.firmware.folder import check as check_firmware
from emulator.observe.connection import backend_tls
from emulator.testing.handles import BoardHandle, ObserverClient, backend_name
from emulator.testing.harness import Emulator

_REPORTABLE = pytest.StashKey[list]()
_observer_ids = itertools.count(1)
# The backend identities the observers of one test hold on a TLS broker, in turn.
TEST_BACKENDS = tuple(f"backend-test-{n}" for n in range(1, 9))
_test_prefixes = itertools.count(1)

DEFAULTS = {"keepalive": 2, "interval": 1, "time_scale": 1.0, "vm": "cpython", "heap": None}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("esp32emu", "esp32emu: emulated ESP32 boards against a private Mosquitto")
    group.addoption("--firmware", dest="esp32emu_firmware", metavar="PATH", default=None,
                    help="firmware folder the emulated boards boot, relative to the working directory "
                         "(default: ini esp32emu_firmware, else the firmware bundled with esp32emu)")
    group.addoption("--esp32emu-keepalive", dest="esp32emu_keepalive", type=float, default=None,
                    help="MQTT keepalive (s) written into every board's config.json (default 2)")
    group.addoption("--esp32emu-interval", dest="esp32emu_interval", type=float, default=None,
                    help="telemetry interval (s) for every board (default 1)")
    group.addoption("--esp32emu-time-scale", dest="esp32emu_time_scale", type=float, default=None,
                    help="multiply every expect/collect timeout (slow CI machines; default 1.0)")
    group.addoption("--esp32emu-vm", dest="esp32emu_vm", default=None, choices=("cpython", "micropython"),
                    help="board backend: cpython (the firmware under CPython with fakes; default) or "
                         "micropython (one real MicroPython unix-port process per board)")
    group.addoption("--esp32emu-heap", dest="esp32emu_heap", default=None,
                    help="MicroPython heap of vm=micropython boards, e.g. 100k")
    group.addoption("--esp32emu-broker-scope", dest="esp32emu_broker_scope", default=None,
                    choices=("function", "session"),
                    help="one private Mosquitto per test (default) or one for the whole session")
    parser.addini("esp32emu_firmware", "firmware folder for emulated boards (relative to the rootdir)")
    parser.addini("esp32emu_keepalive", "MQTT keepalive (s) for emulated boards")
    parser.addini("esp32emu_interval", "telemetry interval (s) for emulated boards")
    parser.addini("esp32emu_time_scale", "factor on every expect/collect timeout")
    parser.addini("esp32emu_broker_scope", "function (default) or session")
    parser.addini("esp32emu_vm", "board backend: cpython (default) or micropython")
    parser.addini("esp32emu_heap", "MicroPython heap of vm=micropython boards (e.g. 100k)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "esp32emu(keepalive=S, interval=S, time_scale=F, firmware=PATH, vm=cpython|micropython, heap=100k): "
        "settings for the esp32emu fixtures",
    )


# -- settings --------------------------------------------------------------------------


def _setting(request: pytest.FixtureRequest, name: str) -> Any:
    marker = request.node.get_closest_marker("esp32emu")
    if marker is not None and name in marker.kwargs:
        return marker.kwargs[name]
    value = request.config.getoption(f"esp32emu_{name}")
    if value is None:
        value = request.config.getini(f"esp32emu_{name}") or None
    if value is None:
        return DEFAULTS.get(name)
    return value


def _number(value: Any) -> int | float:
    f = float(value)
    return int(f) if f.is_integer() else f


def firmware_dir(config: pytest.Config, marker_value: str | None = None) -> Path:
    """The marker's `firmware=` and the ini key (both relative to the
    rootdir), else --firmware (relative to the working directory, like any
    command-line path), else the firmware bundled with esp32emu
    (firmware_dir.bundled_firmware)."""
    if marker_value:
        return (config.rootpath / marker_value).resolve()
    opt = config.getoption("esp32emu_firmware")
    if opt:
        return Path(opt).resolve()
    ini = config.getini("esp32emu_firmware")
    if ini:
        return (config.rootpath / ini).resolve()
    return bundled_firmware()


def _checked_firmware(folder: Path) -> Path:
    """`folder`, or the test fails with one line naming the file and line
    that keep it from booting (firmware_dir.check)."""
    try:
        check_firmware(folder)
    except FirmwareError as e:
        problem = str(e)
    else:
        return folder
    pytest.fail(f"esp32emu: {problem}", pytrace=False)


def _broker_scope(config: pytest.Config) -> str:
    return config.getoption("esp32emu_broker_scope") or config.getini("esp32emu_broker_scope") or "function"


def _remember(request: pytest.FixtureRequest, thing: Any) -> None:
    request.node.stash.setdefault(_REPORTABLE, []).append(thing)


# -- brokers ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def _esp32emu_session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Broker]]:
    holder: list[Broker] = []  # started on first use only
    yield holder
    for b in holder:
        b.stop()


@pytest.fixture
def mosquitto(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Broker]:
    """A running private Mosquitto (anonymous access) on a free loopback port."""
    if _broker_scope(request.config) == "session":
        holder = request.getfixturevalue("_esp32emu_session_broker")
        if not holder:
            holder.append(Broker(request.config._tmp_path_factory.mktemp("mosquitto")).start())  # type: ignore[attr-defined]
        broker = holder[0]
        if broker.paused:
            broker.resume()
        if not broker.running:
            broker.start()
        yield broker
        return
    broker = Broker(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


def _shared(request: pytest.FixtureRequest, broker: Broker) -> bool:
    """Is `broker` the session's shared Mosquitto?"""
    if _broker_scope(request.config) != "session":
        return False
    return any(broker is b for b in request.getfixturevalue("_esp32emu_session_broker"))


@pytest.fixture
def esp32emu_prefix(request: pytest.FixtureRequest) -> str:
    """The topic prefix of this test's boards on `mosquitto`: "devices", or,
    with --esp32emu-broker-scope=session, one of this test's own
    ("devices-<n>"): retained messages and late Wills of earlier tests stay
    under theirs. `board.topic(...)` spells it."""
    if _broker_scope(request.config) == "session":
        return f"devices-{next(_test_prefixes)}"
    return "devices"


@pytest.fixture(scope="session")
def esp32emu_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway dev PKI (CA, broker, backends: esp32emu's own and one per
    observer a test makes, `TEST_BACKENDS`); device certificates are made on demand."""
    from emulator.broker import certs
    root = tmp_path_factory.mktemp("pki")
    certs.make_pki(root, backends=(*certs.BACKEND_IDENTITIES, *TEST_BACKENDS))
    return root


@pytest.fixture
def mosquitto_tls(tmp_path: Path, esp32emu_pki: Path) -> Iterator[Broker]:
    """A private Mosquitto with mutual TLS only (ACL: each device its own topics);
    `.pki` is the PKI directory. Boards made with `boards(n, broker=mosquitto_tls)`
    get their certificates."""
    broker = Broker(tmp_path / "mosquitto-tls", tls=TlsConfig.from_pki(esp32emu_pki)).start()
    broker.pki = esp32emu_pki  # type: ignore[attr-defined]
    yield broker
    broker.stop()


# -- observers --------------------------------------------------------------------------------


@pytest.fixture
def observer_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., ObserverClient]]:
    """`observer_factory(broker, subscribe=...)`: connected observers, closed at teardown.
    `subscribe` defaults to everything of this test: "#", or "<esp32emu_prefix>/#"
    on the session's shared broker; None: no subscription.
    On a TLS broker each holds a backend certificate of its own (the broker
    makes its CN the client id: two sharing one would disconnect each other)."""
    made: list[ObserverClient] = []
    scale = float(_setting(request, "time_scale"))

    def make(broker: Broker, subscribe: Any = ..., client_id: str | None = None) -> ObserverClient:
        if subscribe is ...:
            subscribe = f"{request.getfixturevalue('esp32emu_prefix')}/#" if _shared(request, broker) else "#"
        tls = None
        pki = getattr(broker, "pki", None)
        if broker.tls is not None and pki is not None:
            tls = backend_tls(pki, TEST_BACKENDS[len(made) % len(TEST_BACKENDS)])
        obs = ObserverClient(broker.host, broker.port, client_id or f"esp32emu-observer-{os.getpid()}-{next(_observer_ids)}",
                             tls=tls, scale=scale)
        made.append(obs)
        _remember(request, obs)
        obs.connect()
        if subscribe:
            obs.subscribe(subscribe)
        return obs

    yield make
    for obs in made:
        obs.close()


@pytest.fixture
def esp32emu_observer(observer_factory: Callable[..., ObserverClient], mosquitto: Broker) -> ObserverClient:
    """A paho-mqtt observer on `mosquitto`, subscribed to everything of this
    test (`#`; on the session's shared broker `<esp32emu_prefix>/#`)."""
    return observer_factory(mosquitto)


@pytest.fixture
def observer(esp32emu_observer: ObserverClient) -> ObserverClient:
    """The same as `esp32emu_observer` (a conftest may define its own `observer`)."""
    return esp32emu_observer


# -- boards -------------------------------------------------------------------------------------


@pytest.fixture
def esp32emu(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Emulator]:
    """The emulator (one event loop thread) the test's boards live on."""
    marker = request.node.get_closest_marker("esp32emu")
    folder = _checked_firmware(firmware_dir(request.config, marker.kwargs.get("firmware") if marker else None))
    with Emulator(tmp_path / "boards", FirmwareImage(folder)) as emu:
        yield emu


@pytest.fixture
def esp32emu_vm(request: pytest.FixtureRequest) -> str:
    """The backend of this test's boards, "cpython" or "micropython" (marker,
    option, ini). Parametrize it to run one test on both:
    `@pytest.mark.parametrize("esp32emu_vm", ["cpython", "micropython"])`."""
    return backend_name(_setting(request, "vm"))


@pytest.fixture
def boards(request: pytest.FixtureRequest, esp32emu: Emulator, esp32emu_vm: str) -> Callable[..., list[BoardHandle]]:
    """`boards(n, broker=None, vm=None, heap=None, **config)`: n boards (ids
    dev-00001...) not yet booted, their config.json pointed at `broker` (default:
    the `mosquitto` fixture) with the test's keepalive and interval; `config`
    overrides any key. `vm="micropython"` (or the marker/option/ini setting)
    runs each board on the real MicroPython interpreter with `heap`."""
    counter = itertools.count(len(esp32emu.boards) + 1)
    scale = float(_setting(request, "time_scale"))

    def make(n: int = 1, broker: Broker | None = None, vm: str | None = None, heap: str | None = None,
             **config: Any) -> list[BoardHandle]:
        backend = backend_name(vm or esp32emu_vm)
        if backend == "micropython":
            from emulator.board.vm.interpreter import DEFAULT_HEAP

            heap = heap or _setting(request, "heap") or DEFAULT_HEAP
        if broker is None:
            broker = request.getfixturevalue("mosquitto")
        made = []
        for _ in range(n):
            index = next(counter)
            device_id = f"dev-{index:05d}"
            cfg: dict[str, Any] = {"keepalive": _number(_setting(request, "keepalive")),
                                   "interval": _number(_setting(request, "interval")),
                                   "backoff": {"base_ms": 200, "cap_ms": 2000}}
            if _shared(request, broker):  # this test's own topics on the session's broker
                cfg["prefix"] = request.getfixturevalue("esp32emu_prefix")
            cfg.update(config)
            cfg["broker"] = {"host": broker.host, "port": broker.port, **config.get("broker", {})}
            pki = getattr(broker, "pki", None) if broker.tls is not None else None
            if pki is not None:
                from emulator.broker import certs
                certs.ensure_devices(pki, [device_id])
                cfg["broker"]["tls"] = True
            handle = BoardHandle(esp32emu, device_id, cfg, seed=index, scale=scale, certs=pki, vm=backend, heap=heap)
            _remember(request, handle)
            made.append(handle)
        return made

    return make


@pytest.fixture
def board(boards: Callable[..., list[BoardHandle]]) -> BoardHandle:
    """One board (dev-00001) on `mosquitto`, not yet booted: edit `.config`, then `.boot()`."""
    return boards(1)[0]


# -- failure reports -------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed or report.when == "teardown":
        return
    for thing in item.stash.get(_REPORTABLE, []):
        try:
            if isinstance(thing, BoardHandle):
                report.sections.append((f"esp32emu board {thing.id}", thing.report()))
            elif isinstance(thing, ObserverClient):
                report.sections.append(("esp32emu observer", thing.report()))
        except Exception as e:  # noqa: BLE001 - a report must never hide the failure
            report.sections.append(("esp32emu", f"(could not describe {thing!r}: {e})"))
