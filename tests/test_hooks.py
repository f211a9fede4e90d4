"""Each hook: documented in docs/plugins.md, specified with a docstring, and exercised here.

A meta-test keeps this file honest: every hook in edgetl.hookspecs must have a
``test_hook_<name>`` below (the datasette habit).
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl import hookspecs
from edgetl.plugins import PluginManager
from tests.plugin_factory import activate, make_plugin

ROOT = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("edgetl_") and callable(f))

PRELUDE = """
import numpy as np
from edgetl import api
from edgetl.hookspecs import hookimpl
"""


def _load(tmp_path, monkeypatch, body: str):
    make_plugin(tmp_path, "hooktest", PRELUDE + body)
    activate(monkeypatch, tmp_path, load="hooktest")
    pm = PluginManager()
    assert pm.plugins["hooktest"].status == "ok", pm.plugins["hooktest"].reason
    return pm


def test_there_are_seven_hooks():
    assert HOOKS == sorted(["edgetl_backbones", "edgetl_strategies", "edgetl_quantizers", "edgetl_targets",
                            "edgetl_sources", "edgetl_sinks", "edgetl_commands"])


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_and_tested(hook):
    doc = (ROOT / "docs" / "plugins.md").read_text()
    spec = getattr(hookspecs, hook)
    params = ", ".join(inspect.signature(spec).parameters)
    assert f"### {hook}({params})" in doc, f"docs/plugins.md lacks '### {hook}({params})'"
    assert spec.__doc__ and ":param" in spec.__doc__
    assert f"test_hook_{hook}" in globals(), f"no test_hook_{hook} in tests/test_hooks.py"


def test_docs_list_no_hook_that_does_not_exist():
    doc = (ROOT / "docs" / "plugins.md").read_text()
    assert sorted(set(re.findall(r"^### (edgetl_\w+)\(", doc, re.M))) == HOOKS


def test_hook_edgetl_backbones(tmp_path, monkeypatch):
    pm = _load(tmp_path, monkeypatch, """
class B(api.Backbone):
    name = "toy-backbone"
    feature_dim = 4
    def build(self, pretrained=True, weights=None): return None
    def layer_groups(self, module): return []
    def feature_maps(self, module, x): return []
@hookimpl
def edgetl_backbones(register): register(B())
""")
    comp = pm.get("backbone", "toy-backbone")
    assert comp.plugin == "hooktest" and comp.feature_dim == 4


def test_hook_edgetl_strategies(tmp_path, monkeypatch):
    pm = _load(tmp_path, monkeypatch, """
class S(api.Strategy):
    name = "toy-strategy"
    def fit(self, ctx): return api.TrainedModel(module=None, task="classify", labels=ctx.labels)
@hookimpl
def edgetl_strategies(register): register(S())
""")
    from edgetl.api import FitContext

    fitted = pm.get("strategy", "toy-strategy").fit(
        FitContext(backbone=None, module=None, train=[], val=[], labels=["a", "b"], options={},
                   config=None, device="cpu"))
    assert fitted.labels == ["a", "b"]


def test_hook_edgetl_quantizers(tmp_path, monkeypatch):
    pm = _load(tmp_path, monkeypatch, """
class Q(api.Quantizer):
    name = "toy-int8"
    target, precision, method = "toy", "int8", "ptq"
    def quantize(self, files, out_dir, calibration, options): return list(files)
@hookimpl
def edgetl_quantizers(register): register(Q())
""")
    assert pm.quantizer("toy", "int8", "ptq").name == "toy-int8"
    assert pm.quantizer("toy", "int8", "other") is None


def test_hook_edgetl_targets(tmp_path, monkeypatch):
    pm = _load(tmp_path, monkeypatch, """
class R(api.Runtime):
    def predict(self, batch): return batch.mean(axis=(1, 2, 3))[:, None]
class T(api.Target):
    name = "toy-target"
    def export(self, model, example, out_dir, options): return []
    def load(self, files, manifest, options=None): return R()
@hookimpl
def edgetl_targets(register): register(T())
""")
    import numpy as np

    runtime = pm.get("target", "toy-target").load([], {})
    assert runtime.predict(np.ones((2, 3, 4, 4), np.float32)).shape == (2, 1)


def test_hook_edgetl_sources(tmp_path, monkeypatch):
    pm = _load(tmp_path, monkeypatch, """
class Stream(api.FrameStream):
    def __iter__(self):
        for i in range(3):
            yield api.Frame(image=np.zeros((4, 4, 3), np.uint8), timestamp=0.0, index=i, source="toy")
class Src(api.Source):
    name = "toy-source"
    def accepts(self, uri): return uri.startswith("toy:")
    def open(self, uri, options): return Stream()
@hookimpl
def edgetl_sources(register): register(Src())
""")
    src = pm.get("source", "toy-source")
    assert src.accepts("toy:0") and [f.index for f in src.open("toy:0", {})] == [0, 1, 2]


def test_hook_edgetl_sinks(tmp_path, monkeypatch):
    pm = _load(tmp_path, monkeypatch, """
seen = []
class W(api.SinkWriter):
    def write(self, result, frame=None): seen.append(result)
class K(api.Sink):
    name = "toy-sink"
    def open(self, options): return W()
@hookimpl
def edgetl_sinks(register): register(K())
""")
    pm.get("sink", "toy-sink").open({}).write({"label": "good"})
    assert sys.modules["edgetl_test_hooktest"].seen == [{"label": "good"}]


def test_hook_edgetl_commands(tmp_path):
    make_plugin(tmp_path, "cmd", """
import click
from edgetl.hookspecs import hookimpl

@click.command("hello-plugin")
def hello():
    '''Say hello from a plugin.'''
    click.echo("hello from a plugin")

@hookimpl
def edgetl_commands(cli):
    cli.add_command(hello)
""")
    env = {"PYTHONPATH": str(tmp_path), "EDGETL_LOAD_PLUGINS": "cmd", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "edgetl", "hello-plugin"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "hello from a plugin", out.stderr
    helptext = subprocess.run([sys.executable, "-m", "edgetl", "--help"], capture_output=True, text=True, env=env)
    assert "hello-plugin" in helptext.stdout
