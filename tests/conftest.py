"""Hermetic test settings: no third-party plugins unless a test asks for them."""

from __future__ import annotations

import os
from collections import Counter

import pytest

os.environ["EDGETL_LOAD_PLUGINS"] = ""
_CPUS = len(os.sched_getaffinity(0))
# Under pytest-xdist (`make test`: one worker per core, plus one) each worker gets its share of the cores:
# two workers with two OpenMP threads each on two cores would spin against each other.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(max(1, _CPUS // _workers)))
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


@pytest.fixture
def count_calls(monkeypatch):
    """``count_calls(attr=None)`` -> ``{"n": forward passes}`` through every timm backbone built later in the test.

    With ``attr`` (e.g. ``"conv_stem"``) the hook sits on that submodule, else on the whole backbone:
    how tests prove a frozen part ran once however many epochs follow.
    """
    from edgetl_builtins.timm.backbones import TimmBackbone

    def count(attr: str | None = None) -> dict[str, int]:
        calls = {"n": 0}
        original = TimmBackbone.build

        def build(self, *a, **k):
            module = original(self, *a, **k)
            target = getattr(module, attr) if attr else module
            target.register_forward_hook(lambda m, i, o: calls.__setitem__("n", calls["n"] + 1))
            return module

        monkeypatch.setattr(TimmBackbone, "build", build)
        return calls

    return count


def pytest_collection_modifyitems(config, items):
    """Files with a ``slow`` test first, then the others by their number of tests, most first (the order
    xdist's own reordering uses, kept for the rest). ``make test`` passes ``--no-loadscope-reorder`` so that
    pytest-xdist's per-file scheduling follows this order: with xdist's reordering by test count alone the
    one-test feedback-loop file (over a minute) started last and ran alone for ~90 s while the other
    workers had nothing left."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    count = Counter(item.path for item in items)
    # stable: the order within a file stays
    items.sort(key=lambda item: (item.path not in slow_files, -count[item.path]))


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker per core the process may use, plus one. A quarter of the suite's time is
    waiting (agents starting, frames arriving, sockets), which a spare worker fills: on 2 cores 3 workers
    ran the suite in 334 s against 366 s for 2 (fresh clone, idle machine)."""
    return _CPUS + 1
