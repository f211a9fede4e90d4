"""Pull mode: the agent polls a registry tag (its channel) and installs what the tag names.

``edgetl agent serve --pull oci://HOST/REPO:CHANNEL`` starts one :class:`Puller` thread next to
the HTTP API. Each poll is one ``HEAD`` of the tag's manifest (a device whose digest did not
change downloads nothing); a new digest is read, its one bundle layer checked against the
device's size cap *from the declared size*, downloaded into ``STATE/pull/<blob>.part`` (resumed
with ``Range`` after an interruption, a ``kill -9`` included), its sha256 checked, then renamed
into the installer's upload slot and installed by the same journaled installer an HTTP upload
uses: signature by a trusted key, reference check, rollback on failure, downgrade policy.

A registry that is down, slow or answers garbage is one ``error`` state and a ``last_error``;
serving goes on and the next poll tries again. A bundle the device refused (signature, reference
check, downgrade, size, digest) is remembered by its manifest digest in ``STATE/pull/state.json``
and not downloaded again until the tag names something else. The status (``/v1/info``'s
``pull``, the ``edgetl_pull_*`` metrics, the MQTT status message) says all of it.

Polls come every ``interval`` seconds ±10 % (jitter, so a fleet started together spreads out);
the first comes within the first tenth of an interval.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.device.faults import check_disk
from edgetl.device.oci import BlobTooLarge, DigestMismatch, OciRef, Registry, RegistryError, bundle_layer
from edgetl.device.state import atomic_write_json, read_json
from edgetl.errors import ConfigError, EdgetlError

log = logging.getLogger("edgetl.agent.pull")
STATES = ("starting", "ok", "downloading", "installing", "refused", "error")


def parse_interval(text: str | float) -> float:
    """``60s``, ``5m``, ``1h``, ``0.5s`` or a number of seconds."""
    raw = str(text).strip().lower()
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for suffix in ("ms", "s", "m", "h"):
        if raw.endswith(suffix):
            raw, factor = raw[: -len(suffix)], scale[suffix]
            break
    else:
        factor = 1.0
    try:
        value = float(raw) * factor
    except ValueError:
        raise ConfigError(f"interval {text!r}: expected a duration such as 60s, 5m or 0.5s") from None
    if not value > 0:
        raise ConfigError(f"interval {text!r}: must be more than 0")
    return value


@dataclass
class PullConfig:
    """What ``--pull`` and its companion flags say."""

    ref: OciRef
    interval: float = 60.0
    insecure: bool = False
    ca: str | None = None
    auth_file: str | None = None
    allow_downgrade: bool = False
    timeout: float = 10.0
    jitter: float = 0.1


class Puller:
    """Polls one tag and installs through ``agent.installer``; :meth:`poll_once` is one poll.

    ``install`` replaces the installer (the benchmark's simulated devices record the digest
    instead of installing); everything else is the agent's code path.
    """

    def __init__(self, agent: Any, config: PullConfig, publisher: Any = None, install: Any = None,
                 folder: Path | None = None):
        self.agent, self.config, self.publisher = agent, config, publisher
        self.registry = Registry(config.ref, insecure=config.insecure, ca=config.ca, auth_file=config.auth_file,
                                 timeout=config.timeout)
        self.folder = Path(folder) if folder is not None else Path(agent.state.root) / "pull"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.state_path = self.folder / "state.json"
        saved = read_json(self.state_path, {}) or {}
        self.installs: dict[str, str] = dict(saved.get("installs") or {})  # install id -> manifest digest
        self.refused: dict[str, str] = dict(saved.get("refused") or {})  # manifest digest -> why
        self._install = install or self._install_with_agent
        self.state, self.tag_digest, self.last_error, self.last_error_at = "starting", None, None, None
        self.last_poll = self.last_success = self.serving_since = None
        self.counters = {"polls": 0, "unchanged": 0, "downloads": 0, "downloaded_bytes": 0, "resumed": 0,
                         "installs": 0, "refused": 0, "errors": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._metrics = _PullMetrics.of(getattr(agent, "metrics", None))
        self.served_digest: str | None = None  # for simulated devices (no agent state)

    # -- persisted facts -------------------------------------------------------------
    def _save(self) -> None:
        atomic_write_json(self.state_path, {"installs": self.installs, "refused": self.refused})

    def serving_digest(self) -> str | None:
        """The manifest digest of the bundle serving now, when it came through a pull."""
        if self.agent is None:
            return self.served_digest
        current = self.agent.state.pointer()["current"]
        return self.installs.get(current) if current else None

    # -- one poll --------------------------------------------------------------------
    def poll_once(self) -> str:
        """One poll: ``unchanged``, ``installed``, ``refused`` or ``error`` (never raises)."""
        self.counters["polls"] += 1
        self.last_poll = time.time()
        try:
            outcome = self._poll()
            self.last_success = time.time()
        except RegistryError as exc:
            outcome = self._error(str(exc))
        except EdgetlError as exc:
            outcome = self._error(str(exc))
        except OSError as exc:  # the disk, not the registry: keep serving, try again later
            outcome = self._error(f"pull: {exc.strerror or exc}")
        except Exception as exc:  # a bug must not stop the poller (or serving)
            log.exception("pull: unexpected error")
            outcome = self._error(f"internal error: {type(exc).__name__}: {exc}")
        self._metrics.polled(outcome, self)
        self._publish()
        return outcome

    def _error(self, message: str) -> str:
        self.state, self.last_error, self.last_error_at = "error", message, time.time()
        self.counters["errors"] += 1
        log.warning("pull: %s", message)
        return "error"

    def _refuse(self, digest: str, message: str) -> str:
        self.refused[digest] = message
        self._save()
        self.counters["refused"] += 1
        self.state, self.last_error, self.last_error_at = "refused", message, time.time()
        log.error("pull: %s refused: %s", digest[:19], message)
        return "refused"

    def _poll(self) -> str:
        digest = self.registry.head_digest()
        self.tag_digest = digest
        if digest == self.serving_digest():
            self.state = "ok"
            self.counters["unchanged"] += 1
            return "unchanged"
        if digest in self.refused:
            self.state, self.last_error = "refused", self.refused[digest]
            self.counters["unchanged"] += 1
            return "unchanged"
        self.state = "downloading"
        self._publish()
        _, _, doc = self.registry.manifest(digest, expect=digest)
        layer = bundle_layer(doc, self.config.ref)
        part = self.folder / (layer["digest"].split(":", 1)[1] + ".part")
        for stale in self.folder.glob("*.part"):  # an interrupted download of another bundle
            if stale != part:
                stale.unlink(missing_ok=True)
        try:
            got = self.registry.download_blob(layer, part, self._cap(), on_bytes=lambda n: check_disk("pull", n))
        except (BlobTooLarge, DigestMismatch) as exc:
            return self._refuse(digest, str(exc))
        self.counters["downloads"] += 1
        self.counters["downloaded_bytes"] += got["bytes"]
        self.counters["resumed"] += bool(got["resumed_from"])
        self._metrics.downloaded(got["bytes"])
        self.state = "installing"
        self._publish()
        ok, error = self._install(digest, part)
        if not ok:
            return self._refuse(digest, error)
        self.counters["installs"] += 1
        self.state, self.serving_since = "ok", time.time()
        log.info("pull: installed %s from %s", digest[:19], self.config.ref)
        return "installed"

    def _cap(self) -> int:
        return int(self.agent.max_bundle_bytes) if self.agent is not None else 1 << 62

    def _install_with_agent(self, digest: str, part: Path) -> tuple[bool, str | None]:
        """Hand the verified download to the agent's installer (the HTTP upload's slot and stages)."""
        installer = self.agent.installer
        install_id = installer.reserve()  # InstallBusy (an HTTP upload runs): an error, retried next poll
        try:
            size = part.stat().st_size
            os.replace(part, self.agent.state.upload_path(install_id))
            installer.start(install_id, size, allow_downgrade=self.config.allow_downgrade)
        except BaseException:
            installer.abandon(install_id)
            raise
        status = installer.wait(install_id) or {}
        if status.get("status") != "installed":
            return False, f"install {install_id} failed at {status.get('stage')}: {status.get('error')}"
        current = self.agent.state.pointer()["current"]
        if current:
            self.installs = {k: v for k, v in self.installs.items() if (self.agent.state.model_dir(k)).exists()}
            self.installs[current] = digest
            self._save()
        return True, None

    # -- status ------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The pull state: ``/v1/info``'s ``pull`` and the body of the MQTT status message."""
        return {"ref": str(self.config.ref), "channel": self.config.ref.tag, "state": self.state,
                "serving_digest": self.serving_digest(), "tag_digest": self.tag_digest,
                "up_to_date": bool(self.tag_digest) and self.tag_digest == self.serving_digest(),
                "interval_s": self.config.interval, "last_poll": self.last_poll, "last_success": self.last_success,
                "serving_since": self.serving_since, "last_error": self.last_error,
                "last_error_at": self.last_error_at, "counters": dict(self.counters)}

    def _publish(self) -> None:
        if self.publisher is not None:
            try:
                self.publisher.publish(self)
            except Exception as exc:  # the broker is optional to serving
                log.warning("status: not published (%s)", exc)

    # -- the thread ------------------------------------------------------------------------
    def next_delay(self, first: bool = False) -> float:
        j = self.config.jitter
        if first:
            return random.uniform(0, self.config.interval * j)
        return self.config.interval * random.uniform(1 - j, 1 + j)

    def start(self) -> Puller:
        self._thread = threading.Thread(target=self._run, name="edgetl-pull", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = self.next_delay(first=True)
        while not self._stop.wait(delay):
            self.poll_once()
            delay = self.next_delay()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.publisher is not None:
            self.publisher.close()


class _PullMetrics:
    """``edgetl_pull_*`` in the agent's registry (nothing when there is none, as in the benchmark)."""

    @classmethod
    def of(cls, metrics: Any) -> _PullMetrics:
        """One set per agent registry (a second puller of the same agent shares it)."""
        existing = getattr(metrics, "edgetl_pull_metrics", None)
        if existing is None:
            existing = cls(metrics)
            if metrics is not None:
                metrics.edgetl_pull_metrics = existing
        return existing

    def __init__(self, metrics: Any):
        self.on = metrics is not None and getattr(metrics, "registry", None) is not None
        if not self.on:
            return
        from prometheus_client import Counter, Enum, Gauge

        r = metrics.registry
        self.polls = Counter("edgetl_pull_polls", "registry polls by outcome", ["outcome"], registry=r)
        self.bytes = Counter("edgetl_pull_downloaded_bytes", "bundle bytes downloaded from the registry", registry=r)
        self.state = Enum("edgetl_pull_state", "pull state", states=list(STATES), registry=r)
        self.up_to_date = Gauge("edgetl_pull_up_to_date", "1 when serving the digest the channel's tag names",
                                registry=r)
        self.last_success = Gauge("edgetl_pull_last_success_timestamp_seconds",
                                  "when the registry last answered a poll", registry=r)

    def polled(self, outcome: str, puller: Puller) -> None:
        if not self.on:
            return
        self.polls.labels(outcome=outcome).inc()
        self.state.state(puller.state)
        self.up_to_date.set(1 if puller.status()["up_to_date"] else 0)
        if puller.last_success:
            self.last_success.set(puller.last_success)

    def downloaded(self, n: int) -> None:
        if self.on:
            self.bytes.inc(n)


def start_pull(agent: Any, config: PullConfig, status: dict[str, Any] | None = None) -> Puller:
    """Start polling for ``agent`` (and publishing its status when ``status`` names a broker);
    ``agent.puller`` is set so ``/v1/info`` shows the pull state."""
    publisher = None
    if status and status.get("broker"):
        from edgetl.device.status_mqtt import StatusPublisher

        publisher = StatusPublisher(**status)
    puller = Puller(agent, config, publisher=publisher)
    agent.puller = puller
    return puller.start()
