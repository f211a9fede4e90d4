"""The agent: one model per state directory, its installer, pipeline and metrics (no torch).

Everything the HTTP layer (:mod:`edgetl.device.app`) calls lives here, so the
behaviour can be driven and tested without a server. Predictions read
``self.model`` once per request: an install or rollback swaps that reference
under a lock, so requests in flight finish on the model they started with.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.device.install import Installer, InstallHooks
from edgetl.device.journal import Journal
from edgetl.device.limits import Limits
from edgetl.device.metrics import Metrics
from edgetl.device.model import DeviceModel
from edgetl.device.slots import PredictSlots
from edgetl.device.state import StateDir, atomic_write_json, fsync_dir, read_json, recover_pointer
from edgetl.errors import ConfigError, EdgetlError

log = logging.getLogger("edgetl.agent")


class NoModelError(EdgetlError):
    """No model is installed yet (HTTP 503)."""


class ConflictError(EdgetlError):
    """The request cannot apply in the current state (HTTP 409), e.g. rollback without a previous model."""


class Agent:
    """State, model, installer and pipeline of one device agent.

    Args:
        state_dir: where everything persistent lives (created if missing).
        trusted: public key files; a bundle installs only if one of them signed it.
        max_bundle_mb: cap on the upload and on the extracted size, in MiB.
        autostart: start the saved pipeline at boot even if it was stopped.
        strict_int8: refuse (not just warn about) INT8 bundles made for CPU features this CPU lacks.
        limits: every other input cap (:class:`edgetl.device.limits.Limits`); its bundle sizes are
            replaced by ``max_bundle_mb`` and an empty ``data_roots`` by :func:`default_data_root`.
    """

    def __init__(self, state_dir: str | Path, trusted: list[str | Path], max_bundle_mb: float = 512,
                 autostart: bool = False, strict_int8: bool = False, limits: Limits | None = None):
        from edgetl.keys import load_public_key

        if not trusted:
            raise ConfigError("agent: at least one --trust KEY.pub is required (only signed bundles install)")
        self.trusted_keys = [load_public_key(Path(p)) for p in trusted]
        self.state = StateDir(state_dir)
        self.journal = Journal(self.state.journal_path)
        self.metrics = Metrics()
        cap = int(max_bundle_mb * 1024 * 1024)
        limits = limits or Limits()
        self.limits = replace(limits, bundle_bytes=cap, unpacked_bytes=cap,
                              data_roots=_usable_data_roots(limits.data_roots, self.state.root))
        self.autostart, self.strict_int8 = autostart, strict_int8
        self.installer = Installer(self.state, self.journal, InstallHooks(
            trusted_keys=lambda: self.trusted_keys, limits=self.limits, strict_int8=strict_int8, switch=self.switch_to,
            on_result=lambda result: self.metrics.installs.labels(result=result).inc()))
        self.model: DeviceModel | None = None
        self.degraded: str | None = None
        self.pipeline = None
        self.frame_observers: list = []  # called with every pipeline result (the line's page: edgetl.device.ui)
        self._switch = threading.Lock()  # one model change at a time (loads happen under it)
        self._serving = threading.Lock()  # the swap of self.model and a request's lease on it: no I/O
        self._pipeline_lock = threading.Lock()
        self.slots = PredictSlots(self.limits.max_inflight, self.limits.max_queued)

    @property
    def max_bundle_bytes(self) -> int:
        return self.limits.bundle_bytes

    # -- lifecycle -----------------------------------------------------------------
    def startup(self) -> dict[str, Any]:
        """Repair a damaged pointer, recover interrupted installs, load the current model, resume the pipeline."""
        recover_pointer(self.state, self.journal)
        recovered = self.installer.recover()
        self._load_at_start()
        self.metrics.set_model(self.model.name if self.model else None)
        self._resume_pipeline()
        return {"recovered": recovered, "model": self.model.name if self.model else None}

    def _load_at_start(self) -> None:
        """Load the current model, else the previous one; with neither, start *degraded*: predict answers
        503, health says why, and an install can still fix the device remotely (no restart loop)."""
        pointer = self.state.pointer()
        if not pointer["current"]:
            return
        try:
            self.model = self._load(pointer["current"])
            return
        except Exception as exc:  # the current model no longer loads: serve the previous one
            log.error("current model %s does not load (%s)", pointer["current"], exc)
            reason = f"the current model does not load ({type(exc).__name__})"
        if pointer["previous"]:
            try:
                self.model = self._load(pointer["previous"])
                self.state.set_pointer(pointer["previous"], pointer["current"])
                self.journal.append(event="rollback", reason=f"current model failed to load: {reason}")
                return
            except Exception as exc:
                log.error("previous model %s does not load either (%s)", pointer["previous"], exc)
        self.degraded = f"no model loads: {reason}; deploy a bundle"
        log.error("agent degraded: %s", self.degraded)

    def health(self) -> dict[str, Any]:
        """``ok`` with the serving model, ``ok`` and ``serving: false`` with what that means when no model
        is installed yet, or ``degraded`` with the reason when no model could be loaded at start."""
        model = self.model
        if model is not None:
            return {"status": "ok", "serving": True, "model": model.manifest.model_version}
        if self.degraded:
            return {"status": "degraded", "serving": False, "reason": self.degraded}
        return {"status": "ok", "serving": False,
                "reason": "no model installed yet: the agent is up and accepts an install (PUT /v1/model, "
                          "edgetl deploy); /v1/predict answers 503 until one is installed"}

    def shutdown(self) -> None:
        """Stop the pipeline (its sinks flush and close); the model stays loaded until the process ends."""
        with self._pipeline_lock:
            pipeline = self.pipeline
        if pipeline is not None:
            pipeline.stop()

    def _threshold_override(self, install_id: str) -> float | None:
        doc = read_json(self.state.threshold_path, None)
        if doc and doc.get("install_id") == install_id:
            return float(doc["threshold"])
        return None

    def _load(self, install_id: str) -> DeviceModel:
        return DeviceModel.load(install_id, self.state.model_dir(install_id), self.state.engines_dir,
                                threshold=self._threshold_override(install_id))

    # -- model changes -------------------------------------------------------------
    def switch_to(self, install_id: str, staging: Path, model: DeviceModel, crash_hook=None) -> dict[str, Any]:
        """The install's last step: move the staged model in place and point ``current`` at it."""
        with self._switch:
            old = self.state.pointer()["current"]
            staging.rename(self.state.model_dir(install_id))
            fsync_dir(self.state.model_dir(install_id).parent)
            self.state.set_pointer(install_id, old)
            if crash_hook is not None:
                crash_hook("switched")
            with self._serving:
                previous_model, self.model = self.model, model
            self.state.prune({i for i in (install_id, old) if i})
            self.metrics.set_model(model.name)
        if previous_model is not None:
            previous_model.retire()  # closed once its in-flight requests are done
        old_manifest = self.state.model_manifest(old)
        return {"from": old_manifest.model_version if old_manifest is not None else None, "to": model.name,
                "previous_kept": bool(old)}

    def rollback(self) -> dict[str, Any]:
        """Swap current and previous (a second rollback returns); ConflictError without a previous."""
        with self._switch:
            pointer = self.state.pointer()
            if not pointer["previous"]:
                raise ConflictError("no previous model to roll back to")
            model = self._load(pointer["previous"])
            self.state.set_pointer(pointer["previous"], pointer["current"])
            with self._serving:
                old, self.model = self.model, model
            self.journal.append(event="rollback", **{"from": pointer["current"], "to": pointer["previous"]})
            self.metrics.rollbacks.inc()
            self.metrics.set_model(model.name)
        if old is not None:
            old.retire()  # closed once its in-flight requests are done
        return {"from": old.name if old else None, "to": model.name}

    def set_threshold(self, value: float) -> dict[str, Any]:
        """Change the operating threshold of the current model (journaled; reset by the next install)."""
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(f"threshold: expected a number in [0, 1], got {value!r}")
        with self._switch:
            model = self.model
            if model is None:
                raise NoModelError("no model installed")
            old = model.threshold
            atomic_write_json(self.state.threshold_path, {"install_id": model.install_id, "threshold": float(value)})
            model.threshold = float(value)
            self.journal.append(event="threshold", install_id=model.install_id, old=old, new=float(value))
        return {"model": model.name, "threshold": float(value), "previous_threshold": old}

    # -- predictions ------------------------------------------------------------------
    def lease(self) -> "contextlib.AbstractContextManager[DeviceModel]":
        """The serving model, held for one request: a model replaced meanwhile is closed only when
        its last lease ends (NoModelError without a model)."""
        with self._serving:
            model = self.model
            if model is None:
                raise NoModelError("no model installed; deploy a bundle first")
            model.acquire()
        return _Lease(model)

    def _predict(self, model: DeviceModel, image_bgr: np.ndarray, roi: tuple | None, origin: str,
                 keep_map: bool = False) -> tuple[dict[str, Any], np.ndarray | None]:
        """(predict document, frame-sized anomaly map or None) from a leased ``model``; ``keep_map``
        reads the map of an anomaly model from the same inference (``predict_outputs``)."""
        from edgetl.predictor import predict_document

        spec = model.input if roi is None else replace(model.input, roi=tuple(roi))
        predictor = _WithInput(model, spec, keep_map=keep_map and model.task == "anomaly")
        doc = predict_document(predictor, image_bgr)
        self.metrics.observe_prediction(doc, image_bgr, origin)
        return doc, predictor.frame_map(image_bgr.shape[:2])

    def predict_bytes(self, body: bytes, heatmap: bool = False, content_type: str | None = None) -> dict[str, Any]:
        """``POST /v1/predict``: check the image's type, size and decode cost from its header and
        structure, decode (reduced when much larger than the network's input), predict; ``heatmap``
        adds the anomaly map. Holds one of :attr:`slots` (at most ``max_inflight`` at once) and a
        lease on the model; ``latency_ms`` covers the checks and the decode too."""
        import time

        from edgetl.device.images import decode_checked

        with self.slots.running(), self.lease() as model:
            started = time.perf_counter()
            spec = model.input
            want = None if (spec.roi or spec.tile) else (spec.size[1], spec.size[0])
            image = decode_checked(body, self.limits.image_pixels, want, declared=content_type,
                                   max_scans=self.limits.jpeg_max_scans)
            if heatmap and _one_pass_map(model):  # score and map from the same inference
                doc, amap = self._predict(model, image, None, "api", keep_map=True)
                if amap is None:
                    raise ConfigError("heatmap: this model gives no anomaly map (its runtime returns no 'map' output)")
                doc["heatmap_png"] = _png(amap)
            else:
                doc = self._predict(model, image, None, "api")[0]
                if heatmap:
                    doc["heatmap_png"] = _heatmap(model, image)
            doc["latency_ms"] = (time.perf_counter() - started) * 1000.0
            return doc

    # -- info ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        from edgetl.device.facts import device_facts

        pointer = self.state.pointer()
        model = self.model
        return {"device": device_facts(), "current": self.state.manifest(pointer["current"]),
                "previous": self.state.manifest(pointer["previous"]),
                "serving": {"model": model.name, "install_id": model.install_id, "threshold": model.threshold,
                            "runtime": model.runtime.info()} if model else None,
                "trusted_keys": self._trusted_ids(), "max_bundle_bytes": self.max_bundle_bytes,
                "limits": {k: v for k, v in asdict(self.limits).items() if k != "data_roots"},
                "pull": puller.status() if (puller := getattr(self, "puller", None)) is not None else None}

    def _trusted_ids(self) -> list[str]:
        from edgetl.keys import key_id

        return [key_id(k) for k in self.trusted_keys]

    # -- pipeline -------------------------------------------------------------------------
    def pipeline_status(self) -> dict[str, Any]:
        saved = read_json(self.state.pipeline_path, None) or {}
        live = self.pipeline.status() if self.pipeline is not None else None
        return {"running": bool(live and live["state"] in ("starting", "running", "reconnecting")),
                "status": live, "saved": saved.get("config"), "autostart": self.autostart}

    def start_pipeline(self, doc: dict[str, Any], strict: bool = True) -> dict[str, Any]:
        """Start a pipeline: checked here (paths confined to the data roots, never the state dir; plugins
        known), opened in its own thread (:meth:`Pipeline.start_in_background`); a refused request keeps
        the last pipeline's status and saved config. The lock covers the swap, never a connection."""
        from edgetl.device.pipeline import Pipeline, PipelineConfig, check_plugins

        config = PipelineConfig.from_dict(doc).confined(self.limits.data_roots, (str(self.state.root),))
        check_plugins(config)
        pipeline = Pipeline(config, self._pipeline_predict, self.metrics, on_end=self._pipeline_ended,
                            observers=self.frame_observers, model_info=self.model_facts)
        with self._pipeline_lock:
            old, self.pipeline = self.pipeline, pipeline
            # saved and current *before* it starts: a short replay may end (and say so) at once
            atomic_write_json(self.state.pipeline_path, {"running": True, "config": config.to_dict()})
        pipeline.start_in_background(after=old, strict=strict)
        return self.pipeline_status()

    def trigger_pipeline(self) -> dict[str, Any]:
        """``POST /v1/pipeline/trigger``: one software trigger on the running pipeline's camera."""
        pipeline = self.pipeline
        if pipeline is None or pipeline.state not in ("running", "reconnecting"):
            raise ConfigError("pipeline: no pipeline is running; start one with a genicam:// source first")
        return pipeline.trigger()

    def model_facts(self) -> dict[str, Any]:
        """The serving model's name, version and digest (sha256 of its manifest), for PLC-facing sinks."""
        import hashlib

        model = self.model
        if model is None:
            return {}
        manifest = model.manifest
        digest = hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()
        return {"name": manifest.name, "version": manifest.model_version, "digest": digest,
                "install_id": model.install_id}

    def stop_pipeline(self) -> dict[str, Any]:
        with self._pipeline_lock:
            pipeline = self.pipeline
            saved = read_json(self.state.pipeline_path, None) or {}
            atomic_write_json(self.state.pipeline_path, {"running": False, "config": saved.get("config")})
        if pipeline is not None:
            pipeline.stop()
        return self.pipeline_status()

    def _pipeline_ended(self, pipeline: Any, end_state: str | None) -> None:
        """A replay that ran to its end (or broke) is not resumed at the next start."""
        if end_state in ("finished", "error") and pipeline is self.pipeline:
            atomic_write_json(self.state.pipeline_path, {"running": False, "config": pipeline.config.to_dict(),
                                                         "ended": end_state})

    def _pipeline_predict(self, image_bgr: np.ndarray, roi: tuple | None) -> tuple[dict[str, Any], Any] | None:
        """(document, anomaly map for the sinks) of one frame; None while no model is installed."""
        try:
            with self.lease() as model:
                return self._predict(model, image_bgr, roi, "pipeline", keep_map=True)
        except NoModelError:
            return None

    def _resume_pipeline(self) -> None:
        saved = read_json(self.state.pipeline_path, None) or {}
        if saved.get("config") and (saved.get("running") or self.autostart):
            try:
                self.start_pipeline(saved["config"], strict=False)
                log.info("pipeline resumed: %s", saved["config"]["source"])
            except EdgetlError as exc:
                log.error("saved pipeline not resumed: %s", exc)


