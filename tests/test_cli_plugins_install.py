"""``edgetl plugins install|uninstall`` for real, offline, in a throwaway environment.

pip only uninstalls from the environment it runs in (``--target`` and
``--prefix`` installs cannot be uninstalled), so these tests make a venv whose
site-packages also reads the shared one (``site.addsitedir`` in a ``.pth``):
edgetl, pip and setuptools come from there, the plugin lands in the venv and
leaves it again, and the shared environment is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "third_party_plugin"


@pytest.fixture
def throwaway(tmp_path):
    """(python, env): a venv layered over this interpreter's site-packages; pip offline, no build isolation."""
    home = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(home)
    python = home / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    parent = sysconfig.get_paths()["purelib"]
    Path(site, "_edgetl_parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_NO_BUILD_ISOLATION": "false", "PIP_NO_DEPS": "1",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "EDGETL_LOAD_PLUGINS": "csv"}
    return python, env


def _edgetl(python, env, *args, stdin: str | None = None):
    return subprocess.run([str(python), "-m", "edgetl", *args], capture_output=True, text=True, env=env,
                          input=stdin, cwd=ROOT)


def _listed(python, env) -> dict:
    out = _edgetl(python, env, "plugins", "list", "--json")
    assert out.returncode == 0, out.stderr
    return {p["name"]: p for p in json.loads(out.stdout)}


def test_install_then_uninstall_round_trip(throwaway, tmp_path):
    python, env = throwaway
    # pip builds in the source folder: install a copy, so the checkout is never written to
    example = shutil.copytree(EXAMPLE, tmp_path / "example", ignore=shutil.ignore_patterns("build", "*.egg-info",
                                                                                          "__pycache__"))
    out = _edgetl(python, env, "plugins", "install", str(example))
    assert out.returncode == 0, out.stderr
    assert "plugin 'csv' from edgetl-csv-sink registered (ok)" in out.stdout
    assert _listed(python, env)["csv"]["status"] == "ok"

    out = _edgetl(python, env, "plugins", "uninstall", "csv", stdin="n\n")  # answering no keeps it
    assert out.returncode == 1 and "uninstall edgetl-csv-sink 0.1.0 (plugin 'csv')?" in out.stderr
    assert "csv" in _listed(python, env)

    out = _edgetl(python, env, "plugins", "uninstall", "csv", "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "uninstalled edgetl-csv-sink 0.1.0 (plugins: csv)"
    assert "csv" not in _listed(python, env)


def test_install_of_a_package_that_registers_nothing_is_an_error(throwaway, tmp_path):
    python, env = throwaway
    project = tmp_path / "noplugin"
    (project / "edgetl_noplugin_pkg").mkdir(parents=True)
    (project / "edgetl_noplugin_pkg" / "__init__.py").write_text("")
    (project / "pyproject.toml").write_text(
        '[build-system]\nrequires=["setuptools"]\nbuild-backend="setuptools.build_meta"\n'
        '[project]\nname="edgetl-noplugin-pkg"\nversion="0.0.1"\n'
        '[tool.setuptools]\npackages=["edgetl_noplugin_pkg"]\n')
    out = _edgetl(python, env, "plugins", "install", str(project))
    assert out.returncode == 1
    assert "registers no edgetl plugin" in out.stderr.strip().splitlines()[-1]


def test_uninstall_refuses_builtins_and_unknown_names():
    result = CliRunner().invoke(cli, ["plugins", "uninstall", "edgetl_builtins.stdio", "--yes"])
    assert result.exit_code == 1 and "'edgetl_builtins.stdio' is built into edgetl" in result.stderr
    result = CliRunner().invoke(cli, ["plugins", "uninstall", "edgetl_builtins.stdo", "--yes"])
    assert result.exit_code == 1 and "unknown plugin 'edgetl_builtins.stdo'; did you mean 'edgetl_builtins.stdio'" in result.stderr


def test_uninstall_of_a_copy_pip_cannot_remove_says_why(tmp_path, monkeypatch):
    """A plugin on PYTHONPATH (a --target folder) is not pip's to remove: a clear error, not a false success."""
    from tests.plugin_factory import SINK_PLUGIN, make_plugin, subprocess_env

    make_plugin(tmp_path, "stray", SINK_PLUGIN.format(sink="stray"))
    env = {**os.environ, **subprocess_env(tmp_path, load="stray"), "PIP_NO_INDEX": "1"}
    out = subprocess.run([sys.executable, "-m", "edgetl", "plugins", "uninstall", "stray", "--yes"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pip") and "edgetl_test_stray" in last


def test_registration_check_ignores_an_edgetl_folder_in_the_working_directory(tmp_path, monkeypatch):
    """``plugins install`` from a checkout holding ``edgetl/`` must check the installed edgetl."""
    from edgetl.cli.plugins_cmd import _third_party_by_dist

    (tmp_path / "edgetl").mkdir()
    (tmp_path / "edgetl" / "__init__.py").write_text("raise ImportError('the wrong edgetl')\n")
    monkeypatch.chdir(tmp_path)
    assert isinstance(_third_party_by_dist(), dict)
