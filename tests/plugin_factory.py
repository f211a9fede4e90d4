"""Make installed-looking third-party plugins in a temporary folder.

A plugin here is a module plus a ``NAME-0.1.dist-info`` with an ``edgetl``
entry point, on ``sys.path``: exactly what pip leaves behind, without pip.
"""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path


def make_plugin(root: Path, name: str, code: str, module: str | None = None, version: str = "0.1") -> str:
    """Write module ``module`` (default ``edgetl_test_<name>``) and its dist-info; return the module name."""
    module = module or f"edgetl_test_{name}"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(textwrap.dedent(code))
    dist = root / f"{module}-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: {version}\n")
    (dist / "entry_points.txt").write_text(f"[edgetl]\n{name} = {module}\n")
    return module


def activate(monkeypatch, root: Path, load: str | None) -> None:
    """Put ``root`` on sys.path and choose which entry points load (None = all)."""
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    if load is None:
        monkeypatch.delenv("EDGETL_LOAD_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("EDGETL_LOAD_PLUGINS", load)
    for mod in [m for m in sys.modules if m.startswith("edgetl_test_")]:
        del sys.modules[mod]


def subprocess_env(root: Path, load: str | None) -> dict[str, str]:
    """Environment for a fresh ``python -m edgetl``: ``root`` first on the caller's path, plugins chosen."""
    path = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}
    if load is not None:
        env["EDGETL_LOAD_PLUGINS"] = load
    return env


SINK_PLUGIN = '''
from edgetl.api import Sink, SinkWriter
from edgetl.hookspecs import hookimpl

class _W(SinkWriter):
    def write(self, result, frame=None):
        pass

class S(Sink):
    name = "{sink}"
    def open(self, options):
        return _W()

@hookimpl
def edgetl_sinks(register):
    register(S())
'''
