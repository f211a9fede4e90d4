"""MQTT over TLS against a real mosquitto whose listener speaks TLS only (its certificate for 127.0.0.1 is
its own CA): the ``mqtt`` sink's ``ca`` option, the agent's status publisher and ``edgetl fleet status``
with ``--status-mqtt-ca``, and what a CA that did not sign the broker's certificate gets; then a broker
that also wants a client certificate (mutual TLS: the sink's ``cert``/``key``, ``--status-mqtt-cert``)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
from agent_support import self_signed_cert
from registry_support import PASSWORD, USER, Mosquitto

from edgetl.errors import ConfigError, EdgetlError
from edgetl.plugins import get_manager

RESULT = {"timestamp": 1.0, "source": "cam", "frame": 3, "label": "defect",
          "scores": {"good": 0.1, "defect": 0.9}, "model": "m-1", "latency_ms": 2.5}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-tls"), tls=True) as server:
        yield server


@pytest.fixture(scope="module")
def stranger_ca(tmp_path_factory) -> Path:
    """A CA that did not sign the broker's certificate."""
    return self_signed_cert(tmp_path_factory.mktemp("other-ca"))[0]


def _subscriber(broker: Mosquitto, topic: str, received: list[dict], want: int):
    """paho with the broker's CA (and its client certificate if it wants one; not edgetl's code):
    subscribed, and an event set after ``want`` messages."""
    import paho.mqtt.client as mqtt

    subscribed, done = threading.Event(), threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"tls-sub-{topic.replace('/', '-')}")
    sub.username_pw_set(USER, PASSWORD)
    client = getattr(broker, "client_cert", None)
    sub.tls_set(ca_certs=str(broker.ca), certfile=str(client) if client else None,
                keyfile=str(broker.client_key) if client else None)
    sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(client, userdata, message):
        received.append(json.loads(message.payload))
        if len(received) >= want:
            done.set()

    sub.on_message = on_message
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    assert subscribed.wait(10), "the TLS subscriber did not get its subscription"
    return sub, done


def test_the_mqtt_sink_publishes_over_tls_with_the_brokers_ca(broker):
    received: list[dict] = []
    sub, done = _subscriber(broker, "line1/tls", received, 2)
    try:
        writer = get_manager().get("sink", "mqtt").open(
            {"host": "127.0.0.1", "port": broker.port, "topic": "line1/tls", "client_id": "edgetl-tls",
             "username": USER, "password": PASSWORD, "ca": str(broker.ca)})
        writer.write(RESULT)
        writer.write(dict(RESULT, frame=4, label="good"))
        writer.close()
        assert done.wait(10)
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert [(r["frame"], r["label"]) for r in received] == [(3, "defect"), (4, "good")]


def test_the_mqtt_sink_refuses_a_broker_its_ca_did_not_sign(broker, stranger_ca):
    with pytest.raises(ConfigError, match=rf"cannot connect to broker 127.0.0.1:{broker.port} .*CERTIFICATE_VERIFY"):
        get_manager().get("sink", "mqtt").open(
            {"host": "127.0.0.1", "port": broker.port, "username": USER, "password": PASSWORD,
             "ca": str(stranger_ca), "connect_timeout_s": 2})


def test_agent_status_over_tls_reaches_fleet_status_and_a_stranger_ca_is_refused(broker, stranger_ca, tmp_path):
    """The agent's publisher and ``edgetl fleet status`` both with ``--status-mqtt-ca``; the status is the
    retained message mosquitto hands the command."""
    from click.testing import CliRunner

    from edgetl.cli import cli
    from edgetl.device.status_mqtt import StatusPublisher

    auth = tmp_path / "mqtt.auth"
    auth.write_text(f"{USER}\n{PASSWORD}\n")
    address = f"127.0.0.1:{broker.port}"
    publisher = StatusPublisher(address, device_id="tls-cam", auth_file=str(auth), ca=str(broker.ca))
    try:
        assert publisher.connected.wait(10), publisher.refused or "the publisher did not connect over TLS"
        publisher.publish(SimpleNamespace(status=lambda: {"state": "ok", "channel": "canary"}))
        base = ["fleet", "status", "--status-mqtt", address, "--status-mqtt-auth", str(auth)]
        res = CliRunner().invoke(cli, [*base, "--status-mqtt-ca", str(broker.ca), "--json"])
        assert res.exit_code == 0, res.output
        devices = {d["device_id"]: d for d in json.loads(res.stdout)["devices"]}
        assert devices["tls-cam"]["online"] is True and devices["tls-cam"]["state"] == "ok"
        refused = CliRunner().invoke(cli, [*base, "--status-mqtt-ca", str(stranger_ca)])
        assert refused.exit_code != 0 and f"MQTT broker {address}: cannot connect" in refused.output
        assert "CERTIFICATE_VERIFY_FAILED" in refused.output and "Traceback" not in refused.output
    finally:
        publisher.close()


