"""``edgetl collect URL --out DIR``: the device's marked and close-call frames into a training folder."""

from __future__ import annotations

import click

from edgetl.cli.common import emit_json, json_option


@click.command("collect")
@click.argument("url")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Dataset folder: train/<class>/ (labelled by their marks), unlabelled/, captures.jsonl.")
@click.option("--token-file", required=True, type=click.Path(dir_okay=False), help="File holding the agent's token.")
@click.option("--ca", type=click.Path(dir_okay=False), help="CA certificate (PEM) for the device's own CA.")
@json_option
def collect_command(url, out, token_file, ca, as_json) -> None:
    """Pull the frames marked on the line's page (and sampled close calls) from the agent at URL.

    \b
      edgetl collect https://cam1:8470 --token-file token --out data/line-feedback
      edgetl data inspect data/line-feedback
    """
    from edgetl.deploy.collect import collect

    result = collect(url, out, token_file=token_file, ca=ca)
    if as_json:
        emit_json(result.to_dict())
        return
    labelled = ", ".join(f"{n} {label}" for label, n in sorted(result.labelled.items())) or "none"
    click.echo(f"collected into {result.out}: labelled {labelled}; unlabelled {result.unlabelled}; "
               f"{result.downloaded} new image(s)")
