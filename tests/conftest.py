"""Shared fixtures: a private Mosquitto per test and paho observers on it."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from emulator.broker.mosquitto import Broker
from emulator.testing.harness import Emulator
from tests.helpers import Observer

_observer_ids = itertools.count(1)


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    """Make started brokers with options: `broker_factory(persistence=True, users={...})`.

    Each gets its own work directory under tmp_path and is stopped at teardown.
    """
    made: list[Broker] = []

    def make(**options: Any) -> Broker:
        workdir = tmp_path / f"broker{len(made)}"
        broker = Broker(workdir, **options)
        made.append(broker)
        broker.start()
        return broker

    yield make
    for broker in reversed(made):
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    """A running Mosquitto on a free loopback port, anonymous access allowed."""
    return broker_factory()


@pytest.fixture
def observer() -> Iterator[Callable[..., Observer]]:
    """Make connected observers: `obs = observer(broker); obs.subscribe("devices/#")`.

    Every observer is disconnected at teardown.
    """
    made: list[Observer] = []

    def make(broker: Broker, client_id: str | None = None, keepalive: int = 30) -> Observer:
        client_id = client_id if client_id is not None else f"observer-{next(_observer_ids)}"
        obs = Observer(broker.host, broker.port, client_id=client_id, keepalive=keepalive)
        made.append(obs)
        return obs.connect()

    yield make
    for obs in made:
        obs.close()


@pytest.fixture
def emu(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Emulator]:
    """Emulated boards on a background event loop; all stopped at teardown.
    Indirectly parametrized with a backend (`tests.boards.both_backends`),
    its add_board makes boards of that backend."""
    vm = getattr(request, "param", "cpython")
    if vm == "micropython":
        from emulator.board.vm.interpreter import DEFAULT_HEAP

        with Emulator(tmp_path / "boards", vm=vm, heap=DEFAULT_HEAP) as e:
            yield e
        return
    with Emulator(tmp_path / "boards") as e:
        yield e
