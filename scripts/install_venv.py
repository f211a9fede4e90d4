"""Install edgetl with every extra into .venv with uv, from the package sources pip is configured with.

``make venv`` runs it with the venv's own Python after ``pip install uv``. uv
resolves and unpacks in parallel: on the 2-core reference machine a cold
install of the pinned set (185 packages, 6.5 GB, most of it torch's CUDA
build) took ~27 s against ~63 s with pip (benchmarks/NOTES.md, "make test").
uv does not read pip's configuration, so this passes it on: every index,
find-links location and constraint file ``pip config list`` reports (files
and ``PIP_*`` variables, the variables winning, as in pip), and pip's
``cert`` as ``SSL_CERT_FILE``. The result is the set constraints.txt pins,
the same packages ``pip install -c constraints.txt -e '.[all]'`` gives.

    .venv/bin/python scripts/install_venv.py [EXTRAS]    # EXTRAS default: all
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pip option -> uv option; the values of a multi-valued pip option are separated by white space
OPTIONS = {"index-url": "--index-url", "extra-index-url": "--extra-index-url", "find-links": "--find-links",
           "constraint": "--constraints"}


def pip_config(python: str) -> dict[str, list[str]]:
    """pip's effective configuration, ``{option: [values]}``: ``PIP_*`` variables over the config files."""
    out = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True).stdout
    return parse_pip_config(out)


def parse_pip_config(out: str) -> dict[str, list[str]]:
    """``pip config list``'s lines (``section.option='value'``) as ``{option: [values]}``, ``:env:`` winning."""
    files: dict[str, list[str]] = {}
    env: dict[str, list[str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition("=")
        section, _, option = key.rpartition(".")
        target = env if section == ":env:" else files
        target[option] = shlex.split(value)[0].split() if value else []
    return {**files, **env}


def uv_command(python: str, extras: str, config: dict[str, list[str]]) -> list[str]:
    cmd = [str(Path(python).parent / "uv"), "pip", "install", "--quiet", "--python", python,
           "--index-strategy", "unsafe-best-match", "--constraints", str(ROOT / "constraints.txt")]
    for option, flag in OPTIONS.items():
        for value in config.get(option, []):
            cmd += [flag, value]
    if config.get("no-index", ["false"])[0].lower() in ("1", "true", "yes", "on"):
        cmd.append("--no-index")
    return cmd + ["--editable", f"{ROOT}[{extras}]"]


def main() -> int:
    extras = sys.argv[1] if len(sys.argv) > 1 else "all"
    config = pip_config(sys.executable)
    env = dict(os.environ)
    if config.get("cert"):
        env.setdefault("SSL_CERT_FILE", config["cert"][0])
    return subprocess.run(uv_command(sys.executable, extras, config), env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
