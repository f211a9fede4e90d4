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
import pytest

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


# Sizes appended to the tour's lines so it runs in seconds: the same commands and files, a small data set,
# a tiny network (timm's test_efficientnet, random weights) and an FP16 export without latency runs.
SMALLER = {
    ("data", "textures"): ["--per-class", "4"],
    ("train",): ["--set", "backbone.name=timm:test_efficientnet", "--set", "backbone.pretrained=false",
                 "--set", "train.image_size=32", "--set", "train.epochs=2"],
    ("export",): ["--precision", "fp16", "--latency-runs", "0", "--calib-count", "8"],
}


def smaller(words: list[str]) -> list[str]:
    for prefix, extra in SMALLER.items():
        if tuple(words[: len(prefix)]) == prefix:
            return words + extra
    return words


def run_tour(folder: Path, log: list[str]) -> None:
    """Each line of the tour as the shell would run it, ``edgetl`` lines in this process (torch loads once).

    Handled like the shell: ``. activate`` (nothing to do here), ``test -f X || …``, ``VAR=$(…)`` and
    ``"$VAR"``, ``… > FILE``, ``… | head`` (the head is left out), ``… &`` (a real background process,
    the agent) and ``kill %1``.
    """
    import os
    import subprocess
    import sys

    from click.testing import CliRunner

    from edgetl.cli import cli

    variables: dict[str, str] = {}
    background: subprocess.Popen | None = None
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "plugins")]))
    try:
        for line in tour_lines():
            log.append(line)
            if line.startswith(". "):
                continue
            if line == "kill %1":
                assert background is not None and background.poll() is None, "the agent is not running"
                background.terminate()
                background.wait(15)
                background = None
                continue
            if line.startswith("test -f "):
                path, _, line = line[len("test -f "):].partition(" || ")
                if (folder / path).exists():
                    continue
            target = None
            assign = re.match(r"(\w+)=\$\((.*)\)$", line)
            if assign:
                target, line = assign.groups()
            for name, value in variables.items():
                line = line.replace(f'"${name}"', shlex.quote(value))
            if line.startswith("python "):
                subprocess.run([sys.executable, *shlex.split(line)[1:-2]], cwd=folder, check=True,
                               stdout=(folder / shlex.split(line)[-1]).open("w"))
                continue
            words = smaller(shlex.split(re.split(r"\s[|&]|\s&$", line)[0])[1:])
            if line.endswith("&"):
                background = subprocess.Popen([sys.executable, "-m", "edgetl", *words], cwd=folder, env=env,
                                              stdout=subprocess.DEVNULL, stderr=(folder / "agent.log").open("a"))
                continue
            result = CliRunner().invoke(cli, words)
            assert result.exit_code == 0, f"README tour: {line!r} failed:\n{result.output[-3000:]}"
            if target:
                variables[target] = result.stdout.strip()
    finally:
        if background is not None:
            background.kill()
            background.wait(15)


@pytest.mark.slow
def test_the_tour_runs_twice_in_a_row_in_one_folder(tmp_path, monkeypatch):
    """The README's promise: the block runs as written, and again (data kept, run retrained, a free port)."""
    pytest.importorskip("torch")
    pytest.importorskip("openvino")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        log: list[str] = []
        run_tour(tmp_path, log)
        assert log[-1] == "kill %1"
    assert (tmp_path / "textures.edgetl").is_file() and (tmp_path / "agent.port").is_file()
