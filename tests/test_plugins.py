"""Plugin loading: built-in, entry points, broken, clashing, unavailable, hermetic."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest

from edgetl.errors import PluginError, UnknownComponentError
from edgetl.plugins import DEFAULT_PLUGINS, PluginManager, PluginWarning
from tests.plugin_factory import SINK_PLUGIN, activate, make_plugin


def test_builtin_plugins_load_first_in_fixed_order():
    pm = PluginManager()
    names = list(pm.plugins)
    assert names[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    assert all(pm.plugins[n].source == "builtin" for n in DEFAULT_PLUGINS)
    sink = pm.get("sink", "jsonl")
    assert sink.plugin == "edgetl_stdio"


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
    assert pm.get("sink", "jsonl").plugin == "edgetl_stdio"


def test_clashing_component_name_marks_the_newcomer_broken(tmp_path, monkeypatch):
    make_plugin(tmp_path, "clash", SINK_PLUGIN.format(sink="jsonl"))
    activate(monkeypatch, tmp_path, load="clash")
    with pytest.warns(PluginWarning, match="clashes"):
        pm = PluginManager()
    reason = pm.plugins["clash"].reason
    assert "edgetl_stdio" in reason and "clash" in reason and "JsonlSink" in reason
    assert pm.get("sink", "jsonl").plugin == "edgetl_stdio"


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
    make_plugin(tmp_path, "half", code)
    activate(monkeypatch, tmp_path, load="half")
    with pytest.warns(PluginWarning, match="no camera lib"):
        pm = PluginManager()
    assert pm.plugins["half"].status == "broken"
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
    monkeypatch.setattr("edgetl.plugins.DEFAULT_PLUGINS", ("edgetl_stdio", "edgetl_does_not_exist"))
    with pytest.raises(PluginError, match='built-in plugin "edgetl_does_not_exist"') as exc:
        PluginManager()
    assert isinstance(exc.value.__cause__, ModuleNotFoundError)


def test_unknown_component_name_suggests_close_match():
    with pytest.raises(UnknownComponentError, match="did you mean 'jsonl'"):
        PluginManager().get("sink", "jsnol")


def test_duplicate_entry_point_name_does_not_replace_builtin(tmp_path, monkeypatch):
    make_plugin(tmp_path, "edgetl_stdio", SINK_PLUGIN.format(sink="other"), module="edgetl_test_dup")
    activate(monkeypatch, tmp_path, load="edgetl_stdio")
    with pytest.warns(PluginWarning, match="already taken"):
        pm = PluginManager()
    assert pm.plugins["edgetl_stdio"].source == "builtin"


def test_help_still_works_with_a_broken_third_party_plugin(tmp_path):
    make_plugin(tmp_path, "bad", "raise ImportError('missing thing')\n")
    env = {"PYTHONPATH": str(tmp_path), "EDGETL_LOAD_PLUGINS": "bad", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "edgetl", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and "plugins" in out.stdout
    assert "skipping plugin 'bad'" in out.stderr and "missing thing" in out.stderr


def test_no_warning_when_everything_loads():
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        PluginManager()
