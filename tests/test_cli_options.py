"""The command line's option surface: global options on either side of the
subcommand (issue 13, papercut 1), and the README's command table agreeing
with `--help` (papercut 8) so the two cannot drift apart."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from emulator.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
ESP32EMU = [sys.executable, "-m", "emulator"]
GLOBAL_OPTIONS = {"--state"}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """command -> its parser; a command with commands of its own (`release build`) by its full name."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    out = {}
    for name, p in sub.choices.items():
        inner = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        out.update({f"{name} {n}": q for n, q in inner[0].choices.items()} if inner else {name: p})
    return out


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def _readme_table() -> dict[str, set[str]]:
    """command -> the --options its row in the README's "Command line" table names."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"\| `esp32emu ([a-z][\w-]*(?: [a-z][\w-]*)*)([^`]*)` \|", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"--[a-z][a-z0-9-]*", m.group(2)))
    return rows


@pytest.mark.parametrize(
    "argv",
    [["run", "--state", "/tmp/x"], ["--state", "/tmp/x", "run"], ["--state", "/tmp/y", "run", "--state", "/tmp/x"]],
)
def test_global_state_on_either_side_of_the_subcommand(argv):
    assert build_parser().parse_args(argv).state == Path("/tmp/x")


def test_global_state_default_survives_the_subcommand():
    assert build_parser().parse_args(["watch"]).state == Path(".esp32emu")


def test_every_subcommand_takes_the_global_options():
    for name, sub in _subcommands(build_parser()).items():
        assert GLOBAL_OPTIONS <= _options(sub), name


@pytest.mark.mosquitto
def test_run_with_state_after_the_subcommand_uses_it(tmp_path, broker):
    state = tmp_path / "after"
    r = subprocess.run(
        ESP32EMU + ["run", "--broker", broker.url, "--id", "late", "--duration", "2", "--state", str(state)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stderr
    assert (state / "boards" / "late").is_dir(), sorted(p.name for p in tmp_path.rglob("*"))
    assert not (tmp_path / ".esp32emu").exists()


def test_readme_command_table_lists_every_command():
    assert set(_readme_table()) == set(_subcommands(build_parser()))


def test_readme_command_table_and_help_agree_on_every_option():
    table = _readme_table()
    problems = []
    for name, sub in _subcommands(build_parser()).items():
        options = _options(sub) - GLOBAL_OPTIONS
        listed = table.get(name, set()) - GLOBAL_OPTIONS
        problems += [f"{name} {o}: in --help, not in the README table" for o in sorted(options - listed)]
        problems += [f"{name} {o}: in the README table, not in --help" for o in sorted(listed - options)]
    assert not problems, "\n".join(problems)


def test_readme_says_global_options_work_on_either_side():
    section = (REPO / "README.md").read_text().split("\n## Command line\n", 1)[1].split("\n## ", 1)[0]
    assert "--state DIR" in section and "before or after the command" in section
