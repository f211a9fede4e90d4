"""Hermetic test settings: no third-party plugins unless a test asks for them."""

from __future__ import annotations

import os

import pytest

os.environ["EDGETL_LOAD_PLUGINS"] = ""
os.environ.setdefault("OMP_NUM_THREADS", "2")
# Nothing in the suite may touch a model hub: a test that forgets `pretrained: false` fails fast.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["EDGETL_OFFLINE"] = "1"
os.environ.setdefault("EDGETL_PROGRESS_SECONDS", "0")  # no heartbeat lines in asserted stderr (tests pass their own)


@pytest.fixture(autouse=True)
def _fresh_plugin_manager():
    """Each test sees plugins loaded from scratch (so env changes take effect)."""
    from edgetl.plugins import reset_manager

    reset_manager()
    yield
    reset_manager()
