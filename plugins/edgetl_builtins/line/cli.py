"""``edgetl device cameras``: the GenICam cameras this machine sees (run on the device, no agent needed)."""

from __future__ import annotations

import json

import click


@click.command("cameras")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout; logs go to stderr.")
def cameras_cmd(as_json: bool) -> None:
    """List the GenICam cameras (GigE Vision, USB3 Vision) Aravis discovers here, with the URI of each."""
    from edgetl_builtins.line.genicam import list_cameras

    found = list_cameras()
    for camera in found:
        camera["uri"] = f"genicam://serial={camera['serial']}" if camera["serial"] else f"genicam://{camera['id']}"
    if as_json:
        click.echo(json.dumps({"cameras": found}, indent=2))
        return
    if not found:
        click.echo("no camera found (GigE Vision cameras must be on a subnet of this host's interfaces)")
    for camera in found:
        click.echo(f"{camera['uri']}  {camera['vendor']} {camera['model']}  {camera['protocol']} "
                   f"{camera['address']}")