class _Lease:
    """``with agent.lease() as model``: releases the model's lease at the end."""

    def __init__(self, model: DeviceModel):
        self.model = model

    def __enter__(self) -> DeviceModel:
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.release()


def default_data_root(state_root: Path) -> Path:
    """``STATE-data`` beside the state dir (created if it can be): where sources and sinks go when no
    --data-root is given. Never the state dir itself, whose files a sink could otherwise overwrite."""
    root = Path(state_root).resolve()
    data = root.with_name(root.name + "-data")
    try:
        data.mkdir(exist_ok=True)
    except OSError as exc:  # e.g. a read-only parent: pipelines with paths are refused until --data-root
        log.warning("cannot create the default data root %s (%s); give --data-root", data, exc.strerror)
    return data


def _usable_data_roots(roots: tuple[str, ...], state_root: Path) -> tuple[str, ...]:
    """``roots`` without any that is the state dir or lies inside it (logged: every path there would be
    refused anyway); :func:`default_data_root` if none is left. Not an error at start, so that an
    older unit file (``--data-root`` = the state dir) does not put the agent in a restart loop."""
    import os

    state = Path(os.path.realpath(state_root))
    kept = []
    for root in roots:
        real = Path(os.path.realpath(root))
        if real == state or state in real.parents:
            log.error("--data-root %s is inside the state dir %s, which sources and sinks may never use: "
                      "ignored; give a folder beside it (e.g. %s-data)", root, state_root, state)
        else:
            kept.append(root)
    return tuple(kept) or (str(default_data_root(state_root)),)


