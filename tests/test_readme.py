"""The README's tour matches the real command line and the files it names exist.

The tour itself was run as written from a fresh clone (the README states the
times). This test keeps it honest between such runs: every ``edgetl`` line of
the tour block names a real command, every ``--option`` is an option of that
command, and every file of the checkout it names is there. Running the whole
tour (minutes of training and export) belongs to the demo, not to the tests.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


def tour_lines() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- tour:", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command an ``edgetl …`` line runs, and the words after the command path."""
    from edgetl.cli import cli

    command, rest = cli, list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"README tour: 'edgetl … {rest[0]}' is not a command"
        command, rest = sub, rest[1:]
    return command, rest


def test_every_tour_line_is_a_real_command_with_real_options():
    lines = [line for line in tour_lines() if line.startswith("edgetl ")]
    assert len(lines) >= 10
    for line in lines:
        words = shlex.split(re.split(r"\s[|&]", line)[0])[1:]
        command, rest = resolve(words)
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        used = {word.split("=", 1)[0] for word in rest if word.startswith("--")}
        assert used <= known, f"README tour: {line!r}: unknown option(s) {sorted(used - known)}"


def test_the_files_the_tour_names_exist():
    for line in tour_lines():
        for word in shlex.split(re.split(r"\s[|&>]", line)[0]):
            if word.startswith("examples/"):
                assert (ROOT / word).is_file(), f"README tour: {word} does not exist"
