"""The ``--pull`` options of ``edgetl agent serve`` (pull mode, docs/deploy.md "Fleets that pull"),
kept apart from agent_cmd.py so the serve command only gains one decorator and one argument."""

from __future__ import annotations

from typing import Any

import click


def registry_options(insecure_dest: str = "insecure") -> tuple[Any, ...]:
    """The registry connection options, shared by ``push``, ``fleet`` and ``agent serve --pull``."""
    return (
        click.option("--insecure", insecure_dest, is_flag=True,
                     help="Talk to the registry over plain HTTP (loopback tests, a trusted lab network)."),
        click.option("--registry-auth", type=click.Path(dir_okay=False),
                     help="Registry credentials: a docker config.json (default: the standard docker config)."),
        click.option("--registry-ca", type=click.Path(dir_okay=False), help="CA certificate (PEM) of the registry."),
    )


def broker_options(required: bool, help_broker: str) -> tuple[Any, ...]:
    """The status broker options, shared by ``fleet`` (which reads) and ``agent serve`` (which publishes)."""
    return (
        click.option("--status-mqtt", required=required, metavar="HOST[:PORT]", help=help_broker),
        click.option("--status-mqtt-auth", type=click.Path(dir_okay=False),
                     help="File with the MQTT user (first line) and password (second line)."),
        click.option("--status-mqtt-ca", type=click.Path(dir_okay=False), help="CA certificate (PEM): MQTT over TLS."),
        click.option("--status-mqtt-cert", type=click.Path(dir_okay=False),
                     help="Client certificate (PEM, with its key unless --status-mqtt-key): mutual TLS."),
        click.option("--status-mqtt-key", type=click.Path(dir_okay=False),
                     help="Private key (PEM) of --status-mqtt-cert."),
        click.option("--status-topic-prefix", default="edgetl", show_default=True,
                     help="Status topic: PREFIX/devices/DEVICE_ID/status."),
    )


PULL_OPTIONS = (
    click.option("--pull", "pull_ref", metavar="oci://HOST/REPO:CHANNEL",
                 help="Poll this registry tag for bundles and install what it names (pull mode)."),
    click.option("--pull-interval", default="60s", show_default=True,
                 help="Time between polls (e.g. 60s, 5m), with ±10 % jitter."),
    *registry_options("pull_insecure"),
    click.option("--pull-allow-downgrade", is_flag=True,
                 help="Install a bundle older than the serving one when the channel's tag moves back."),
    click.option("--device-id", help="This device's name in the status topic (default: the host name)."),
    *broker_options(False, "Publish the device status (retained, last will offline) to this MQTT broker."),
)


def with_options(options: tuple[Any, ...]):
    """A decorator applying click ``options`` in their listed order (as --help shows them)."""
    def wrap(command):
        for option in reversed(options):
            command = option(command)
        return command
    return wrap


pull_options = with_options(PULL_OPTIONS)


def pull_settings(pull_ref: str | None, pull_interval: str, pull_insecure: bool, registry_auth: str | None,
                  registry_ca: str | None, pull_allow_downgrade: bool, device_id: str | None,
                  status_mqtt: str | None, status_mqtt_auth: str | None, status_mqtt_ca: str | None,
                  status_mqtt_cert: str | None, status_mqtt_key: str | None,
                  status_topic_prefix: str) -> tuple[Any, dict[str, Any] | None]:
    """(PullConfig or None, StatusPublisher arguments or None) from the options, checked."""
    from edgetl.errors import UsageError

    if not pull_ref:
        if status_mqtt or pull_insecure or registry_auth or registry_ca or pull_allow_downgrade:
            raise UsageError("--status-mqtt, --insecure, --registry-auth, --registry-ca and --pull-allow-downgrade "
                             "go with --pull oci://HOST/REPO:CHANNEL")
        return None, None
    from edgetl.device.oci import OciRef
    from edgetl.device.pull import PullConfig, parse_interval

    config = PullConfig(ref=OciRef.parse(pull_ref), interval=parse_interval(pull_interval), insecure=pull_insecure,
                        ca=registry_ca, auth_file=registry_auth, allow_downgrade=pull_allow_downgrade)
    status = None
    if status_mqtt:
        status = {"broker": status_mqtt, "device_id": device_id, "prefix": status_topic_prefix,
                  "auth_file": status_mqtt_auth, "ca": status_mqtt_ca, "cert": status_mqtt_cert,
                  "key": status_mqtt_key}
    return config, status