class _WithInput:
    """A predictor view with another InputSpec (the pipeline's ROI), same model and threshold;
    with ``keep_map`` it scores through ``predict_outputs`` and keeps the anomaly map."""

    def __init__(self, model: DeviceModel, spec: Any, keep_map: bool = False):
        self._model, self.input, self._keep_map, self._map = model, spec, keep_map, None
        self.name, self.labels, self.task = model.name, model.labels, model.task
        self.threshold, self.positive = model.threshold, model.positive

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if not self._keep_map:
            return self._model.predict(batch)
        outs = self._model.predict_outputs(batch)
        self._map = outs.get("map")
        return outs["output"]

    def frame_map(self, frame_hw: tuple[int, int]) -> np.ndarray | None:
        """The kept map over the whole frame: (h, w) float32, or (H, W) with zeros outside an ROI.

        None when no map was kept or the input is tiled (one map per tile, not drawn).
        """
        if self._map is None or self.input.tile:
            return None
        amap = np.asarray(self._map, dtype=np.float32).reshape(-1, *np.shape(self._map)[-2:])[0]
        if not self.input.roi:
            return amap
        import cv2

        x, y, w, h = self.input.roi
        canvas = np.zeros(frame_hw, np.float32)
        canvas[y:y + h, x:x + w] = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
        return canvas


