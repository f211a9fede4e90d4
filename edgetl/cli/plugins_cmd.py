"""``edgetl plugins list|show|install|uninstall``: what is loaded, from where, and why not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click

from edgetl.cli.common import console, emit_json, info, json_option
from edgetl.errors import PluginError, did_you_mean

# Run in a fresh interpreter, never from the working directory: a folder holding an ``edgetl/``
# checkout must not shadow the installed edgetl (``-c`` puts the working directory first on sys.path).
_REGISTERED = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
               "import json; from edgetl.plugins import get_manager\n"
               "print(json.dumps([[p.dist, p.name, p.status, p.reason] for p in "
               "get_manager().plugins.values() if p.source == 'third-party']))")
_STDERR = 2  # pip's own output is a log: file descriptor 2, so stdout holds only the result


@click.group("plugins")
def plugins_group() -> None:
    """List, inspect, install and uninstall plugins."""


def _table(rows: list[dict]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("name", "version", "source", "status", "hooks", "components"):
        table.add_column(col)
    for row in rows:
        comps = ", ".join(f"{c['kind']}:{c['name']}" for c in row["components"])
        status = row["status"] if row["reason"] is None else f"{row['status']}: {row['reason']}"
        hooks = ", ".join(h.removeprefix("edgetl_") for h in row["hooks"])
        table.add_row(*(escape(cell) for cell in (row["name"], row["version"], row["source"], status,
                                                  hooks, comps)))
    console().print(table)


@plugins_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Every plugin: version, built-in or third-party, status, hooks, components."""
    from edgetl.plugins import get_manager

    rows = [p.to_dict() for p in get_manager().plugins.values()]
    if as_json:
        emit_json(rows)
    else:
        _table(rows)


def _find(name: str):
    """The loaded (or broken) plugin called ``name``, or a "did you mean" error."""
    from edgetl.plugins import get_manager

    plugins = get_manager().plugins
    if name not in plugins:
        raise PluginError(f"unknown plugin '{name}'{did_you_mean(name, plugins)}")
    return plugins[name]


@plugins_group.command("show")
@click.argument("name")
@json_option
def show_cmd(name: str, as_json: bool) -> None:
    """One plugin, with each component's description and requirements."""
    from edgetl.plugins import install_hint

    plugin = _find(name)
    doc = plugin.to_dict()
    doc["module"] = plugin.module
    doc["distribution"] = plugin.dist
    doc["components"] = [
        {"kind": c.kind, "name": c.name, "description": c.description,
         "requires": list(c.requires), "extra": c.extra, "missing": c.missing_modules(),
         "install_hint": install_hint(c) if c.missing_modules() else None}
        for c in plugin.components
    ]
    if as_json:
        emit_json(doc)
        return
    click.echo(f"{doc['name']} {doc['version']} ({doc['source']}, {doc['status']})")
    if doc["reason"]:
        click.echo(f"  reason: {doc['reason']}")
    click.echo(f"  module: {doc['module']}")
    click.echo(f"  hooks: {', '.join(doc['hooks']) or '-'}")
    for c in doc["components"]:
        missing = f"  [missing: {', '.join(c['missing'])}; {c['install_hint']}]" if c["missing"] else ""
        click.echo(f"  {c['kind']:<9} {c['name']:<24} {c['description']}{missing}")


def _normal(dist: str) -> str:
    return dist.lower().replace("_", "-").replace(".", "-")


def _third_party_by_dist() -> dict[str, list]:
    """Ask a fresh interpreter which third-party plugins register, keyed by distribution.

    Every entry point counts (``EDGETL_LOAD_PLUGINS`` is dropped), and the working
    directory is kept off the path (see ``_REGISTERED``).
    """
    env = {k: v for k, v in os.environ.items() if k != "EDGETL_LOAD_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", _REGISTERED], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise PluginError(f"could not load the plugins in a fresh interpreter: {last}")
    result: dict[str, list] = {}
    for dist, name, status, reason in json.loads(out.stdout.strip().splitlines()[-1]):
        result.setdefault(_normal(dist or ""), []).append((name, status, reason))
    return result


@plugins_group.command("install")
@click.argument("package")
def install_cmd(package: str) -> None:
    """pip-install PACKAGE into this environment, then confirm it registered a plugin."""
    info(f"installing {package} with {sys.executable} -m pip …")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", package], stdout=_STDERR)
    if proc.returncode != 0:
        raise PluginError(f"pip could not install {package!r} (exit status {proc.returncode})")
    dist = package
    if Path(package).exists():  # a local project: read its name from the installed metadata
        dist = _local_project_name(Path(package)) or package
    key = _normal(dist.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip())
    found = _third_party_by_dist().get(key, [])
    if not found:
        raise PluginError(f"{package!r} installed, but it registers no edgetl plugin "
                          "(no entry point in the 'edgetl' group)")
    for name, status, reason in found:
        if status == "broken":
            raise PluginError(f"{package!r} installed, but its plugin '{name}' is broken: {reason}")
        click.echo(f"plugin '{name}' from {dist} registered ({status})")


@plugins_group.command("uninstall")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def uninstall_cmd(name: str, yes: bool) -> None:
    """pip-uninstall the distribution that provides plugin NAME (and every plugin it ships)."""
    plugin = _find(name)
    if plugin.source == "builtin":
        raise PluginError(f"'{name}' is built into edgetl and cannot be uninstalled on its own "
                          "(uninstall edgetl, or leave its components unused)")
    if not plugin.dist:
        raise PluginError(f"plugin '{name}' comes from module {plugin.module}, which no installed "
                          "distribution owns; remove it from the path by hand")
    shipped = sorted(p.name for p in _loaded_from(plugin.dist))
    also = [p for p in shipped if p != name]
    question = (f"uninstall {plugin.dist} {plugin.version} (plugin '{name}'"
                + (f", and also {', '.join(repr(p) for p in also)}" if also else "") + ")?")
    if not yes:
        click.confirm(question, abort=True, err=True)
    info(f"uninstalling {plugin.dist} with {sys.executable} -m pip …")
    proc = subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", plugin.dist], stdout=_STDERR)
    if proc.returncode != 0:
        raise PluginError(f"pip could not uninstall {plugin.dist!r} (exit status {proc.returncode})")
    left = _third_party_by_dist().get(_normal(plugin.dist), [])
    if left:
        raise PluginError(f"pip uninstalled {plugin.dist!r}, but plugin(s) {', '.join(n for n, *_ in left)} "
                          "still load: another copy is on the path (e.g. PYTHONPATH or a --target folder)")
    click.echo(f"uninstalled {plugin.dist} {plugin.version} (plugins: {', '.join(shipped)})")


def _loaded_from(dist: str) -> list:
    from edgetl.plugins import get_manager

    return [p for p in get_manager().plugins.values() if p.dist and _normal(p.dist) == _normal(dist)]


def _local_project_name(path) -> str | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return None
    pyproject = path / "pyproject.toml"
    if pyproject.is_file():
        return tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    return None
