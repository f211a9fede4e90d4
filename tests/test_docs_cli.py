"""docs/cli.md documents every command and every visible option of the real CLI."""

from __future__ import annotations

import re
from pathlib import Path

import click

from edgetl.cli import cli

DOC = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()


def commands(cmd=cli, path=("edgetl",)):
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from commands(sub, path + (name,))
    elif len(path) > 1:
        yield " ".join(path), cmd


def section(title: str) -> str:
    match = re.search(rf"^### `{re.escape(title)}`\n(.*?)(?=^### |\Z)", DOC, re.M | re.S)
    assert match, f"docs/cli.md has no section '### `{title}`'"
    return match.group(1)


def test_every_command_and_option_is_documented():
    missing = []
    for title, cmd in commands():
        text = section(title)
        for param in cmd.params:
            if isinstance(param, click.Option) and not param.hidden and param.name != "help":
                if not any(f"`{opt}" in text or f", {opt}" in text for opt in param.opts):
                    missing.append(f"{title} {param.opts[0]}")
    assert not missing, "undocumented in docs/cli.md: " + ", ".join(missing)


def test_design_commands_all_exist():
    names = {title for title, _ in commands()}
    for expected in ["edgetl plugins list", "edgetl plugins show", "edgetl plugins install", "edgetl data elpv",
                     "edgetl data textures", "edgetl data inspect", "edgetl train", "edgetl eval", "edgetl predict",
                     "edgetl export", "edgetl bundle inspect", "edgetl bundle verify", "edgetl keys generate",
                     "edgetl agent serve", "edgetl deploy", "edgetl device info", "edgetl device rollback",
                     "edgetl bench"]:
        assert expected in names
