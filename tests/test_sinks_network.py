"""The webhook sink against a local HTTP server, the MQTT sink against an in-process amqtt broker."""

from __future__ import annotations

import json
import threading

import pytest
from net_helpers import MqttBroker, RecordingServer, free_port

from edgetl.errors import ConfigError
from edgetl.plugins import get_manager

RESULT = {"timestamp": 1.0, "source": "cam", "frame": 3, "label": "defect",
          "scores": {"good": 0.1, "defect": 0.9}, "model": "m-1", "latency_ms": 2.5}


def test_webhook_posts_each_result_and_retries_with_backoff_on_5xx():
    with RecordingServer(statuses=[503, 500]) as server:
        writer = get_manager().get("sink", "webhook").open({"url": server.url, "retries": 3, "backoff_s": 0.01})
        writer.write(RESULT)
        writer.write(dict(RESULT, frame=4))
        writer.close()
    assert [b["frame"] for b in server.bodies] == [3, 4]
    assert writer.stats == {"sent": 2, "retried": 2, "failed": 0}


def test_webhook_counts_a_result_as_failed_without_stopping_when_the_receiver_is_down():
    writer = get_manager().get("sink", "webhook").open(
        {"url": f"http://127.0.0.1:{free_port()}/hook", "retries": 2, "backoff_s": 0.01, "timeout_s": 1})
    writer.write(RESULT)
    writer.close()
    assert writer.stats == {"sent": 0, "retried": 2, "failed": 1}


def test_webhook_does_not_retry_a_4xx_refusal():
    with RecordingServer(statuses=[400]) as server:
        writer = get_manager().get("sink", "webhook").open({"url": server.url, "retries": 3, "backoff_s": 0.01})
        writer.write(RESULT)
        writer.close()
    assert writer.stats == {"sent": 0, "retried": 0, "failed": 1}


def test_webhook_options_are_checked():
    sink = get_manager().get("sink", "webhook")
    with pytest.raises(ConfigError, match="'url' is required"):
        sink.open({})
    with pytest.raises(ConfigError, match="must be numbers"):
        sink.open({"url": "http://x", "retries": "many"})


def test_mqtt_sink_publishes_results_to_the_topic():
    import paho.mqtt.client as mqtt

    with MqttBroker() as broker:
        received: list[dict] = []
        subscribed, got_two = threading.Event(), threading.Event()
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
        sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe("line1/results", qos=1)
        sub.on_subscribe = lambda *a: subscribed.set()

        def on_message(client, userdata, message):
            received.append(json.loads(message.payload))
            if len(received) == 2:
                got_two.set()

        sub.on_message = on_message
        sub.connect("127.0.0.1", broker.port)
        sub.loop_start()
        assert subscribed.wait(10)
        writer = get_manager().get("sink", "mqtt").open(
            {"host": "127.0.0.1", "port": broker.port, "topic": "line1/results", "client_id": "edgetl-test"})
        writer.write(RESULT)
        writer.write(dict(RESULT, frame=4, label="good"))
        writer.close()
        assert got_two.wait(10)
        sub.loop_stop()
        sub.disconnect()
    assert [(r["frame"], r["label"]) for r in received] == [(3, "defect"), (4, "good")]


def test_mqtt_sink_refuses_an_unreachable_broker_with_a_clear_error():
    with pytest.raises(ConfigError, match="cannot connect to broker 127.0.0.1"):
        get_manager().get("sink", "mqtt").open({"host": "127.0.0.1", "port": free_port()})


def test_without_paho_the_mqtt_sink_is_listed_unavailable_and_everything_else_loads():
    """Availability is per component: the plugin is ``partial``, its other sinks work."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['paho'] = None\n"
            "from edgetl.plugins import get_manager\n"
            "info = get_manager().plugins['edgetl_builtins.sinks']\n"
            "print(info.status, '|', info.reason)\n"
            "get_manager().get('sink', 'webhook'); get_manager().get('source', 'opencv')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-1500:]
    status, reason = out.stdout.strip().split(" | ")
    assert status == "partial" and reason.startswith("sink mqtt needs paho") and "edgetl[agent]" in reason
