"""What a plugin author meets when something is wrong: a near-miss method name, a bug in a plugin,
``train.threshold: argmax``, a typed options model refused before the run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from plugin_factory import activate, make_plugin, subprocess_env

from edgetl.errors import ConfigError
from edgetl.plugins import PluginManager, PluginWarning, blame, reset_manager

TARGET = """
from edgetl.api import Target
from edgetl.hookspecs import hookimpl

class T(Target):
    name = "nearmiss"
    def export(self, model, example, out_dir, spec):
        return []
    def load(self, files, manifest, options=None):
        return None
    def build_setings(self, profile, step, spec):   # a typo: the contract's build_settings would run
        return {"workspace_mb": 64}
    def helper(self):                               # not near any contract method: fine
        return 1

@hookimpl
def edgetl_targets(register):
    register(T())
"""


def test_a_misspelt_contract_method_is_refused_at_registration_with_did_you_mean(tmp_path, monkeypatch):
    make_plugin(tmp_path, "nearmiss", TARGET)
    activate(monkeypatch, tmp_path, load="nearmiss")
    with pytest.warns(PluginWarning, match=r"target 'nearmiss' \(T\) defines build_setings\(\), which is no "
                                           r"method of edgetl.api.Target; did you mean build_settings\(\)\?"):
        pm = PluginManager()
    assert pm.plugins["nearmiss"].status == "broken" and "nearmiss" not in pm.registry["target"]
    fixed = TARGET.replace("def build_setings", "def build_settings")
    make_plugin(tmp_path, "nearmiss", fixed)
    activate(monkeypatch, tmp_path, load="nearmiss")
    assert PluginManager().plugins["nearmiss"].status == "ok"


BUGGY = """
import click
from edgetl.api import Sink, SinkWriter
from edgetl.hookspecs import hookimpl

def parse(options):
    return 1 / options.get("rate", 0)

class Boom(Sink):
    name = "boom"
    def open(self, options):
        parse(options)

@hookimpl
def edgetl_sinks(register):
    register(Boom())

@hookimpl
def edgetl_commands(cli):
    @click.command("boom")
    def boom():
        parse({})
    cli.add_command(boom)
"""


def test_an_exception_inside_a_plugin_names_the_plugin_and_the_component(tmp_path, monkeypatch):
    make_plugin(tmp_path, "buggy", BUGGY)
    activate(monkeypatch, tmp_path, load="buggy")
    reset_manager()
    try:
        from edgetl.plugins import get_manager

        sink = get_manager().get("sink", "boom")
        with pytest.raises(ZeroDivisionError) as err:
            sink.open({})
        assert blame(err.value) == "sink 'boom' (plugin buggy)"
        done = subprocess.run([sys.executable, "-m", "edgetl", "boom"], capture_output=True, text=True,
                              env=subprocess_env(tmp_path, load="buggy"))
        assert done.returncode == 1
        assert done.stderr.strip() == ("error: plugin buggy (edgetl_test_buggy): ZeroDivisionError: division by "
                                       "zero (run with --debug for the traceback)")
        assert blame(ValueError("edgetl's own")) is None
    finally:
        reset_manager()


def test_threshold_argmax_shorthand_is_accepted(tmp_path):
    from edgetl.config import load_run_config

    path = tmp_path / "run.yaml"
    path.write_text("name: x\ndata: {train: a}\ntrain: {threshold: argmax}\n")
    assert load_run_config(path).train.threshold.policy == "argmax"
    path.write_text("name: x\ndata: {train: a}\ntrain: {threshold: recall}\n")
    with pytest.raises(ConfigError, match="policy 'recall' needs 'class'"):
        load_run_config(path)


def test_a_typed_strategy_options_model_refuses_a_typo_before_any_run(tmp_path):
    from edgetl.api import Strategy

    class Sam(Strategy):
        name = "sam"

        def options_model(self):
            from pydantic import BaseModel, ConfigDict, Field

            class Options(BaseModel):
                model_config = ConfigDict(extra="forbid")
                rho: float = Field(default=0.05, gt=0)

            return Options

        def fit(self, ctx):
            raise AssertionError("never reached")

    assert Sam().parse_options({"rho": 0.1}).rho == 0.1
    with pytest.raises(ConfigError, match=r"^strategy.options \(sam\): rhoo: unknown key 'rhoo'; did you mean 'rho'\?"):
        Sam().check_options({"rhoo": 0.1})
    with pytest.raises(ConfigError, match=r"rho: Input should be greater than 0"):
        Sam().check_options({"rho": -1})
