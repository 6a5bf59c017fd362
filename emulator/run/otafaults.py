"""OTA faults for scenario files (issue 18): the board action `power_loss`
(a power cut at a flash write of the board's next update, through the flash
fake's `cut_power_after`) and the events aimed at a release server
(`target = "release"`: its `Faults`, emulator/ota/serve.py). scenario.py
parses and runs them with the rest; nothing here imports it."""

from __future__ import annotations

import json
import random

OTA_PHASES = ("download", "install")
# The release server's fault hooks (emulator/ota/serve.py Faults): what a board's download meets.
RELEASE_ACTIONS = {"drop", "corrupt", "rate", "clear"}
RELEASE_KEYS = {"files", "after", "times"}


def check_power_loss(params: dict, ev: dict, line: int, where, bad) -> None:
    if params.get("during") not in OTA_PHASES:
        raise bad(where("during") if "during" in ev else line, f"power_loss needs during = one of {', '.join(OTA_PHASES)}")
    for key in ("after_bytes", "after_ops"):
        if key in params and (not isinstance(params[key], int) or isinstance(params[key], bool) or params[key] < 1):
            raise bad(where(key), f"{key!r} must be a positive integer, got {params[key]!r}")


def parse_release_event(ev: dict, action: str, line: int, where, bad, common: set[str]) -> dict:
    """The params of a `target = "release"` event (`bad(line, msg)` makes the error naming the line)."""
    if action not in RELEASE_ACTIONS:
        raise bad(where("action"), f"unknown release action {action!r} (known: {', '.join(sorted(RELEASE_ACTIONS))})")
    extra = set(ev) - (common - {"select"}) - RELEASE_KEYS  # no select: it is one server
    if extra:
        raise bad(where(sorted(extra)[0]), f"release events take no {sorted(extra)[0]!r} (take: files, after, times)")
    params = {k: v for k, v in ev.items() if k in RELEASE_KEYS}
    if not isinstance(params.setdefault("files", "files/*"), str):
        raise bad(where("files"), "files must be a pattern string like \"*.py\"")
    if action != "clear":
        lo = 1 if action == "rate" else 0
        if not isinstance(params.get("after"), int) or isinstance(params["after"], bool) or params["after"] < lo:
            raise bad(where("after") if "after" in ev else line, f"release {action} needs after = an integer >= {lo}")
    times = params.setdefault("times", 0 if action == "rate" else 1)
    if not isinstance(times, int) or isinstance(times, bool) or times < 0:
        raise bad(where("times"), "times must be an integer >= 0 (0: every response)")
    return params


def release_action(faults, action: str, params: dict) -> None:
    """A release server's fault (`faults`: emulator/ota/serve.py Faults)."""
    if action == "clear":
        faults.clear()
    elif action == "drop":
        faults.drop(params["files"], params["after"], params["times"])
    elif action == "corrupt":
        faults.corrupt(params["files"], params["after"], params["times"])
    elif action == "rate":
        faults.rate(params["files"], params["after"], params["times"])


class _CutAtInstall:
    """Arms a board's flash (`board.flash.cut_power_after`, the flash fake's
    power-loss model) once the update's journal `ota.json` says "install"
    (firmware/otaboot.py: every file staged and verified): the `ops`-th flash
    operation from then on loses power."""

    def __init__(self, flash, ops: int) -> None:
        self.flash, self.ops, self.inner = flash, ops, flash.op
        flash.op = self

    def __call__(self, nbytes: int = 0) -> None:
        try:
            state = json.loads((self.flash.root / "ota.json").read_bytes()).get("state")
        except (OSError, ValueError, AttributeError):
            state = None
        if state == "install":
            self.flash.op = self.inner  # once
            self.flash.cut_power_after(ops=self.ops)
        return self.inner(nbytes)


def arm_power_loss(board, during: str, after_bytes: int | None = None, after_ops: int | None = None,
                   rng: random.Random | None = None) -> None:
    """Cut `board`'s power at a flash write of its next OTA update: `during`
    "download" after `after_bytes` written (the staging folder is all the
    firmware writes then), "install" at the `after_ops`-th flash operation
    once the journal says "install". CPython boards (the VM writes its files itself)."""
    rng = rng or random.Random(0)
    if during == "download":
        board.flash.cut_power_after(n_bytes=after_bytes or rng.randint(1, 16384))
    else:
        if board.flash.board is None:  # say so now, not at the journal
            board.flash.cut_power_after(ops=1)
        _CutAtInstall(board.flash, after_ops or rng.randint(1, 8))