def test_a_ca_file_that_is_missing_is_a_clear_error(broker, tmp_path):
    with pytest.raises(EdgetlError, match="MQTT CA .*missing.pem: file not found"):
        from edgetl.device.status_mqtt import StatusPublisher

        StatusPublisher(f"127.0.0.1:{broker.port}", device_id="cam", ca=str(tmp_path / "missing.pem"))


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory):
    with Mosquitto(tmp_path_factory.mktemp("mosquitto-mtls"), tls=True, client_certs=True) as server:
        yield server


def test_the_mqtt_sink_presents_a_client_certificate_to_a_broker_that_wants_one(mtls_broker):
    received: list[dict] = []
    sub, done = _subscriber(mtls_broker, "line1/mtls", received, 1)
    base = {"host": "127.0.0.1", "port": mtls_broker.port, "topic": "line1/mtls", "username": USER,
            "password": PASSWORD, "ca": str(mtls_broker.ca)}
    try:
        writer = get_manager().get("sink", "mqtt").open(
            {**base, "client_id": "edgetl-mtls", "cert": str(mtls_broker.client_cert),
             "key": str(mtls_broker.client_key)})
        writer.write(RESULT)
        writer.close()
        assert done.wait(10)
        # without the certificate the broker ends the handshake: the sink never connects
        bare = get_manager().get("sink", "mqtt").open({**base, "client_id": "edgetl-bare", "connect_timeout_s": 1})
        assert not bare._connected.is_set()
        bare.close()
    finally:
        sub.loop_stop()
        sub.disconnect()
    assert [r["frame"] for r in received] == [3]
    log = (mtls_broker.root / "mosquitto.log").read_text()
    assert "peer did not return a certificate" in log


def test_status_and_fleet_status_with_a_client_certificate(mtls_broker, tmp_path):
    from click.testing import CliRunner

    from edgetl.cli import cli
    from edgetl.device.status_mqtt import StatusPublisher

    auth = tmp_path / "mqtt.auth"
    auth.write_text(f"{USER}\n{PASSWORD}\n")
    address = f"127.0.0.1:{mtls_broker.port}"
    publisher = StatusPublisher(address, device_id="mtls-cam", auth_file=str(auth), ca=str(mtls_broker.ca),
                                cert=str(mtls_broker.client_cert), key=str(mtls_broker.client_key))
    try:
        assert publisher.connected.wait(10), publisher.refused or "the publisher did not connect with its certificate"
        publisher.publish(SimpleNamespace(status=lambda: {"state": "ok", "channel": "canary"}))
        base = ["fleet", "status", "--status-mqtt", address, "--status-mqtt-auth", str(auth), "--status-mqtt-ca",
                str(mtls_broker.ca)]
        res = CliRunner().invoke(cli, [*base, "--status-mqtt-cert", str(mtls_broker.client_cert),
                                       "--status-mqtt-key", str(mtls_broker.client_key), "--json"])
        assert res.exit_code == 0, res.output
        assert {d["device_id"] for d in json.loads(res.stdout)["devices"]} >= {"mtls-cam"}
        alone = CliRunner().invoke(cli, [*base, "--status-mqtt-key", str(mtls_broker.client_key)])
        assert alone.exit_code != 0 and "given without its certificate (--status-mqtt-cert)" in alone.output
        wrong = CliRunner().invoke(cli, [*base, "--status-mqtt-cert", str(mtls_broker.ca),
                                         "--status-mqtt-key", str(mtls_broker.client_key)])
        assert wrong.exit_code != 0 and "MQTT TLS:" in wrong.output and "Traceback" not in wrong.output
    finally:
        publisher.close()