def _heatmap(model: DeviceModel, image: np.ndarray) -> str:
    """The anomaly map as a base64 PNG: JET colours over the network-input-sized map (0.5 = threshold).

    Used where the scoring inference cannot give the map (ROI, tiles, a runtime with the older
    ``predict_map``): the map comes from ``Runtime.predict_outputs(batch)["map"]`` or ``predict_map``.
    """
    from edgetl.preprocess import preprocess

    if model.task != "anomaly":
        raise ConfigError("heatmap: this model gives no anomaly map (only anomaly models with a map output do)")
    batch = preprocess(image, model.input)
    if hasattr(model.runtime, "predict_map"):
        amap = model.runtime.predict_map(batch)
    else:
        amap = model.predict_outputs(batch).get("map")
        if amap is None:
            raise ConfigError("heatmap: this model gives no anomaly map (its runtime returns no 'map' output)")
    return _png(amap)


def _one_pass_map(model: DeviceModel) -> bool:
    """Whether the map of ``?heatmap=true`` can come from the scoring inference itself: an anomaly
    model on the whole frame (no ROI, no tiles) whose runtime gives it through ``predict_outputs``."""
    spec = model.input
    return (model.task == "anomaly" and not spec.roi and not spec.tile
            and not hasattr(model.runtime, "predict_map"))


def _png(amap: Any) -> str:
    """A base64 PNG of an anomaly map: JET colours, the max over any leading axes, clipped to 0..1."""
    import base64

    import cv2

    amap = np.asarray(amap, dtype=np.float32)
    amap = np.clip(amap.reshape(-1, *amap.shape[-2:]).max(axis=0), 0, 1)
    colour = cv2.applyColorMap((amap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    ok, png = cv2.imencode(".png", colour)
    return base64.b64encode(png.tobytes()).decode("ascii")
