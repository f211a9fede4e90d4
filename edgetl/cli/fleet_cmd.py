"""``edgetl push`` and ``edgetl fleet``: bundles in an OCI registry, devices that pull them.

docs/deploy.md "Fleets that pull" explains channels, promotion and the status topic.
"""

from __future__ import annotations

import click

from edgetl.cli.common import emit_json, info, json_option
from edgetl.cli.pull_options import broker_options, registry_options, with_options

REGISTRY_OPTIONS = registry_options()
BROKER_OPTIONS = broker_options(True, "The MQTT broker devices report to.")


def _seconds(text: str) -> float:
    from edgetl.device.pull import parse_interval

    return 0.0 if str(text).strip() in ("0", "0s") else parse_interval(text)


@click.command("push")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.argument("target", metavar="oci://HOST/REPO:TAG")
@with_options(REGISTRY_OPTIONS)
@json_option
def push_command(bundle, target, insecure, registry_auth, registry_ca, as_json) -> None:
    """Store BUNDLE in an OCI registry as an edgetl artifact under TAG (a channel).

    The signature stays inside the bundle: devices check it with their own trusted keys.

    \b
      edgetl push model.edgetl oci://registry.local:5000/line1/cam:canary --registry-auth auth.json
    """
    from edgetl.device.oci import push_bundle

    done = push_bundle(bundle, target, insecure=insecure, ca=registry_ca, auth_file=registry_auth)
    if as_json:
        emit_json(done)
    else:
        ann = done["annotations"]
        click.echo(f"pushed {ann.get('io.edgetl.bundle.model_version')} ({done['size']} bytes) to {done['ref']}")
        click.echo(f"  manifest {done['digest']}")
        click.echo(f"  bundle   {done['bundle_digest']}")


@click.group("fleet")
def fleet_group() -> None:
    """Devices that pull from a registry: their status, channel promotion."""


@fleet_group.command("status")
@with_options(BROKER_OPTIONS)
@click.option("--channel", help="Only devices on this channel (tag).")
@click.option("--wait", "wait_s", default="1s", show_default=True,
              help="How long to listen after the last retained status arrives.")
@json_option
def status_cmd(status_mqtt, status_mqtt_auth, status_mqtt_ca, status_mqtt_cert, status_mqtt_key, status_topic_prefix,
               channel, wait_s, as_json) -> None:
    """Every device's channel, serving digest, state and last seen (their retained MQTT status)."""
    import time

    from rich.table import Table

    from edgetl.cli.common import console
    from edgetl.deploy.fleet import Broker, fleet_status

    rows = fleet_status(Broker(status_mqtt, status_mqtt_auth, status_mqtt_ca, status_topic_prefix,
                               cert=status_mqtt_cert, key=status_mqtt_key),
                        quiet=_seconds(wait_s), channel=channel)
    if as_json:
        emit_json({"devices": rows})
        return
    table = Table(title=f"{len(rows)} device(s)")
    for col in ("device", "channel", "serving digest", "model", "state", "last seen", "last error"):
        table.add_column(col)
    now = time.time()
    for r in rows:
        seen = f"{now - float(r['time']):.0f} s ago" if r.get("time") else "-"
        table.add_row(str(r.get("device_id")), str(r.get("channel") or "-"),
                      str(r.get("serving_digest") or "-")[:19], str(r.get("serving") or "-"),
                      str(r.get("state")) if r.get("online") else "offline", seen,
                      str(r.get("last_error") or "")[:60])
    console().print(table)


@fleet_group.command("promote")
@click.argument("repo", metavar="oci://HOST/REPO")
@click.option("--from", "source", required=True, help="Channel (tag) whose bundle is promoted, e.g. canary.")
@click.option("--to", "target", required=True, help="Channel (tag) moved to it, e.g. stable.")
@click.option("--require", default=1, show_default=True, type=click.IntRange(min=1),
              help="Devices on --from that must report the digest healthy first.")
@click.option("--soak", default="0s", show_default=True, help="How long each must have been healthy (e.g. 30m).")
@click.option("--max-error-rate", default=0.01, show_default=True, type=click.FloatRange(0, 1),
              help="Highest share of 5xx answers of a device's API that still counts as healthy.")
@click.option("--timeout", "timeout_s", default="30m", show_default=True,
              help="Give up (tag not moved, exit 1) after this long.")
@with_options(BROKER_OPTIONS)
@with_options(REGISTRY_OPTIONS)
@json_option
def promote_cmd(repo, source, target, require, soak, max_error_rate, timeout_s, status_mqtt, status_mqtt_auth,
                status_mqtt_ca, status_mqtt_cert, status_mqtt_key, status_topic_prefix, insecure, registry_auth,
                registry_ca, as_json) -> None:
    """Move tag --to to the bundle --from names, once --require devices on --from run it healthy.

    \b
      edgetl fleet promote oci://registry.local:5000/line1/cam --from canary --to stable \\
          --require 2 --soak 30m --status-mqtt broker.local --status-mqtt-auth mqtt.auth
    """
    from edgetl.deploy.fleet import Broker, PromotionError, promote

    try:
        done = promote(repo, source, target, require,
                       Broker(status_mqtt, status_mqtt_auth, status_mqtt_ca, status_topic_prefix,
                              cert=status_mqtt_cert, key=status_mqtt_key),
                       soak=_seconds(soak), max_error_rate=max_error_rate, timeout=_seconds(timeout_s),
                       insecure=insecure, ca=registry_ca, auth_file=registry_auth, log=info)
    except PromotionError as exc:
        if as_json:
            emit_json(dict(exc.result.to_dict(), error=str(exc)))
        raise
    if as_json:
        emit_json(done.to_dict())
    elif done.already:
        click.echo(f"{done.target} already names {done.digest}")
    else:
        click.echo(f"{done.target} -> {done.digest} ({len(done.healthy)} healthy: {', '.join(done.healthy)})")
