"""The public contracts type-check: ``mypy`` strict on edgetl.api, edgetl.hookspecs and the edgetl.training SDK.

The scope and settings live in pyproject.toml (``[tool.mypy]``), so ``mypy`` run by hand from the repository
root checks the same thing. torch is not analysed (its names are Any there): a cold run takes a few
seconds, a warm one (the cache under the system's temporary folder) about one.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ("edgetl/api.py", "edgetl/hookspecs.py", "edgetl/training")


def require_mypy() -> None:
    """Skip without mypy (the ``dev`` extra installs it); under ``CI=true`` fail instead."""
    import importlib.util

    if importlib.util.find_spec("mypy") is None:
        reason = "mypy is not installed (pip install -e '.[dev]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; CI=true forbids skipping")
        pytest.skip(reason)


def test_the_configuration_checks_the_public_contracts_strictly():
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mypy"]
    assert config["strict"] is True and tuple(config["files"]) == CHECKED


def test_every_type_ignore_in_the_checked_modules_names_its_code_and_why():
    files = [ROOT / "edgetl" / "api.py", ROOT / "edgetl" / "hookspecs.py", *(ROOT / "edgetl" / "training").glob("*.py")]
    bad = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
           for path in files for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
           if "type: ignore" in line and not re.search(r"type: ignore\[[\w-]+(, *[\w-]+)*\] *(-|#) *\w", line)]
    assert not bad, "a '# type: ignore' needs [code] and a reason ('# type: ignore[code] - why'):\n" + "\n".join(bad)


def test_the_public_contracts_pass_mypy_strict():
    require_mypy()
    # one cache per checkout: warm runs take about a second, and two checkouts never share stale entries
    cache = Path(tempfile.gettempdir()) / f"edgetl-mypy-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}  # the checkout's edgetl
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(cache), "--no-error-summary"],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
