"""``edgetl device info|rollback``: ask one agent what it runs, or roll it back."""

from __future__ import annotations

import click

from edgetl.cli.common import emit_json, info, json_option

device_options = [
    click.option("--device", "device_url", required=True, help="The agent's URL, e.g. https://cam1:8470."),
    click.option("--token-file", required=True, type=click.Path(dir_okay=False), help="File holding the token."),
    click.option("--ca", type=click.Path(dir_okay=False), help="CA certificate (PEM) for the device's own CA."),
    json_option,
]


def _with_options(func):
    for option in reversed(device_options):
        func = option(func)
    return func


def _client(device_url: str, token_file: str, ca: str | None):
    from edgetl.deploy.client import DeviceClient
    from edgetl.device.server import read_token

    return DeviceClient(device_url, read_token(token_file), ca=ca)


@click.group("device")
def device_group() -> None:
    """Query or roll back a device."""


@device_group.command("info")
@_with_options
def info_cmd(device_url, token_file, ca, as_json) -> None:
    """Device facts, runtimes and the current/previous model."""
    with _client(device_url, token_file, ca) as client:
        doc = client.info()
    if as_json:
        emit_json(doc)
        return
    from edgetl import fmt

    dev = doc["device"]
    click.echo(f"device    {dev['arch']}, {dev['os'].get('pretty_name') or dev['os'].get('system')}, "
               f"Python {dev['python']}, edgetl {dev['edgetl']}")
    click.echo(f"cpu       {dev['cpu'].get('model')} ({dev['cpu'].get('cores')} cores; "
               f"{' '.join(dev['cpu'].get('flags') or []) or 'no INT8 ISA flags'})")
    for gpu in dev.get("gpus") or []:
        click.echo(f"gpu       {gpu.get('name')}")
    for name, rt in dev["runtimes"].items():
        state = "available" if rt["available"] else f"missing {', '.join(rt['missing'])} (edgetl[{rt['extra']}])"
        click.echo(f"runtime   {name}: {state}")
    for key in ("current", "previous"):
        m = doc.get(key)
        click.echo(f"{key:<9} " + (f"{m['model_version']} ({m['target']['format']} {m['target']['precision']}, "
                                    f"{m['task']}: {', '.join(m['labels'])})" if m else "(none)"))
    serving = doc.get("serving")
    if serving and serving.get("threshold") is not None:
        click.echo(f"threshold {fmt.prob(serving['threshold'])}")


@device_group.command("threshold")
@click.argument("value", type=click.FloatRange(0, 1), metavar="X")
@click.option("--model", "model_path", type=click.Path(exists=True), metavar="RUN_DIR|BUNDLE",
              help="The model the device serves (its run or bundle): prints the threshold's effect on val first.")
@click.option("--val", "val_dir", type=click.Path(file_okay=False),
              help="Validation folder for that effect (default: the run's data.val).")
@_with_options
def threshold_cmd(value, model_path, val_dir, device_url, token_file, ca, as_json) -> None:
    """Set the current model's decision threshold on the device (journaled; the next install resets it).

    \b
      edgetl device threshold 0.25 --device https://cam1:8470 --token-file tok --model runs/line1
    """
    from edgetl import fmt

    if model_path:
        from edgetl.workflow import load
        from edgetl.workflow.operating_point import choose

        model = load(model_path)
        info(choose(model, threshold=value, val=val_dir).describe(model.positive))
    with _client(device_url, token_file, ca) as client:
        doc = client.set_threshold(value)
    if as_json:
        emit_json(doc)
        return
    old = doc.get("previous_threshold")
    click.echo(f"{doc['model']}: threshold {'argmax' if old is None else fmt.prob(old)} -> {fmt.prob(doc['threshold'])}")


@device_group.command("wait", short_help="Wait until an agent answers (and accepts the token).")
@click.argument("url")
@click.option("--port-file", type=click.Path(dir_okay=False),
              help="Take the port from this file (agent serve --port-file), read again at every try.")
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="Also check that the agent accepts this token: that it is the agent you started.")
@click.option("--ca", type=click.Path(dir_okay=False), help="CA certificate (PEM) for the device's own CA.")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=60.0, show_default=True,
              help="Seconds to wait before giving up (exit 1).")
def wait_cmd(url, port_file, token_file, ca, timeout) -> None:
    """Wait until the agent at URL is ready; print its URL on stdout.

    \b
      edgetl agent serve … --port 0 --port-file agent.port &
      URL=$(edgetl device wait http://127.0.0.1 --port-file agent.port --token-file tok)
      edgetl deploy model.edgetl --device "$URL" --token-file tok
    """
    from edgetl.deploy.wait import wait_ready

    click.echo(wait_ready(url, port_file=port_file, token_file=token_file, ca=ca, timeout_s=timeout, log=info))


@device_group.command("rollback")
@_with_options
def rollback_cmd(device_url, token_file, ca, as_json) -> None:
    """Swap the current and previous model (a second rollback returns)."""
    with _client(device_url, token_file, ca) as client:
        doc = client.rollback()
    if as_json:
        emit_json(doc)
    else:
        click.echo(f"rolled back: {doc.get('from')} -> {doc.get('to')}")
