"""``edgetl config show CONFIG [--set k=v]``: the run config as ``train`` will use it, defaults filled in."""

from __future__ import annotations

import click


@click.group("config")
def config_group() -> None:
    """Look at run configs."""


@config_group.command("show")
@click.argument("config", metavar="CONFIG")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key as train does, e.g. --set train.epochs=5 (repeatable).")
def show_cmd(config: str, overrides: tuple[str, ...]) -> None:
    """Print CONFIG resolved: the file, then --set, then every default (YAML on stdout).

    CONFIG is a YAML file or the name of a shipped example
    (textures-linear-probe, elpv-binary-linear-probe, …): `edgetl config show
    textures-linear-probe > my.yaml` starts a config of your own.

    \b
      edgetl config show examples/defect_detection/textures-linear-probe.yaml
      edgetl config show textures-linear-probe --set train.epochs=5
    """
    import yaml

    from edgetl.config import load_run_config, resolve_named, shipped

    path = resolve_named(config, "configs", "example config")
    cfg = load_run_config(path, list(overrides))
    given = f"{config}" + "".join(f" --set {o}" for o in overrides)
    click.echo(f"# edgetl config show {given}\n"
               f"# every key, defaults filled in; relative data paths resolve from the working directory\n"
               f"# shipped examples: {', '.join(shipped('configs'))}")
    click.echo(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False), nl=False)
