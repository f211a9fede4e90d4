"""Built-in result sinks that talk to the outside (device side, no torch).

- ``webhook``: POST each result as JSON, retrying with exponential backoff.
- ``mqtt``: publish each result to a topic (paho-mqtt).
- ``capture``: keep the frames worth relabelling (predicted defects, near the
  threshold, a random sample) with their predictions, under a size/age limit.

``stdout`` and ``jsonl`` live in :mod:`edgetl_builtins.stdio`.
"""

from __future__ import annotations

from edgetl.hookspecs import hookimpl
from edgetl_builtins.sinks.capture import CaptureSink
from edgetl_builtins.sinks.mqtt import MqttSink
from edgetl_builtins.sinks.webhook import WebhookSink


@hookimpl
def edgetl_sinks(register):
    register(WebhookSink())
    register(MqttSink())
    register(CaptureSink())
