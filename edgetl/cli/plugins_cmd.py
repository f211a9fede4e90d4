"""``edgetl plugins list|show|install``: what is loaded, from where, and why not."""

from __future__ import annotations

import subprocess
import sys

import click

from edgetl.cli.common import console, emit_json, info, json_option
from edgetl.errors import PluginError


@click.group("plugins")
def plugins_group() -> None:
    """List, inspect and install plugins."""


def _table(rows: list[dict]) -> None:
    from rich.table import Table

    table = Table(show_lines=False)
    for col in ("name", "version", "source", "status", "components"):
        table.add_column(col)
    for row in rows:
        comps = ", ".join(f"{c['kind']}:{c['name']}" for c in row["components"])
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
        table.add_row(row["name"], row["version"], row["source"], status, comps)
    console().print(table)


@plugins_group.command("list")
@json_option
def list_cmd(as_json: bool) -> None:
    """Every plugin: version, built-in or third-party, status, components."""
    from edgetl.plugins import get_manager

    rows = [p.to_dict() for p in get_manager().plugins.values()]
    if as_json:
        emit_json(rows)
    else:
        _table(rows)


@plugins_group.command("show")
@click.argument("name")
@json_option
def show_cmd(name: str, as_json: bool) -> None:
    """One plugin, with each component's description and requirements."""
    import difflib

    from edgetl.plugins import get_manager

    plugins = get_manager().plugins
    if name not in plugins:
        close = difflib.get_close_matches(name, list(plugins), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise PluginError(f"unknown plugin '{name}'{hint}")
    plugin = plugins[name]
    doc = plugin.to_dict()
    doc["module"] = plugin.module
    doc["components"] = [
        {"kind": c.kind, "name": c.name, "description": c.description,
         "requires": list(c.requires), "extra": c.extra, "missing": c.missing_modules()}
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
        missing = f"  [missing: {', '.join(c['missing'])}]" if c["missing"] else ""
        click.echo(f"  {c['kind']:<9} {c['name']:<24} {c['description']}{missing}")


def _third_party_by_dist() -> dict[str, list[str]]:
    """Ask a fresh interpreter which third-party plugins register, keyed by distribution."""
    code = ("import json;from edgetl.plugins import get_manager;"
            "print(json.dumps([[p.dist, p.name, p.status, p.reason] for p in "
            "get_manager().plugins.values() if p.source == 'third-party']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    result: dict[str, list] = {}
    for dist, name, status, reason in json.loads(out.stdout.strip().splitlines()[-1]):
        result.setdefault((dist or "").lower().replace("_", "-"), []).append((name, status, reason))
    return result


@plugins_group.command("install")
@click.argument("package")
def install_cmd(package: str) -> None:
    """pip-install PACKAGE into this environment, then confirm it registered a plugin."""
    info(f"installing {package} with {sys.executable} -m pip …")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", package])
    if proc.returncode != 0:
        raise PluginError(f"pip could not install {package!r} (exit status {proc.returncode})")
    from pathlib import Path

    dist = package
    if Path(package).exists():  # a local project: read its name from the installed metadata
        dist = _local_project_name(Path(package)) or package
    key = dist.split("[")[0].split("=")[0].split("<")[0].split(">")[0].strip().lower().replace("_", "-")
    found = _third_party_by_dist().get(key, [])
    if not found:
        raise PluginError(f"{package!r} installed, but it registers no edgetl plugin "
                          "(no entry point in the 'edgetl' group)")
    for name, status, reason in found:
        if status == "broken":
            raise PluginError(f"{package!r} installed, but its plugin '{name}' is broken: {reason}")
        click.echo(f"plugin '{name}' from {dist} registered ({status})")


def _local_project_name(path) -> str | None:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return None
    pyproject = path / "pyproject.toml"
    if pyproject.is_file():
        return tomllib.loads(pyproject.read_text()).get("project", {}).get("name")
    return None
