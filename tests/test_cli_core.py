"""The command line's core: version, help, plugins list/show/install, errors, JSON schemas."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from edgetl import __version__
from edgetl.cli import cli
from tests.plugin_factory import activate, make_plugin

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "docs" / "schemas"


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


def run_edgetl(*args: str, env: dict | None = None, check_torch: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh interpreter; with check_torch, print whether torch got imported."""
    code = "import sys; from edgetl.cli import main\ntry:\n    main()\nfinally:\n"
    code += ("    print('TORCH_LOADED=' + str('torch' in sys.modules), 'NUMPY_LOADED=' + str('numpy' in sys.modules),"
             " file=sys.stderr)\n" if check_torch else "    pass\n")
    full_env = {**os.environ, "EDGETL_LOAD_PLUGINS": "", **(env or {})}
    if env and "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):  # keep the caller's path after the test's
        full_env["PYTHONPATH"] = env["PYTHONPATH"] + os.pathsep + os.environ["PYTHONPATH"]
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full_env)


def invoke(*args: str) -> tuple[int, str, str]:
    """The CLI in this process (where a fresh interpreter is not the point): (exit code, stdout, stderr)."""
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_version():
    code, out, _ = invoke("--version")
    assert code == 0 and out.strip() == f"edgetl, version {__version__}"


@pytest.mark.parametrize("args", [("--help",), ("plugins", "list"), ("plugins", "list", "--json")])
def test_help_and_plugins_list_do_not_import_torch_or_numpy(args):
    """A fresh interpreter: what the command imports, and (``--json``) that its document is all of stdout."""
    out = run_edgetl(*args, check_torch=True, env={"EDGETL_LOAD_PLUGINS": ""})  # the built-ins, registered
    assert out.returncode == 0, out.stderr
    assert "TORCH_LOADED=False" in out.stderr and "NUMPY_LOADED=False" in out.stderr
    if "--json" in args:  # nothing printed at import or plugin loading: stdout is the one document
        jsonschema.validate(json.loads(out.stdout), schema("plugins-list.schema.json"))


def test_plugins_list_json_validates_and_is_the_only_stdout():
    code, out, _ = invoke("plugins", "list", "--json")
    doc = json.loads(out)
    jsonschema.validate(doc, schema("plugins-list.schema.json"))
    assert code == 0 and any(p["name"] == "edgetl_builtins.stdio" and p["status"] == "ok" for p in doc)


def test_plugins_list_json_shows_broken_third_party(tmp_path, monkeypatch):
    make_plugin(tmp_path, "kaputt", "raise RuntimeError('kaputt')\n")
    activate(monkeypatch, tmp_path, "kaputt")
    from edgetl.plugins import PluginWarning

    with pytest.warns(PluginWarning, match="skipping plugin 'kaputt'"):
        doc = json.loads(invoke("plugins", "list", "--json")[1])
    jsonschema.validate(doc, schema("plugins-list.schema.json"))
    broken = next(p for p in doc if p["name"] == "kaputt")
    assert broken["status"] == "broken" and "kaputt" in broken["reason"] and broken["source"] == "third-party"


def test_plugins_show_json_validates():
    result = CliRunner().invoke(cli, ["plugins", "show", "edgetl_builtins.stdio", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, schema("plugins-show.schema.json"))
    assert {c["name"] for c in doc["components"]} >= {"stdout", "jsonl"}


def test_unknown_plugin_is_one_line_error_exit_1():
    code, _, err = invoke("plugins", "show", "edgetl_builtins.stdo")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown plugin 'edgetl_builtins.stdo'; did you mean 'edgetl_builtins.stdio'")


def test_debug_shows_traceback(monkeypatch):
    monkeypatch.setenv("EDGETL_DEBUG", "0")  # --debug sets it for the process: put back after the test
    code, _, err = invoke("plugins", "show", "nope")
    assert code == 1 and "Traceback" not in err
    code, _, err = invoke("--debug", "plugins", "show", "nope")
    assert code == 1 and "Traceback" in err
    monkeypatch.setenv("EDGETL_DEBUG", "1")
    code, _, err = invoke("plugins", "show", "nope")
    assert "Traceback" in err


def test_usage_error_exits_2():
    result = CliRunner().invoke(cli, ["plugins", "list", "--no-such-flag"])
    assert result.exit_code == 2


def test_internal_error_is_one_line_without_debug(monkeypatch):
    def boom(*a, **k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr("edgetl.plugins.get_manager", boom)
    monkeypatch.delenv("EDGETL_DEBUG", raising=False)
    result = CliRunner().invoke(cli, ["plugins", "list"])
    assert result.exit_code == 1
    assert result.output.strip() == ("error: internal error: ZeroDivisionError: division by zero "
                                     "(run with --debug for the traceback)")


def _pip_target(tmp_path: Path, project: Path) -> Path:
    # pip builds in the source folder: build a copy, so the checkout is never written to
    source = shutil.copytree(project, tmp_path / "src", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                      "__pycache__"))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(target), str(source)], check=True,
                   capture_output=True, text=True)
    return target


def test_example_third_party_plugin_installs_offline_and_is_listed(tmp_path, monkeypatch):
    site = _pip_target(tmp_path, ROOT / "examples" / "third_party_plugin")
    activate(monkeypatch, site, "csv")
    doc = json.loads(invoke("plugins", "list", "--json")[1])
    csv_plugin = next(p for p in doc if p["name"] == "csv")
    assert csv_plugin == {"name": "csv", "version": "0.1.0", "source": "third-party", "status": "ok",
                          "reason": None, "hooks": ["edgetl_sinks"], "components": [{"kind": "sink", "name": "csv"}]}
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(ROOT / "examples" / "third_party_plugin" / "tests")],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              filter(None, [str(site), os.environ.get("PYTHONPATH")]))})
    assert test.returncode == 0, test.stdout + test.stderr


# plugins install/uninstall for real: tests/test_cli_plugins_install.py (a throwaway venv, never this one)
