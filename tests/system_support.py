"""System programs from Debian packages that some tests start as real peers.

A test that needs one calls :func:`require_program`: without it the test is
skipped with a reason naming the Debian package (``make venv`` installs the
packages in ``scripts/system-packages.txt`` when run as root); under
``CI=true`` a missing program fails the test instead, so CI never passes by
skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_program(program: str, package: str) -> str:
    """Return the path of ``program``, or skip (fail under CI) naming ``package``."""
    path = shutil.which(program)
    if path:
        return path
    reason = f"needs {program} from the Debian package {package} (apt-get install {package})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason + "; CI=true forbids skipping")
    pytest.skip(reason)
