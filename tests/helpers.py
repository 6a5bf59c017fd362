"""Test helpers shared by the suites: the MQTT observer (the pytest
plugin's paho-mqtt client with index-based waits) and `load_tool`.

Every wait has a deadline and sleeps on a `threading.Condition`, never in a
polling loop; a failed wait lists what did arrive.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

from emulator.testing.handles import Message, ObserverClient

REPO_ROOT = Path(__file__).resolve().parent.parent
FIRMWARE_DIR = REPO_ROOT / "firmware"
TOOLS_DIR = REPO_ROOT / "tools"


class Observer(ObserverClient):
    """The plugin's observer (emulator.testing.handles.ObserverClient) plus the
    index-based waits the suite is written with: `wait_for(predicate,
    timeout, start)` returns the first matching message from index `start`
    on, and fails listing what did arrive."""

    def wait_for(self, predicate: Callable[[Message], bool], timeout: float = 10.0, start: int = 0) -> Message:
        deadline = time.monotonic() + timeout
        seen = start
        with self._cond:
            while True:
                for message in self._messages[seen:]:
                    if predicate(message):
                        return message
                seen = max(seen, len(self._messages))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    received = "\n".join(f"  {_line(m)}" for m in self._messages[-30:]) or "  (nothing)"
                    raise AssertionError(
                        f"no matching message within {timeout:g} s; "
                        f"received {len(self._messages)}:\n{received}"
                    )
                self._cond.wait(remaining)

    def wait_topic(self, topic: str, timeout: float = 10.0, start: int = 0) -> Message:
        return self.wait_for(lambda m: m.topic == topic, timeout, start)


def _line(m: Message) -> str:
    body = m.payload[:120].decode("utf-8", "replace")
    return f"{m.topic} qos={m.qos} retain={int(m.retain)} {body!r}"


def load_tool(name: str) -> ModuleType:
    """Import `tools/<name>.py` (tools/ is a folder of scripts, not a package)."""
    module_name = f"_tool_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, TOOLS_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
