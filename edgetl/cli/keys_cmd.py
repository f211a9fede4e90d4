"""``edgetl keys generate NAME``: an Ed25519 key pair for signing bundles."""

from __future__ import annotations

import click

from edgetl.cli.common import emit_json, json_option


@click.group("keys")
def keys_group() -> None:
    """Generate signing keys (Ed25519)."""


@keys_group.command("generate")
@click.argument("name")
@click.option("--force", is_flag=True, help="Overwrite NAME.key / NAME.pub if they exist.")
@json_option
def generate_cmd(name: str, force: bool, as_json: bool) -> None:
    """Write NAME.key (private, mode 0600) and NAME.pub (give this to devices' --trust).

    NAME may be a path, e.g. keys/line1.
    """
    from edgetl.keys import generate_keypair, key_id, load_public_key

    key_path, pub_path = generate_keypair(name, force=force)
    kid = key_id(load_public_key(pub_path))
    if as_json:
        emit_json({"private_key": str(key_path), "public_key": str(pub_path), "key_id": kid})
        return
    click.echo(f"private key: {key_path} (keep it secret; mode 0600)")
    click.echo(f"public key:  {pub_path} (pass to 'edgetl agent serve --trust' and 'bundle verify --trust')")
    click.echo(f"key id:      {kid}")
