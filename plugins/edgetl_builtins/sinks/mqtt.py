"""``mqtt`` sink: publish each result as JSON to a topic (paho-mqtt).

paho's network loop runs in its own thread and reconnects by itself; results
published while the broker is away are queued by paho (QoS 1) up to
``max_queued`` messages.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from edgetl.api import Frame, Sink, SinkWriter
from edgetl.errors import ConfigError, MissingDependencyError


class MqttWriter(SinkWriter):
    """One paho client; ``write`` publishes, ``close`` waits for in-flight messages."""

    def __init__(self, options: dict[str, Any]):
        try:
            import paho.mqtt.client as mqtt
        except ModuleNotFoundError:
            raise MissingDependencyError("paho.mqtt", "agent", "sink 'mqtt'") from None
        self.topic = str(options.get("topic", "edgetl/results"))
        self.qos = int(options.get("qos", 1))
        if self.qos not in (0, 1, 2):
            raise ConfigError(f"sink 'mqtt': qos must be 0, 1 or 2 (got {self.qos})")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=str(options.get("client_id", "")))
        self.client.max_queued_messages_set(int(options.get("max_queued", 1000)))
        self.client.reconnect_delay_set(min_delay=1, max_delay=30)
        if options.get("username"):
            self.client.username_pw_set(str(options["username"]), options.get("password"))
        if options.get("tls") or options.get("ca") or options.get("cert"):
            try:  # cert (PEM, with its key unless `key` names the key's file): mutual TLS
                self.client.tls_set(ca_certs=options.get("ca"), certfile=options.get("cert"),
                                    keyfile=options.get("key"))
            except (OSError, ValueError) as exc:  # a missing file, no PEM, a key that does not match
                raise ConfigError(f"sink 'mqtt': TLS files (ca, cert, key): {exc}") from None
        self._connected = threading.Event()
        self.client.on_connect = lambda client, userdata, flags, rc, props=None: self._connected.set()
        host, port = str(options.get("host", "127.0.0.1")), int(options.get("port", 1883))
        try:
            self.client.connect(host, port, keepalive=int(options.get("keepalive", 30)))
        except OSError as exc:
            raise ConfigError(f"sink 'mqtt': cannot connect to broker {host}:{port} ({exc})") from None
        self.client.loop_start()
        self._connected.wait(float(options.get("connect_timeout_s", 5)))
        self._pending: list[Any] = []

    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        info = self.client.publish(self.topic, json.dumps(result, sort_keys=True), qos=self.qos)
        self._pending = [m for m in self._pending if not m.is_published()] + [info]

    def close(self) -> None:
        for message in self._pending:
            try:
                message.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):  # not connected / queue dropped
                pass
        self.client.loop_stop()
        self.client.disconnect()


class MqttSink(Sink):
    name = "mqtt"
    description = "publish each result as JSON (options: host, port=1883, topic, qos=1, username, password, ca)"
    requires = ("paho",)  # find_spec("paho.mqtt") raises, not None, when paho is absent
    extra = "agent"

    def open(self, options: dict[str, Any]) -> SinkWriter:
        return MqttWriter(options or {})
