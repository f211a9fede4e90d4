"""Each hook: documented in docs/plugins.md, specified with a docstring, and exercised here.

Meta-tests keep this file and the docs honest: every hook in edgetl.hookspecs
must have a ``test_hook_<name>`` below (the datasette habit), and the hook
reference in docs/plugins.md must be exactly what :func:`hook_reference` builds
from edgetl/hookspecs.py (names, parameters with types, docstrings). After
changing a hookspec, regenerate it with ``python tests/test_hooks.py``.
"""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgetl import hookspecs
from edgetl.plugins import REGISTER_HOOKS, PluginManager
from tests.plugin_factory import activate, make_plugin, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
IN_ORDER = [n for n, f in vars(hookspecs).items() if n.startswith("edgetl_") and callable(f)]  # as defined
HOOKS = sorted(IN_ORDER)
BEGIN = "<!-- hook reference: built from edgetl/hookspecs.py by tests/test_hooks.py; edit the hookspecs -->"
END = "<!-- end of hook reference -->"

PRELUDE = """
import numpy as np
from edgetl import api
from edgetl.hookspecs import hookimpl
"""


def _markdown(doc: str) -> str:
    """A hookspec docstring as Markdown: ``:param x:`` -> a bullet, reST roles and literals -> code."""
    doc = re.sub(r":(?:class|func|data|meth):`~?([^`]+)`", r"`\1`", doc)
    doc = re.sub(r"``([^`]+)``", r"`\1`", doc)
    return re.sub(r"^:param (\w+): ", r"- `\1`: ", doc, flags=re.M)


def hook_reference() -> str:
    """The hook reference section of docs/plugins.md, built from edgetl/hookspecs.py."""
    parts = [BEGIN]
    for name in IN_ORDER:
        spec = getattr(hookspecs, name)
        sig = inspect.signature(spec)
        params = ", ".join(sig.parameters)
        typed = str(sig).replace("'", "").replace('"', "")
        kind = "firstresult" if getattr(spec, "edgetl_spec", {}).get("firstresult") else "every plugin is called"
        parts += [f"### {name}({params})", "", f"`{name}{typed}` ({kind})", "", _markdown(inspect.getdoc(spec)), ""]
    parts.append(END)
    return "\n".join(parts)


def _documented_reference() -> str:
    text = DOC.read_text()
    assert BEGIN in text and END in text, f"docs/plugins.md lacks the hook reference markers {BEGIN!r} … {END!r}"
    return text[text.index(BEGIN):text.index(END) + len(END)]


def _load(tmp_path, monkeypatch, body: str):
    make_plugin(tmp_path, "hooktest", PRELUDE + body)
    activate(monkeypatch, tmp_path, load="hooktest")
    pm = PluginManager()
    assert pm.plugins["hooktest"].status == "ok", pm.plugins["hooktest"].reason
    return pm


def test_there_are_eight_hooks():
    assert HOOKS == sorted(["edgetl_backbones", "edgetl_strategies", "edgetl_quantizers", "edgetl_targets",
                            "edgetl_sources", "edgetl_sinks", "edgetl_loggers", "edgetl_commands"])
    assert sorted(REGISTER_HOOKS.values()) == sorted(h for h in HOOKS if h != "edgetl_commands")


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_specified_documented_and_tested(hook):
    spec = getattr(hookspecs, hook)
    doc = inspect.getdoc(spec) or ""
    summary = doc.splitlines()[0] if doc else ""
    assert summary.endswith("."), f"{hook}: the docstring starts with a one-line summary"
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc, f"{hook}: docstring lacks ':param {param}:'"
    kind = next((k for k, h in REGISTER_HOOKS.items() if h == hook), None)
    if kind is not None:  # register-style: the docstring names the component type it takes
        from edgetl.api import COMPONENT_TYPES

        assert f"edgetl.api.{COMPONENT_TYPES[kind].__name__}" in doc, f"{hook}: name the type register takes"
    assert f"test_hook_{hook}" in globals(), f"no test_hook_{hook} in tests/test_hooks.py"


def test_docs_hook_reference_is_built_from_the_hookspecs():
    expected, documented = hook_reference(), _documented_reference()
    if documented != expected:
        import difflib

        diff = "\n".join(difflib.unified_diff(documented.splitlines(), expected.splitlines(), "docs/plugins.md",
                                               "edgetl/hookspecs.py", lineterm=""))
        pytest.fail("docs/plugins.md's hook reference differs from edgetl/hookspecs.py "
                    f"(run: python tests/test_hooks.py):\n{diff}")


def test_docs_list_no_hook_that_does_not_exist():
    doc = DOC.read_text()
    assert sorted(set(re.findall(r"^### (edgetl_\w+)\(", doc, re.M))) == HOOKS
    assert set(re.findall(r"`(edgetl_[a-z]+)\(", doc)) <= set(HOOKS)


def test_reference_renders_a_changed_docstring(monkeypatch):
    """The meta-test can fail: a docstring edit not carried to the docs is caught."""
    spec = hookspecs.edgetl_sinks
    monkeypatch.setattr(spec, "__doc__", spec.__doc__ + "\n    A new sentence.\n")
    assert hook_reference() != _documented_reference()


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
    def quantize(self, files, out_dir, ctx): return list(files)
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
    def export(self, model, example, out_dir, spec): return []
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
    env = subprocess_env(tmp_path, load="cmd")
    out = subprocess.run([sys.executable, "-m", "edgetl", "hello-plugin"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "hello from a plugin", out.stderr
    helptext = subprocess.run([sys.executable, "-m", "edgetl", "--help"], capture_output=True, text=True, env=env)
    assert "hello-plugin" in helptext.stdout


def test_hook_edgetl_loggers(tmp_path, monkeypatch):
    pm = _load(tmp_path, monkeypatch, """
class Run(api.LoggerRun):
    def __init__(self): self.rows = []
    def log_metrics(self, step, metrics): self.rows.append((step, metrics))
class L(api.Logger):
    name = "toy-logger"
    def start(self, run_name, params, run_dir, options): return Run()
@hookimpl
def edgetl_loggers(register): register(L())
""")
    run = pm.get("logger", "toy-logger").start("r", {}, tmp_path, {})
    run.log_metrics(1, {"val_loss": 0.5})
    run.finish("finished")  # optional methods default to doing nothing
    assert run.rows == [(1, {"val_loss": 0.5})]


if __name__ == "__main__":  # regenerate the hook reference in docs/plugins.md
    text = DOC.read_text()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    DOC.write_text(text[:start] + hook_reference() + text[stop:])
    print(f"wrote the hook reference of {DOC}")
