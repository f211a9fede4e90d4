"""Prometheus metrics of one agent (own registry, so several agents can share a process in tests).

Input statistics for drift: the mean brightness of every predicted image
(0–255, a histogram) and its contrast (standard deviation); a lens going dirty,
a lamp failing or a new product shows up there before accuracy drops.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PIXEL_BUCKETS = tuple(float(x) for x in range(16, 256, 16))


class Metrics:
    """The agent's counters, histograms and gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("edgetl_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.request_latency = Histogram("edgetl_request_latency_seconds", "HTTP request latency",
                                         ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_latency = Histogram("edgetl_inference_latency_seconds",
                                           "preprocessing + inference per image", buckets=LATENCY_BUCKETS,
                                           registry=r)
        self.predictions = Counter("edgetl_predictions", "predictions per label", ["label", "origin"], registry=r)
        self.installs = Counter("edgetl_installs", "installs by result", ["result"], registry=r)
        self.rollbacks = Counter("edgetl_rollbacks", "rollbacks", registry=r)
        self.pipeline_fps = Gauge("edgetl_pipeline_fps", "pipeline frames predicted per second", registry=r)
        self.pipeline_frames = Counter("edgetl_pipeline_frames", "frames predicted by the pipeline", registry=r)
        self.dropped_frames = Counter("edgetl_pipeline_dropped_frames",
                                      "frames dropped because inference was slower than the source", registry=r)
        self.reconnects = Counter("edgetl_pipeline_reconnects", "source reconnect attempts", registry=r)
        self.lost_frames = Counter("edgetl_pipeline_lost_frames",
                                   "frames the camera sent that never arrived whole (incomplete, missing "
                                   "packets, timeouts)", registry=r)
        self.triggers = Counter("edgetl_pipeline_triggers", "software triggers sent to the source", registry=r)
        self.input_brightness = Histogram("edgetl_input_brightness", "mean pixel value of predicted images (0-255)",
                                          buckets=PIXEL_BUCKETS, registry=r)
        self.input_contrast = Histogram("edgetl_input_contrast", "pixel standard deviation of predicted images",
                                        buckets=PIXEL_BUCKETS, registry=r)
        self.model_info = Gauge("edgetl_model_info", "the model serving (value 1)", ["model_version"], registry=r)

    def observe_prediction(self, doc: dict, image_bgr: np.ndarray, origin: str) -> None:
        self.predictions.labels(label=str(doc.get("label")), origin=origin).inc()
        self.inference_latency.observe(float(doc.get("latency_ms", 0.0)) / 1000.0)
        small = image_bgr[::8, ::8]
        self.input_brightness.observe(float(small.mean()))
        self.input_contrast.observe(float(small.std()))

    def set_model(self, model_version: str | None) -> None:
        self.model_info.clear()
        if model_version:
            self.model_info.labels(model_version=model_version).set(1)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
