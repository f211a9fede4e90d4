"""Plugin loading: built-in, entry points, broken, clashing, unavailable, hermetic."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
from click.testing import CliRunner

from edgetl.cli import cli
from edgetl.errors import PluginError, UnknownComponentError
from edgetl.plugins import DEFAULT_PLUGINS, STATUSES, PluginManager, PluginWarning
from tests.plugin_factory import SINK_PLUGIN, activate, make_plugin, subprocess_env


def load_broken(tmp_path, monkeypatch, name: str, code: str, match: str) -> PluginManager:
    """Load third-party plugin ``name``; it must warn (``match``), be broken and have registered nothing."""
    make_plugin(tmp_path, name, code)
    activate(monkeypatch, tmp_path, load=name)
    with pytest.warns(PluginWarning, match=match):
        pm = PluginManager()
    assert pm.plugins[name].status == "broken"
    assert not [c for kind in pm.registry.values() for c in kind.values() if c.plugin == name]
    return pm


def test_builtin_plugins_load_first_in_fixed_order():
    pm = PluginManager()
    names = list(pm.plugins)
    assert names[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    assert all(pm.plugins[n].source == "builtin" for n in DEFAULT_PLUGINS)
    sink = pm.get("sink", "jsonl")
    assert sink.plugin == "edgetl_builtins.stdio"


def test_third_party_plugin_loads_from_entry_point(tmp_path, monkeypatch):
    make_plugin(tmp_path, "hello", SINK_PLUGIN.format(sink="hello-sink"))
    activate(monkeypatch, tmp_path, load="hello")
    pm = PluginManager()
    info = pm.plugins["hello"]
    assert (info.source, info.status, info.version) == ("third-party", "ok", "0.1")
    assert pm.get("sink", "hello-sink").plugin == "hello"
    assert info.hooks == ["edgetl_sinks"]


def test_load_plugins_env_var_limits_and_empty_means_none(tmp_path, monkeypatch):
    make_plugin(tmp_path, "one", SINK_PLUGIN.format(sink="one"))
    make_plugin(tmp_path, "two", SINK_PLUGIN.format(sink="two"))
    activate(monkeypatch, tmp_path, load="two")
    assert "two" in PluginManager().plugins and "one" not in PluginManager().plugins
    activate(monkeypatch, tmp_path, load="")
    assert not [p for p in PluginManager().plugins.values() if p.source == "third-party"]
    activate(monkeypatch, tmp_path, load=None)
    loaded = PluginManager().plugins
    assert "one" in loaded and "two" in loaded


def test_broken_third_party_import_is_reported_skipped_and_listed(tmp_path, monkeypatch):
    make_plugin(tmp_path, "bad", "raise RuntimeError('boom at import')\n")
    make_plugin(tmp_path, "good", SINK_PLUGIN.format(sink="good"))
    activate(monkeypatch, tmp_path, load="bad,good")
    with pytest.warns(PluginWarning, match="skipping plugin 'bad'.*boom at import") as record:
        pm = PluginManager()
    assert isinstance(record[0].message.__cause__, RuntimeError)
    assert pm.plugins["bad"].status == "broken"
    assert 'Error importing plugin "bad"' in pm.plugins["bad"].reason
    assert pm.get("sink", "good").plugin == "good"
    assert pm.get("sink", "jsonl").plugin == "edgetl_builtins.stdio"


def test_clashing_component_name_marks_the_newcomer_broken(tmp_path, monkeypatch):
    make_plugin(tmp_path, "clash", SINK_PLUGIN.format(sink="jsonl"))
    activate(monkeypatch, tmp_path, load="clash")
    with pytest.warns(PluginWarning, match="clashes"):
        pm = PluginManager()
    reason = pm.plugins["clash"].reason
    assert "edgetl_builtins.stdio" in reason and "clash" in reason and "JsonlSink" in reason
    assert "edgetl (built-in)" in reason and "distribution edgetl_test_clash 0.1" in reason  # who ships each
    assert pm.get("sink", "jsonl").plugin == "edgetl_builtins.stdio"


def test_wrong_component_type_is_a_type_error_naming_the_plugin(tmp_path, monkeypatch):
    code = ("from edgetl.hookspecs import hookimpl\n"
            "@hookimpl\ndef edgetl_sinks(register):\n    register(object())\n")
    make_plugin(tmp_path, "wrongtype", code)
    activate(monkeypatch, tmp_path, load="wrongtype")
    with pytest.warns(PluginWarning):
        pm = PluginManager()
    assert "TypeError" in pm.plugins["wrongtype"].reason
    assert "edgetl.api.Sink" in pm.plugins["wrongtype"].reason


def test_hook_that_raises_marks_plugin_broken_and_registers_nothing(tmp_path, monkeypatch):
    code = SINK_PLUGIN.format(sink="half") + (
        "\n@hookimpl\ndef edgetl_sources(register):\n    raise ValueError('no camera lib')\n")
    pm = load_broken(tmp_path, monkeypatch, "half", code, match="no camera lib")
    with pytest.raises(UnknownComponentError):
        pm.get("sink", "half")


def test_missing_optional_library_lists_plugin_unavailable_with_extra(tmp_path, monkeypatch):
    code = SINK_PLUGIN.format(sink="needs-lib").replace(
        'name = "needs-lib"', 'name = "needs-lib"\n    requires = ("edgetl_no_such_module_xyz",)\n    extra = "agent"')
    make_plugin(tmp_path, "needy", code)
    activate(monkeypatch, tmp_path, load="needy")
    pm = PluginManager()
    info = pm.plugins["needy"]
    assert info.status == "unavailable"
    assert "edgetl_no_such_module_xyz" in info.reason and "pip install 'edgetl[agent]'" in info.reason


def test_broken_builtin_is_fatal_with_cause(monkeypatch):
    monkeypatch.setattr("edgetl.plugins.DEFAULT_PLUGINS", ("edgetl_builtins.stdio", "edgetl_does_not_exist"))
    with pytest.raises(PluginError, match='built-in plugin "edgetl_does_not_exist"') as exc:
        PluginManager()
    assert isinstance(exc.value.__cause__, ModuleNotFoundError)


def test_unknown_component_name_suggests_close_match():
    with pytest.raises(UnknownComponentError, match="did you mean 'jsonl'"):
        PluginManager().get("sink", "jsnol")


def test_duplicate_entry_point_name_does_not_replace_builtin(tmp_path, monkeypatch):
    make_plugin(tmp_path, "edgetl_builtins.stdio", SINK_PLUGIN.format(sink="other"), module="edgetl_test_dup")
    activate(monkeypatch, tmp_path, load="edgetl_builtins.stdio")
    with pytest.warns(PluginWarning, match="already taken"):
        pm = PluginManager()
    assert pm.plugins["edgetl_builtins.stdio"].source == "builtin"
    newcomer = pm.plugins["edgetl_builtins.stdio'"]  # the primed key of docs/cli.md
    assert newcomer.source == "third-party" and newcomer.status == "broken"
    assert "distribution edgetl_test_dup 0.1" in newcomer.reason and "edgetl (built-in)" in newcomer.reason


def test_help_still_works_with_a_broken_third_party_plugin(tmp_path):
    make_plugin(tmp_path, "bad", "raise ImportError('missing thing')\n")
    env = subprocess_env(tmp_path, load="bad")
    out = subprocess.run([sys.executable, "-m", "edgetl", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "plugins" in out.stdout
    assert "skipping plugin 'bad'" in out.stderr and "missing thing" in out.stderr


def test_no_warning_when_everything_loads():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        PluginManager()


# -- hooks go through pluggy ------------------------------------------------------------------------
def test_function_without_hookimpl_does_not_register_and_says_why(tmp_path, monkeypatch):
    code = SINK_PLUGIN.format(sink="unmarked").replace("@hookimpl\n", "")
    load_broken(tmp_path, monkeypatch, "unmarked", code,
                match="edgetl_sinks in edgetl_test_unmarked is not marked @hookimpl")


def test_hookimpl_for_a_hook_that_does_not_exist_suggests_the_nearest(tmp_path, monkeypatch):
    code = SINK_PLUGIN.format(sink="typo").replace("def edgetl_sinks", "def edgetl_sink")
    load_broken(tmp_path, monkeypatch, "typo", code,
                match="edgetl_sink is not an edgetl hook; did you mean 'edgetl_sinks'")


def test_hook_calls_are_traced_naming_the_plugin_and_what_it_gave(tmp_path, monkeypatch, capsys):
    make_plugin(tmp_path, "traced", SINK_PLUGIN.format(sink="traced"))
    activate(monkeypatch, tmp_path, load="traced")
    monkeypatch.setenv("EDGETL_TRACE_HOOKS", "1")
    PluginManager()
    err = capsys.readouterr().err
    assert "edgetl hook edgetl_sinks -> plugin traced\n" in err
    assert "edgetl hook edgetl_sinks <- plugin traced: registered 1: sink 'traced' (" in err
    assert "edgetl hook edgetl_targets <- plugin edgetl_builtins.onnx: registered 1: target 'onnx'" in err
    assert err.count("edgetl hook edgetl_sinks -> ") == 4  # edgetl_builtins.stdio, edgetl_builtins.sinks, edgetl_builtins.line, traced: one call each
    monkeypatch.setenv("EDGETL_TRACE_HOOKS", "0")
    PluginManager()
    assert "edgetl hook" not in capsys.readouterr().err


def test_trace_hooks_env_var_prints_on_the_command_line(tmp_path):
    env = {**subprocess_env(tmp_path, load=""), "EDGETL_TRACE_HOOKS": "1"}
    out = subprocess.run([sys.executable, "-m", "edgetl", "plugins", "list", "--json"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "edgetl hook edgetl_targets -> plugin edgetl_builtins.onnx" in out.stderr
    assert "edgetl hook edgetl_loggers <- plugin edgetl_builtins.loggers: registered 2: logger 'tensorboard'" in out.stderr
    json.loads(out.stdout)  # tracing never touches stdout


def test_one_failing_plugin_is_skipped_alone_and_every_failing_hook_is_named(tmp_path, monkeypatch):
    code = SINK_PLUGIN.format(sink="twice").replace("    register(S())", "    raise ValueError('sink boom')") + (
        "\n@hookimpl\ndef edgetl_sources(register):\n    raise KeyError('source boom')\n")
    make_plugin(tmp_path, "twice", code)
    make_plugin(tmp_path, "fine", SINK_PLUGIN.format(sink="fine"))
    activate(monkeypatch, tmp_path, load="twice,fine")
    with pytest.warns(PluginWarning, match="twice"):
        pm = PluginManager()
    reason = pm.plugins["twice"].reason
    assert "edgetl_sinks: ValueError: sink boom" in reason and "edgetl_sources: KeyError" in reason
    assert pm.plugins["fine"].status == "ok" and pm.get("sink", "fine").plugin == "fine"


def test_failing_command_hook_is_skipped_alone(tmp_path, monkeypatch):
    import click

    cmd = ("import click\nfrom edgetl.hookspecs import hookimpl\n@hookimpl\ndef edgetl_commands(cli):\n"
           "    cli.add_command(click.Command('{name}'))\n")
    make_plugin(tmp_path, "cmdok", cmd.format(name="from-ok"))
    make_plugin(tmp_path, "cmdbad", cmd.format(name="x") + "    raise RuntimeError('cmd boom')\n")
    activate(monkeypatch, tmp_path, load="cmdok,cmdbad")
    pm = PluginManager()
    group = click.Group("g")
    with pytest.warns(PluginWarning, match="edgetl_commands failed: RuntimeError: cmd boom"):
        pm.add_commands(group)
    assert "from-ok" in group.commands and pm.plugins["cmdbad"].status == "broken"


def test_plugins_list_shows_each_plugins_hooks(tmp_path, monkeypatch):
    make_plugin(tmp_path, "hooky", SINK_PLUGIN.format(sink="hooky"))
    activate(monkeypatch, tmp_path, load="hooky")
    monkeypatch.setattr("edgetl.plugins._MANAGER", None)
    result = CliRunner().invoke(cli, ["plugins", "list"], env={"COLUMNS": "250"})
    row = next(line for line in result.stdout.splitlines() if "hooky" in line)
    assert "sinks" in row and "sink:hooky" in row
    assert any("edgetl_builtins.timm" in line and "backbones" in line for line in result.stdout.splitlines())


# -- papercuts -------------------------------------------------------------------------------------
NEEDY = SINK_PLUGIN.format(sink="{sink}").replace(
    'name = "{sink}"', 'name = "{sink}"\n    requires = ("edgetl_no_such_module_xyz",)\n    {hint}')


def test_plugins_list_table_keeps_brackets_of_install_hints(tmp_path, monkeypatch):
    make_plugin(tmp_path, "brackets", NEEDY.format(sink="br", hint='extra = "tensorrt"'))
    activate(monkeypatch, tmp_path, load="brackets")
    monkeypatch.setattr("edgetl.plugins._MANAGER", None)
    result = CliRunner().invoke(cli, ["plugins", "list"], env={"COLUMNS": "250"})
    assert "pip install 'edgetl[tensorrt]'" in result.stdout  # rich markup escaped, not swallowed


def test_component_declares_its_own_install_hint(tmp_path, monkeypatch):
    hint = "install_hint = \"pip install 'edgetl-acme[gpu]'\""
    make_plugin(tmp_path, "acme", NEEDY.format(sink="acme", hint=hint))
    activate(monkeypatch, tmp_path, load="acme")
    pm = PluginManager()
    assert "pip install 'edgetl-acme[gpu]'" in pm.plugins["acme"].reason
    assert "edgetl[" not in pm.plugins["acme"].reason
    monkeypatch.setattr("edgetl.plugins._MANAGER", pm)
    doc = json.loads(CliRunner().invoke(cli, ["plugins", "show", "acme", "--json"]).stdout)
    assert doc["components"][0]["install_hint"] == "pip install 'edgetl-acme[gpu]'"
    assert doc["distribution"] == "edgetl_test_acme"


def test_one_missing_component_makes_the_plugin_partial_not_unavailable(tmp_path, monkeypatch):
    code = NEEDY.format(sink="needs-lib", hint='extra = "agent"') + (
        "\nclass Plain(S):\n    name = 'plain'\n    requires = ()\n"
        "\n@hookimpl\ndef edgetl_sources(register):\n    pass\n")
    code = code.replace("    register(S())", "    register(S())\n    register(Plain())")
    make_plugin(tmp_path, "mixed", code)
    activate(monkeypatch, tmp_path, load="mixed")
    pm = PluginManager()
    info = pm.plugins["mixed"]
    assert info.status == "partial"
    assert info.reason == ("sink needs-lib needs edgetl_no_such_module_xyz (pip install 'edgetl[agent]')")
    assert pm.get("sink", "plain").missing_modules() == []  # the available one is usable


def test_load_plugins_naming_no_entry_point_warns(tmp_path, monkeypatch):
    make_plugin(tmp_path, "hello", SINK_PLUGIN.format(sink="hello"))
    activate(monkeypatch, tmp_path, load="helo")
    with pytest.warns(PluginWarning, match="EDGETL_LOAD_PLUGINS names 'helo'.*did you mean 'hello'"):
        PluginManager()
    activate(monkeypatch, tmp_path, load="edgetl_builtins.stdio")
    with pytest.warns(PluginWarning, match="built-in plugin, which always loads"):
        PluginManager()


def test_a_package_with_two_broken_entry_points_reports_both(tmp_path, monkeypatch):
    make_plugin(tmp_path, "first", "raise RuntimeError('first boom')\n", module="edgetl_test_pair")
    dist = tmp_path / "edgetl_test_pair-0.1.dist-info"
    (tmp_path / "edgetl_test_pair_b.py").write_text("raise RuntimeError('second boom')\n")
    (dist / "entry_points.txt").write_text("[edgetl]\nfirst = edgetl_test_pair\nsecond = edgetl_test_pair_b\n")
    activate(monkeypatch, tmp_path, load=None)
    with pytest.warns(PluginWarning) as record:
        pm = PluginManager()
    assert {"first boom", "second boom"} <= {m for w in record for m in ("first boom", "second boom")
                                             if m in str(w.message)}
    assert pm.plugins["first"].status == pm.plugins["second"].status == "broken"
    out = subprocess.run([sys.executable, "-m", "edgetl", "plugins", "list", "--json"], capture_output=True,
                         text=True, env=subprocess_env(tmp_path, load="first,second"))
    assert {p["name"] for p in json.loads(out.stdout) if p["status"] == "broken"} == {"first", "second"}
    assert "first boom" in out.stderr and "second boom" in out.stderr


def test_taken_entry_point_name_is_listed_twice_and_shown_under_its_primed_key(tmp_path, monkeypatch):
    """What docs/cli.md says about the primed key, checked on the real output."""
    make_plugin(tmp_path, "edgetl_builtins.stdio", SINK_PLUGIN.format(sink="other"), module="edgetl_test_dup")
    activate(monkeypatch, tmp_path, load="edgetl_builtins.stdio")
    with pytest.warns(PluginWarning):
        monkeypatch.setattr("edgetl.plugins._MANAGER", PluginManager())
    rows = json.loads(CliRunner().invoke(cli, ["plugins", "list", "--json"]).stdout)
    assert [(r["source"], r["status"]) for r in rows if r["name"] == "edgetl_builtins.stdio"] == [
        ("builtin", "ok"), ("third-party", "broken")]
    shown = json.loads(CliRunner().invoke(cli, ["plugins", "show", "edgetl_builtins.stdio'", "--json"]).stdout)
    assert shown["source"] == "third-party" and "already taken" in shown["reason"]


def test_statuses_are_the_ones_the_json_schemas_allow():
    from pathlib import Path

    schemas = Path(__file__).resolve().parents[1] / "docs" / "schemas"
    listed = json.loads((schemas / "plugins-list.schema.json").read_text())["$defs"]["plugin"]
    shown = json.loads((schemas / "plugins-show.schema.json").read_text())
    assert listed["properties"]["status"]["enum"] == list(STATUSES) == shown["properties"]["status"]["enum"]
