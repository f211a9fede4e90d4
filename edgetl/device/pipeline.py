"""The camera pipeline: source → THE preprocessing → runtime → sinks, in two threads.

The reader thread pulls frames from the source into a one-frame slot; the
inference thread takes the newest frame from it. From a *live* source (a
camera, a stream, a video played at its frame rate) a frame still waiting
when the next arrives is replaced and counted as dropped: latency never
builds up behind a slow model. A replay (image folder, video read flat out)
waits for the slot instead, so every frame is predicted. A camera or stream
that dies is reopened with exponential backoff (0.5 s doubling to 30 s, back to 0.5 s
after it ran for 30 s); meanwhile the status says ``health: degraded`` with the reason.

A source whose stream has ``trigger()`` (a GenICam camera in software-trigger
mode) is fired through :meth:`Pipeline.trigger` (the agent's authenticated
``POST /v1/pipeline/trigger``, or a sink given :class:`edgetl.api.PipelineControl`,
such as the OPC UA server's method). A stream's ``stats()`` (lost frames,
triggers) is summed over reconnects into the status and /metrics.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgetl.api import PipelineControl
from edgetl.errors import ConfigError, EdgetlError

log = logging.getLogger("edgetl.agent.pipeline")
BACKOFF_START_S, BACKOFF_MAX_S = 0.5, 30.0
STABLE_S = 30.0  # a stream that delivered this long before dying is retried from the shortest wait


class SourceAway(EdgetlError):
    """The camera is away (the pipeline is reconnecting): a trigger is refused, not queued (HTTP 503 with
    Retry-After: the line may try again once the camera is back)."""

    retry_after = 1


@dataclass
class PipelineConfig:
    """What ``POST /v1/pipeline`` starts (and ``pipeline.json`` keeps).

    Attributes:
        source: a URI the source plugins accept (camera index, rtsp://, file, folder, gst:).
        source_options: passed to the source (e.g. ``realtime``, ``fps``).
        sinks: ``[{"name": ..., "options": {...}}]``.
        fps_limit: at most this many predictions per second (None: as fast as the model goes).
        roi: (x, y, w, h) cut from each frame before the model's own preprocessing.
    """

    source: str
    sinks: list[dict[str, Any]] = field(default_factory=list)
    source_options: dict[str, Any] = field(default_factory=dict)
    fps_limit: float | None = None
    roi: list[int] | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> "PipelineConfig":
        if not isinstance(doc, dict) or not isinstance(doc.get("source"), (str, int)) or doc.get("source") == "":
            raise ConfigError("pipeline: 'source' is required (camera index, rtsp://, http://, video file, "
                              "image folder or gst:<pipeline>)")
        if "\0" in str(doc["source"]):
            raise ConfigError("pipeline: 'source' contains a NUL character")
        sinks = doc.get("sinks") or []
        if not isinstance(sinks, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str)
                                                  and s.get("name") for s in sinks):
            raise ConfigError("pipeline: 'sinks' must be a list of {name, options}")
        for i, spec in enumerate(sinks):
            _check_options(spec.get("options"), f"sinks[{i}].options")
        _check_options(doc.get("source_options"), "source_options")
        fps = doc.get("fps_limit")
        if fps is not None and (not isinstance(fps, (int, float)) or isinstance(fps, bool) or not 0 < fps < 1e6):
            raise ConfigError(f"pipeline: 'fps_limit' must be a positive number (got {fps!r})")
        roi = doc.get("roi")
        if roi is not None and (not isinstance(roi, list) or len(roi) != 4
                                or not all(isinstance(v, int) and not isinstance(v, bool) for v in roi)
                                or min(roi) < 0 or roi[2] == 0 or roi[3] == 0):
            raise ConfigError(f"pipeline: 'roi' must be [x, y, w, h] integers, x, y >= 0, w, h > 0 (got {roi!r})")
        return cls(source=str(doc["source"]), sinks=[{"name": s["name"], "options": dict(s.get("options") or {})}
                                                     for s in sinks],
                   source_options=dict(doc.get("source_options") or {}), fps_limit=fps, roi=roi)

    def confined(self, roots: tuple[str, ...] | list[str], forbidden: tuple[str, ...] | list[str] = ()
                 ) -> "PipelineConfig":
        """This config with every filesystem path resolved, or ConfigError for one outside ``roots`` or
        inside ``forbidden`` (the agent's state dir).

        Paths are the source when it is not a camera index or a network URI (a ``file://`` URI is a
        path), the path-like values of a ``gst:`` pipeline (:func:`gst_paths`), and the values of the
        path options (:data:`PATH_OPTIONS`) of the source and of every sink. A relative path is taken
        relative to the first root. Every one goes through :func:`confine_path`.
        """
        source = self.source
        if source[:7].lower() == "file://":
            source = confine_path(source[7:], roots, "source", forbidden)
        elif source.startswith("gst:"):
            for value in gst_paths(source[4:]):
                confine_path(value, roots, "source (gst: path)", forbidden)
        elif not (source.isdigit() or "://" in source):
            source = confine_path(source, roots, "source", forbidden)
        sinks = [{"name": s["name"], "options": _confine_options(s["options"], roots, f"sink {s['name']}",
                                                                 forbidden)}
                 for s in self.sinks]
        return PipelineConfig(source=source, sinks=sinks, fps_limit=self.fps_limit, roi=self.roi,
                              source_options=_confine_options(self.source_options, roots, "source_options",
                                                              forbidden))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_options": self.source_options, "sinks": self.sinks,
                "fps_limit": self.fps_limit, "roi": self.roi}


PATH_OPTIONS = ("dir", "path", "file", "folder", "ca", "cert", "key", "certfile", "keyfile", "location",
                "users_file", "password_file", "certificate", "private_key", "trusted_clients")
# numeric options awaited while a pipeline starts: bounded, so a start cannot hold its worker for long
TIMEOUT_OPTIONS = {"connect_timeout_s": 30.0, "timeout_s": 30.0, "open_timeout_s": 30.0}
# gst: element properties that name files; any other value that looks like a path is checked too
GST_PATH_KEYS = frozenset({"location", "filename", "file", "path", "config-file", "config-file-path",
                           "model-engine-file", "dir", "directory", "uri"})


def _check_options(options: Any, where: str) -> None:
    """ConfigError naming the field for options that are not an object, a non-string path option, or
    a timeout outside (0, its cap]."""
    if options is None:
        return
    if not isinstance(options, dict):
        raise ConfigError(f"pipeline: '{where}' must be an object (got {type(options).__name__})")
    for key, value in options.items():
        if key in PATH_OPTIONS and value is not None and not isinstance(value, str):
            raise ConfigError(f"pipeline: '{where}.{key}' must be a path string (got {value!r})")
        if isinstance(value, str) and "\0" in value:
            raise ConfigError(f"pipeline: '{where}.{key}' contains a NUL character")
        if key in TIMEOUT_OPTIONS and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                       or not 0 < value <= TIMEOUT_OPTIONS[key]):
            raise ConfigError(f"pipeline: '{where}.{key}' must be a number of seconds in "
                              f"(0, {TIMEOUT_OPTIONS[key]:g}] (got {value!r})")


def gst_paths(description: str) -> list[str]:
    """The filesystem paths a ``gst-launch`` description names: the values of :data:`GST_PATH_KEYS`
    (a ``file:`` URI as its path), and any other value that is absolute or relative with a dot
    (``/…``, ``./…``, ``../…``, ``~…``) except a V4L2 camera node (``/dev/videoN``)."""
    import re
    import shlex

    try:
        tokens = shlex.split(description.replace("!", " ! "))
    except ValueError:
        raise ConfigError("pipeline: source (gst: pipeline) has unbalanced quotes") from None
    paths = []
    for token in tokens:
        key, eq, value = token.partition("=")
        if not eq:
            continue
        key = key.strip().lower()
        if value[:5].lower() == "file:":
            paths.append(re.sub(r"^file:(//)?", "", value, flags=re.IGNORECASE))
        elif key == "uri":
            continue  # rtsp://, http://: not a file
        elif key in GST_PATH_KEYS or (value.startswith(("/", "./", "../", "~"))
                                      and not re.fullmatch(r"/dev/video\d+", value)):
            paths.append(value)
    return paths


def confine_path(value: str, roots: tuple[str, ...] | list[str], what: str,
                 forbidden: tuple[str, ...] | list[str] = ()) -> str:
    """``value`` as a real path (every link followed), if it lies under one of ``roots`` and under none
    of ``forbidden``; else ConfigError.

    The one confinement check of the pipeline: sources of every scheme, gst: paths and sink options
    all come here. The error is the same whether the path exists or not, and names only ``value``.
    """
    import os
    from pathlib import Path

    resolved_roots = [Path(os.path.realpath(r)) for r in roots]
    blocked = [Path(os.path.realpath(f)) for f in forbidden]

    def inside(path: Path, folders: list[Path]) -> bool:
        return any(path == folder or folder in path.parents for folder in folders)

    refused = ConfigError(f"pipeline: {what} {value!r} is outside the agent's data roots (--data-root); "
                          "sources and sinks may only use paths under them, never the state dir")
    if not resolved_roots:
        raise refused
    path = Path(os.path.expanduser(value)) if value.startswith("~") else Path(value)
    try:
        resolved = Path(os.path.realpath(path if path.is_absolute() else resolved_roots[0] / path))
    except (OSError, ValueError):
        raise refused from None
    if not inside(resolved, resolved_roots) or inside(resolved, blocked):
        raise refused
    return str(resolved)


def _confine_options(options: dict[str, Any], roots: tuple[str, ...] | list[str], what: str,
                     forbidden: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    return {key: confine_path(str(value), roots, f"{what} option '{key}'", forbidden)
            if key in PATH_OPTIONS and isinstance(value, str) and value else value
            for key, value in options.items()}


def find_source(uri: str):
    """The first source plugin that accepts ``uri`` (a look at the URI or the file system, no I/O
    with a camera or a network), or ConfigError."""
    from edgetl.plugins import get_manager

    for source in get_manager().all("source"):
        if source.accepts(uri):
            return source
    raise ConfigError(f"pipeline: no source plugin accepts {uri!r} (camera index, rtsp://, http://, "
                      "video file, image folder or gst:<pipeline>)")


def check_plugins(config: PipelineConfig) -> None:
    """What a request can check without opening anything: a source plugin accepts the source and
    every sink is a known plugin (ConfigError / UnknownComponentError otherwise)."""
    from edgetl.plugins import get_manager

    find_source(config.source)
    for i, spec in enumerate(config.sinks):
        try:
            get_manager().get("sink", spec["name"])
        except EdgetlError as exc:
            raise ConfigError(f"pipeline: 'sinks[{i}].name': {exc}") from None


def open_source(uri: str, options: dict[str, Any]):
    """The first source plugin that accepts ``uri``, opened."""
    return find_source(uri).open(uri, options)


class Pipeline:
    """One running pipeline.

    ``predict(image_bgr, roi)`` returns a predict document, or ``(document, anomaly_map)`` (the map,
    if not None, reaches the sinks as ``Frame.anomaly_map``), or None (no model).
    """

    def __init__(self, config: PipelineConfig, predict: Callable[[np.ndarray, Any], dict | tuple | None],
                 metrics: Any = None, on_end: Callable[["Pipeline", str | None], None] | None = None,
                 observers: list[Callable[[dict, Any, "Pipeline"], None]] | None = None,
                 model_info: Callable[[], dict[str, Any]] | None = None):
        self.config, self.predict, self.metrics, self.on_end = config, predict, metrics, on_end
        self.observers = observers if observers is not None else []  # the line's page (edgetl.device.live)
        self.observer_errors = 0
        self.model_info = model_info or dict
        self._stats_done: dict[str, int] = {}  # stats of the streams already closed (summed over reconnects)
        self._stats_seen: dict[str, int] = {}  # what /metrics was told so far
        self._stats_lock = threading.Lock()
        self._stream = None
        self.state, self.error = "starting", None
        self.frames = self.dropped = self.reconnects = self.sink_errors = self.skipped = 0
        self._times: collections.deque[float] = collections.deque(maxlen=30)
        self._cond = threading.Condition()
        self._slot = None
        self._eof = False
        self._live = True
        self._stop = threading.Event()
        self.started = time.time()

    # -- control -------------------------------------------------------------------
    def start(self, strict: bool = True) -> None:
        """Open the source and every sink, then start the threads.

        Args:
            strict: a source that cannot be opened is an error for the caller
                (the API's start); False (resuming at boot) keeps retrying it
                with backoff instead, as when a camera comes up after the agent.
        """
        from edgetl.plugins import get_manager

        try:
            self._stream = open_source(self.config.source, self.config.source_options)
        except EdgetlError as exc:
            if strict:
                raise
            self._stream, self.error = None, str(exc)
        self._writers = []
        try:
            for spec in self.config.sinks:
                self._writers.append(get_manager().get("sink", spec["name"]).open(spec.get("options") or {}))
            control = _Control(self)
            for writer in self._writers:
                writer.attach(control)
        except Exception:
            self._close_all()
            if self._stream is not None:  # release the camera: a refused start holds nothing
                self._retire_stream(self._stream)
            raise
        self.state = "running" if self._stream is not None else "reconnecting"
        self._reader = threading.Thread(target=self._read_loop, name="pipeline-reader", daemon=True)
        self._worker = threading.Thread(target=self._work_loop, name="pipeline-worker", daemon=True)
        self._reader.start()
        self._worker.start()

    def start_in_background(self, after: "Pipeline | None" = None, strict: bool = True) -> None:
        """Stop ``after`` (the pipeline this one replaces), then :meth:`start`, in this pipeline's own
        thread: connecting to a camera or a broker never blocks the caller (an API request). A start
        that fails shows as state ``error`` with the reason (``GET /v1/pipeline``)."""
        def run() -> None:
            if after is not None:
                after.stop()
            if self._stop.is_set():
                self.state = "stopped"
                return
            try:
                self.start(strict=strict)
            except Exception as exc:
                self.error = str(exc) if isinstance(exc, EdgetlError) else f"{type(exc).__name__}: {exc}"
                self.state = "error"
                log.error("pipeline not started: %s", self.error)
                if self.on_end is not None:
                    self.on_end(self, "error")
                return
            if self._stop.is_set():  # stopped while it was opening
                self.stop()

        self._starter = threading.Thread(target=run, name="pipeline-start", daemon=True)
        self._starter.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        stream = self._stream
        if stream is not None:  # a triggered camera may be waiting for a frame that never comes
            stream.interrupt()
        with self._cond:
            self._cond.notify_all()
        for thread in (getattr(self, "_starter", None), getattr(self, "_reader", None),
                       getattr(self, "_worker", None)):
            # a thread created by a start still running elsewhere but not started yet: it sees _stop and ends
            if thread is not None and thread is not threading.current_thread() and thread.ident is not None:
                thread.join(timeout)
        if self.state in ("running", "reconnecting", "starting"):
            self.state = "stopped"

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a replay to finish (or a background start to fail); True if it did."""
        deadline = None if timeout is None else time.monotonic() + timeout
        starter = getattr(self, "_starter", None)
        if starter is not None:
            starter.join(timeout)
        worker = getattr(self, "_worker", None)
        if worker is None:
            return self.state in ("error", "stopped")
        worker.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not worker.is_alive()

    def status(self) -> dict[str, Any]:
        stats = self._poll_stats()
        degraded = self.state == "reconnecting"
        return {"state": self.state, "config": self.config.to_dict(), "frames": self.frames,
                "dropped": self.dropped, "skipped_no_model": self.skipped, "reconnects": self.reconnects,
                "sink_errors": self.sink_errors, "fps": round(self.fps, 3), "error": self.error,
                "started": self.started, "health": "degraded" if degraded else "ok",
                "reason": self.error if degraded else None, "lost": stats.get("lost", 0),
                "triggers": stats.get("triggers", 0), "source_stats": stats}

    def trigger(self) -> dict[str, Any]:
        """Fire one software trigger on the source; ConfigError when it takes none, SourceAway while
        the camera is away (the trigger is not queued: a line must not get a stale verdict)."""
        stream = self._stream
        if stream is None and self.state == "reconnecting":
            raise SourceAway(f"pipeline: the source is away ({self.error}); trigger not sent")
        if stream is None or not callable(getattr(stream, "trigger", None)):
            raise ConfigError(f"pipeline: source {self.config.source!r} takes no software trigger "
                              "(use a genicam:// camera with source_options trigger: software)")
        sent = stream.trigger()
        self._poll_stats()
        return {"trigger": sent, "source": self.config.source}

    def _poll_stats(self) -> dict[str, int]:
        """The source's counters summed over reconnects; /metrics gets what is new since last time."""
        with self._stats_lock:
            stream = self._stream
            live = {}
            if stream is not None:
                try:
                    live = dict(stream.stats())
                except Exception as exc:  # a vanished camera must not break the status
                    log.debug("source stats failed: %s", exc)
            total = {k: self._stats_done.get(k, 0) + live.get(k, 0) for k in {*self._stats_done, *live}}
            if self.metrics is not None:
                for key, counter in (("lost", self.metrics.lost_frames), ("triggers", self.metrics.triggers)):
                    new = total.get(key, 0) - self._stats_seen.get(key, 0)
                    if new > 0:
                        counter.inc(new)
                        self._stats_seen[key] = total.get(key, 0)
            return total

    def _retire_stream(self, stream: Any) -> None:
        """Close ``stream`` and keep its counters in the running totals."""
        with self._stats_lock:
            try:
                final = dict(stream.stats())
            except Exception:
                final = {}
            for key, value in final.items():
                self._stats_done[key] = self._stats_done.get(key, 0) + int(value)
            if self._stream is stream:
                self._stream = None
        stream.close()

    @property
    def fps(self) -> float:
        if len(self._times) < 2:
            return 0.0
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else 0.0

    # -- threads ---------------------------------------------------------------------
    def _read_loop(self) -> None:
        backoff = BACKOFF_START_S
        stream = self._stream
        min_gap = 1.0 / self.config.fps_limit if self.config.fps_limit else 0.0
        last_accepted = 0.0
        try:
            while not self._stop.is_set():
                if stream is None:
                    try:
                        stream = self._stream = open_source(self.config.source, self.config.source_options)
                        self.state = "running"
                    except EdgetlError as exc:
                        self.error = str(exc)
                        self._stop.wait(backoff)
                        backoff = min(backoff * 2, BACKOFF_MAX_S)
                        continue
                live = self._live = bool(getattr(stream, "live", True))
                opened_at = time.monotonic()
                try:
                    for frame in stream:
                        if self._stop.is_set():
                            break
                        if live:
                            if min_gap and frame.timestamp - last_accepted < min_gap:
                                self._drop()
                                continue
                            last_accepted = frame.timestamp
                            with self._cond:
                                if self._slot is not None:
                                    self._drop()
                                self._slot = frame
                                self._cond.notify_all()
                        else:
                            with self._cond:
                                while self._slot is not None and not self._stop.is_set():
                                    self._cond.wait(0.5)
                                self._slot = frame
                                self._cond.notify_all()
                except EdgetlError as exc:
                    self.error = str(exc)
                finally:
                    self._retire_stream(stream)
                    self._poll_stats()
                if self._stop.is_set() or not getattr(stream, "reconnect", False):
                    break
                stream = None
                if time.monotonic() - opened_at > STABLE_S:  # it ran a good while: start over at short waits
                    backoff = BACKOFF_START_S
                self.state, self.reconnects = "reconnecting", self.reconnects + 1
                if self.metrics is not None:
                    self.metrics.reconnects.inc()
                log.warning("source %s ended; reconnecting in %.1f s", self.config.source, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    def _drop(self) -> None:
        self.dropped += 1
        if self.metrics is not None:
            self.metrics.dropped_frames.inc()

    def _work_loop(self) -> None:
        roi = tuple(self.config.roi) if self.config.roi else None
        pace = 1.0 / self.config.fps_limit if self.config.fps_limit else 0.0
        next_at = time.monotonic()
        end_state: str | None = None
        try:
            while True:
                with self._cond:
                    while self._slot is None and not self._eof and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._stop.is_set() or (self._slot is None and self._eof):
                        break
                    frame, self._slot = self._slot, None
                    self._cond.notify_all()
                out = self.predict(frame.image, roi)
                if out is None:
                    self.skipped += 1
                    continue
                doc, anomaly_map = out if isinstance(out, tuple) else (out, None)
                if anomaly_map is not None:  # for the sinks, beside the (small) result document
                    frame = replace(frame, anomaly_map=anomaly_map)
                self._deliver({"timestamp": frame.timestamp, "source": frame.source, "frame": frame.index,
                               **frame.meta, **doc}, frame)
                self._times.append(time.monotonic())
                if self.metrics is not None:
                    self.metrics.pipeline_frames.inc()
                    self.metrics.pipeline_fps.set(self.fps)
                if pace and not self._live:  # a replay is paced; a live source was thinned by the reader
                    next_at += pace
                    time.sleep(max(0.0, next_at - time.monotonic()))
            end_state = None if self._stop.is_set() else "finished"
        except Exception as exc:
            end_state, self.error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("pipeline stopped")
            self._stop.set()
        finally:
            # sinks closed and on_end done *before* the state says so: whoever sees "finished"
            # finds the results flushed and the saved config updated
            self._close_all()
            if self.metrics is not None:
                self.metrics.pipeline_fps.set(0)
            if self.on_end is not None:
                self.on_end(self, end_state)
            if end_state:
                self.state = end_state

    def _deliver(self, result: dict[str, Any], frame: Any) -> None:
        """Hand one result to every sink; one bad sink must not stop the line."""
        for writer in self._writers:
            try:
                writer.write(result, frame)
            except Exception as exc:
                self.sink_errors += 1
                log.warning("sink %s failed: %s", type(writer).__name__, exc)
        self.frames += 1
        for observe in self.observers:  # after the sinks: the page never delays a result
            try:
                observe(result, frame, self)
            except Exception as exc:
                self.observer_errors += 1
                log.warning("pipeline observer %s failed: %s", type(observe).__name__, exc)

    def _close_all(self) -> None:
        for writer in getattr(self, "_writers", []):
            try:
                writer.close()
            except Exception as exc:
                log.warning("closing sink failed: %s", exc)
        self._writers = []


class _Control(PipelineControl):
    """The :class:`edgetl.api.PipelineControl` sinks get: trigger, status, model facts."""

    def __init__(self, pipeline: Pipeline):
        self._pipeline = pipeline

    def trigger(self) -> dict[str, Any]:
        return self._pipeline.trigger()

    def status(self) -> dict[str, Any]:
        return self._pipeline.status()

    def model(self) -> dict[str, Any]:
        return dict(self._pipeline.model_info())
