"""Fleets that pull: read every device's retained MQTT status, promote a channel's bundle to another.

A channel is a tag (``canary``, ``stable``, ``line3``). ``promote`` reads the digest the source
tag names, watches the devices on that channel until ``require`` of them have reported that
digest healthy for ``soak`` seconds, then points the target tag at the same manifest bytes (so
the same digest: the devices on the target channel pull exactly what the canaries ran).

Healthy means, in the device's status message: online, pull state ``ok``, serving that digest,
``health`` ``ok`` (a model loaded; its reference check passed at install, or it would not
serve), and a server-error rate of its HTTP API at most ``max_error_rate``. The soak counts
from the device's ``serving_since`` or, when that is missing (the agent restarted), from the
first healthy message seen; any unhealthy message starts it again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgetl.device.oci import OciRef, Registry, bundle_layer
from edgetl.device.status_mqtt import DEFAULT_PREFIX, mqtt_client, parse_broker, read_auth
from edgetl.errors import EdgetlError


class PromotionError(EdgetlError):
    """Not enough canary devices reported the new digest healthy in time; the tag was not moved."""


@dataclass
class Broker:
    """Where the devices publish their status (``--status-mqtt`` and friends)."""

    address: str
    auth_file: str | None = None
    ca: str | None = None
    prefix: str = DEFAULT_PREFIX
    cert: str | None = None  # client certificate (PEM) and key, for a broker that wants mutual TLS
    key: str | None = None


class StatusWatch:
    """A subscription to every device's retained status; ``devices`` is the latest message of each."""

    def __init__(self, broker: Broker):
        host, port = parse_broker(broker.address)
        self.topic = f"{broker.prefix}/devices/+/status"
        self.devices: dict[str, dict[str, Any]] = {}
        self.last_message = time.monotonic()
        self.subscribed = threading.Event()
        self.error: str | None = None
        self._lock = threading.Lock()
        self.on_update: Callable[[str, dict[str, Any]], None] | None = None
        self.client = mqtt_client(f"edgetl-fleet-{time.time_ns() % 10**9}", read_auth(broker.auth_file), broker.ca,
                                  broker.cert, broker.key)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a, **k: self.subscribed.set()
        self.client.on_message = self._on_message
        try:
            self.client.connect(host, port, keepalive=30)
        except OSError as exc:
            raise EdgetlError(f"MQTT broker {host}:{port}: cannot connect ({exc.strerror or exc})") from None
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, properties=None) -> None:
        if getattr(reason, "is_failure", False):
            self.error = f"the MQTT broker refused the connection ({reason})"
            self.subscribed.set()
            return
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, message) -> None:
        try:
            doc = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        device = str(doc.get("device_id") or message.topic.split("/")[-2])
        doc["_received"] = time.time()
        with self._lock:
            self.devices[device] = doc
            if message.retain:  # sent because we subscribed; a busy fleet's live messages are not
                self.last_message = time.monotonic()
        if self.on_update is not None:
            self.on_update(device, doc)

    def settle(self, quiet: float = 1.0, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
        """Wait for the retained messages to arrive (``quiet`` seconds without a retained one: the live
        messages of a busy fleet never pause) and return every device's latest."""
        if not self.subscribed.wait(timeout):
            raise EdgetlError(f"MQTT: no subscription to {self.topic} within {timeout:g} s")
        if self.error:
            raise EdgetlError(self.error)
        self.last_message = max(self.last_message, time.monotonic())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - self.last_message < quiet:
            time.sleep(0.05)
        with self._lock:
            return {k: dict(v) for k, v in self.devices.items()}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def fleet_status(broker: Broker, quiet: float = 1.0, channel: str | None = None) -> list[dict[str, Any]]:
    """Every device's last status (retained messages), sorted by device id; ``channel`` filters."""
    watch = StatusWatch(broker)
    try:
        devices = watch.settle(quiet=quiet)
    finally:
        watch.close()
    rows = [doc for _, doc in sorted(devices.items())]
    return [r for r in rows if channel is None or r.get("channel") == channel]


def _on_repo(doc: dict[str, Any], repo: str, channel: str) -> bool:
    try:
        ref = OciRef.parse(str(doc.get("ref")))
    except EdgetlError:
        return False
    return ref.repo == repo and ref.tag == channel


def unhealthy(doc: dict[str, Any], digest: str, max_error_rate: float) -> str | None:
    """Why ``doc`` does not count as healthy on ``digest`` (None: it does)."""
    if not doc.get("online"):
        return "offline"
    if doc.get("serving_digest") != digest:
        return f"serving {str(doc.get('serving_digest'))[:19]}"
    if doc.get("state") != "ok":
        return f"state {doc.get('state')}: {doc.get('last_error')}"
    if doc.get("health") != "ok":
        return f"health {doc.get('health')}"
    counters = doc.get("agent_counters") or {}
    requests, errors = int(counters.get("requests") or 0), int(counters.get("server_errors") or 0)
    if requests and errors / requests > max_error_rate:
        return f"error rate {errors / requests:.3f} over {max_error_rate:g}"
    return None


@dataclass
class Promotion:
    """What ``promote`` found and did."""

    source: str
    target: str
    digest: str
    moved: bool
    already: bool = False
    healthy: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def promote(repo: str, source: str, target: str, require: int, broker: Broker, *, soak: float = 0.0,
            max_error_rate: float = 0.01, timeout: float = 1800.0, insecure: bool = False, ca: str | None = None,
            auth_file: str | None = None, log: Callable[[str], None] = lambda line: None) -> Promotion:
    """Move ``target`` to the manifest ``source`` names once ``require`` devices on ``source``
    report it healthy for ``soak`` seconds; PromotionError (tag untouched) after ``timeout``."""
    ref = OciRef.parse(repo, need_tag=False)
    registry = Registry(ref.with_tag(source), insecure=insecure, ca=ca, auth_file=auth_file)
    digest, raw, doc = registry.manifest(source)
    bundle_layer(doc, ref.with_tag(source))  # an edgetl artifact, or a clear error now
    started = time.monotonic()
    result = Promotion(str(ref.with_tag(source)), str(ref.with_tag(target)), digest, moved=False)
    try:
        if registry.head_digest(target) == digest:
            result.already = True
            return result
    except EdgetlError:
        pass  # no such tag yet: the promotion creates it
    log(f"promote {digest[:19]}… from {source} to {target}: waiting for {require} healthy device(s) on "
        f"{source}" + (f" for {soak:g} s" if soak else ""))
    healthy_since: dict[str, float] = {}
    watch = StatusWatch(broker)
    try:
        watch.settle(quiet=0.5)
        while True:
            now = time.time()
            with watch._lock:
                devices = {k: dict(v) for k, v in watch.devices.items()}
            result.healthy, result.waiting = [], {}
            for device, status in sorted(devices.items()):
                if not _on_repo(status, ref.repo, source):
                    continue
                why = unhealthy(status, digest, max_error_rate)
                if why:
                    healthy_since.pop(device, None)
                    result.waiting[device] = why
                    continue
                since = healthy_since.setdefault(device, min(now, float(status.get("serving_since") or now)))
                if now - since >= soak:
                    result.healthy.append(device)
                else:
                    result.waiting[device] = f"soaking, {soak - (now - since):.0f} s to go"
            if len(result.healthy) >= require:
                break
            if time.monotonic() - started > timeout:
                result.seconds = round(time.monotonic() - started, 3)
                waiting = "; ".join(f"{d}: {w}" for d, w in list(result.waiting.items())[:5]) or "no device reported"
                err = PromotionError(f"{target} not moved: {len(result.healthy)} of {require} device(s) on {source} "
                                     f"healthy on {digest[:19]}… after {timeout:g} s ({waiting})")
                err.result = result
                raise err
            time.sleep(0.2)
    finally:
        watch.close()
    registry.put_manifest(target, raw, str(doc.get("mediaType") or "application/vnd.oci.image.manifest.v1+json"))
    result.moved, result.seconds = True, round(time.monotonic() - started, 3)
    log(f"{target} -> {digest[:19]}… ({', '.join(result.healthy)} healthy)")
    return result
