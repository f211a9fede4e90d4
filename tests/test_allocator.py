"""``edgetl train``'s allocator setting: glibc keeps large blocks in its heap instead of mmap()ing each one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from test_torch_free import ROOT

# mallinfo2().hblks: blocks glibc currently serves with mmap(); a 64 MiB numpy array is one of them by default
PROBE = """
import ctypes, sys
import numpy as np
from edgetl.host.allocator import keep_large_blocks

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
applied = keep_large_blocks()
before = libc.mallinfo2().hblks
block = np.ones(64 * 2**20, dtype=np.uint8)
print(applied, libc.mallinfo2().hblks - before)
"""


def probe(**env) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    applied, mapped = out.stdout.split()
    return applied, mapped


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_large_blocks_come_from_the_heap_with_edgetl_malloc_keep_and_from_mmap_otherwise():
    try:
        import ctypes

        ctypes.CDLL(None).mallinfo2  # noqa: B018
    except AttributeError:
        pytest.skip("this C library has no mallinfo2 (glibc >= 2.33 is needed to observe the setting)")
    assert probe(EDGETL_MALLOC="keep") == ("True", "0")
    assert probe(EDGETL_MALLOC="system") == ("False", "1")
    assert probe(EDGETL_MALLOC="") == ("False", "1")  # opt-in: unset leaves glibc as it comes


def test_edgetl_train_asks_for_it_before_training(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import edgetl.host.allocator as allocator
    import edgetl.workflow as workflow
    from edgetl.cli import cli

    calls = []
    monkeypatch.setattr(allocator, "keep_large_blocks", lambda: calls.append("allocator") or True)
    monkeypatch.setattr(workflow, "train_config", lambda *a, **k: calls.append("train"))
    config = tmp_path / "run.yaml"
    config.write_text("name: t\ndata: {train: data/t/train, val: data/t/val}\n"
                      "backbone: {name: efficientnet_lite0, pretrained: false}\nstrategy: {name: linear-probe}\n")
    result = CliRunner().invoke(cli, ["train", str(config)])
    assert result.exit_code == 0, result.output
    assert calls == ["allocator", "train"]
