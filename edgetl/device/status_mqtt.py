"""The device's status over MQTT: one retained message per device, and a last will ``offline``.

Topic: ``<prefix>/devices/<device_id>/status`` (prefix ``edgetl`` by default). Payload: JSON,
schema ``docs/schemas/device-status.schema.json`` (``"schema": "edgetl.device-status/1"``).
The message is retained, so whoever subscribes (``edgetl fleet status``, ``edgetl fleet
promote``, a dashboard) gets every device's last status at once; the broker publishes the
will (same topic, retained, ``"online": false, "state": "offline"``) when the device drops
off without saying goodbye, and the agent publishes the same on a clean stop.

paho runs its network loop in a thread and reconnects by itself; a broker that is down when
the agent starts delays nothing (``connect_async``). Credentials and TLS as for the ``mqtt``
sink: a user name and password (here from a file: first line user, second password), a CA, and
a client certificate and key for a broker that authenticates devices by certificate (mutual TLS).
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError, MissingDependencyError

SCHEMA = "edgetl.device-status/1"
DEFAULT_PREFIX = "edgetl"


def status_topic(prefix: str, device_id: str) -> str:
    return f"{prefix}/devices/{device_id}/status"


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST[:PORT]`` (1883 by default)."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host, port = str(text), "1883"
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--status-mqtt {text}: expected HOST[:PORT], e.g. broker.local:1883")
    return host, int(port)


def read_auth(path: str | Path | None) -> tuple[str, str] | None:
    """(user, password) from a file whose first line is the user and second the password."""
    if path is None:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the MQTT credentials ({exc.strerror or exc})") from None
    if len(lines) < 2 or not lines[0].strip():
        raise ConfigError(f"{path}: expected the MQTT user on the first line and the password on the second")
    return lines[0].strip(), lines[1].rstrip("\n")


def mqtt_client(client_id: str, auth: tuple[str, str] | None, ca: str | None, cert: str | None = None,
                key: str | None = None):
    """A paho client (callback API 2) with the credentials and TLS of the ``mqtt`` sink; ``cert`` (PEM,
    with its key unless ``key`` names the key's file): the client certificate of mutual TLS."""
    try:
        import paho.mqtt.client as mqtt
    except ModuleNotFoundError:
        raise MissingDependencyError("paho.mqtt", "agent", "MQTT status") from None
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    if auth:
        client.username_pw_set(*auth)
    if key and not cert:
        raise ConfigError(f"MQTT client key {key}: given without its certificate (--status-mqtt-cert)")
    for what, path in (("CA", ca), ("client certificate", cert), ("client key", key)):
        if path and not Path(path).is_file():
            raise ConfigError(f"MQTT {what} {path}: file not found")
    if ca or cert:
        try:
            client.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError: a file that is no PEM, a key that
            raise ConfigError(f"MQTT TLS: {cert or ca}: {exc}") from None  # does not match the certificate
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


class StatusPublisher:
    """Publishes the agent's status (retained, QoS 1) and owns the last will."""

    def __init__(self, broker: str, device_id: str | None = None, prefix: str = DEFAULT_PREFIX,
                 auth_file: str | None = None, ca: str | None = None, keepalive: int = 30,
                 cert: str | None = None, key: str | None = None):
        self.host, self.port = parse_broker(broker)
        self.device_id = device_id or socket.gethostname()
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", self.device_id):
            raise ConfigError(f"--device-id {self.device_id!r}: letters, digits, '.', '_' and '-' only "
                              "(it is an MQTT topic level)")
        self.topic = status_topic(prefix, self.device_id)
        self.client = mqtt_client(f"edgetl-agent-{self.device_id}", read_auth(auth_file), ca, cert, key)
        self.client.will_set(self.topic, json.dumps(self._offline()), qos=1, retain=True)
        self.connected = threading.Event()
        self.refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a, **k: self.connected.clear()
        self.published = 0
        self._last: Any = None
        self.client.connect_async(self.host, self.port, keepalive=keepalive)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if getattr(reason, "is_failure", False):
            self.refused = f"the broker refused the connection ({reason})"
            return
        self.refused = None
        self.connected.set()
        if self._last is not None:  # say where we stand again after a reconnect
            self.publish(self._last)

    def _offline(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "device_id": self.device_id, "online": False, "state": "offline"}

    def document(self, puller: Any) -> dict[str, Any]:
        """The status payload: the pull status plus what the agent serves and its request counters."""
        doc = {"schema": SCHEMA, "device_id": self.device_id, "online": True, "time": time.time()}
        doc.update(puller.status())
        doc.update(_serving(getattr(puller, "agent", None)))
        return doc

    def publish(self, puller: Any) -> None:
        self._last = puller
        self.client.publish(self.topic, json.dumps(self.document(puller), sort_keys=True), qos=1, retain=True)
        self.published += 1

    def close(self) -> None:
        """A clean stop: publish ``offline`` (the broker sends no will for a clean disconnect)."""
        try:
            info = self.client.publish(self.topic, json.dumps(self._offline()), qos=1, retain=True)
            if self.connected.is_set():
                info.wait_for_publish(timeout=2)
        except (RuntimeError, ValueError):
            pass
        self.client.disconnect()  # first: it wakes the network thread, which loop_stop then joins at once
        self.client.loop_stop()


def _serving(agent: Any) -> dict[str, Any]:
    """model_version, bundle_version, health and request/prediction counters of the agent."""
    if agent is None:
        return {}
    model = agent.model
    manifest = agent.state.manifest(agent.state.pointer()["current"]) or {}
    counters = {"requests": 0, "server_errors": 0, "predictions": 0}
    for metric in agent.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "edgetl_requests_total":
                counters["requests"] += int(sample.value)
                if str(sample.labels.get("status", "")).startswith("5"):
                    counters["server_errors"] += int(sample.value)
            elif sample.name == "edgetl_predictions_total":
                counters["predictions"] += int(sample.value)
    return {"serving": model.name if model else None, "bundle_version": manifest.get("bundle_version"),
            "health": agent.health()["status"] if model else "no-model", "agent_counters": counters}
