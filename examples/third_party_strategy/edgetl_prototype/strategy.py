"""Nearest class mean with cosine prototypes on frozen, centred, L2-normalised features.

No gradient step at all: the pretrained backbone runs once per image (and
flip view), each class is summarised by the mean of its normalised feature
vectors, and an image is scored by its cosine similarity to each class mean.
This is the nearest-class-mean classifier of Mensink et al. (2013, "Distance-
based image classification", TPAMI) with the centring and L2 normalisation
that Wang et al. (2019, "SimpleShot") showed makes it competitive in the
few-shot regime, plus a softmax temperature fitted on the validation split
(Guo et al. 2017) so the output is calibrated probabilities, as edgetl expects.

It suits tiny labelled sets (a handful of images per class), where fitting even
a linear head overfits, and adding a class means only computing one more mean.

options:
    views: flip views whose features join the class means (default: identity,
        hflip).
    temperatures: candidate scales s of ``softmax(s * cos)``; the one with the
        lowest validation cross-entropy is kept (default 1..64, log-spaced).
    batch_size: images per backbone pass (default 64).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError

DEFAULTS = {"views": ["identity", "hflip"], "temperatures": [1, 2, 4, 8, 16, 32, 64], "batch_size": 64}


def normalise(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Centre with the training mean, then scale every row to unit length."""
    centred = features - mean
    return centred / np.maximum(np.linalg.norm(centred, axis=1, keepdims=True), 1e-12)


def class_means(features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(K, D) unit-length prototypes: the normalised mean of each class's normalised features."""
    means = np.stack([features[labels == c].mean(axis=0) for c in range(k)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def pick_scale(cosines: np.ndarray, labels: np.ndarray, scales: list[float]) -> tuple[float, float]:
    """The scale with the lowest cross-entropy on (validation) cosines; (scale, its loss)."""
    losses = [float(-np.log(np.clip(softmax(s * cosines)[np.arange(len(labels)), labels], 1e-12, 1)).mean())
              for s in scales]
    best = int(np.argmin(losses))
    return float(scales[best]), losses[best]


def prototype_module(backbone: Any, mean: np.ndarray, prototypes: np.ndarray, scale: float) -> Any:
    """backbone -> centre -> normalise -> scaled cosine to each prototype -> softmax, as one module."""
    import torch
    from torch import nn

    class CosinePrototypes(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.register_buffer("mean", torch.from_numpy(mean.astype(np.float32)))
            self.register_buffer("prototypes", torch.from_numpy(prototypes.astype(np.float32)))
            self.scale = float(scale)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = nn.functional.normalize(self.backbone(x) - self.mean, dim=1)
            return torch.softmax(self.scale * f @ self.prototypes.T, dim=1)

    return CosinePrototypes().eval()


class Prototypes(Strategy):
    name = "prototype"
    description = "nearest class mean: cosine to centred, normalised class-mean features (no training steps)"
    requires = ("torch",)
    extra = "train"

    def options(self, given: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"strategy.options.{unknown[0]}: unknown option of 'prototype' "
                              f"(known: {', '.join(sorted(DEFAULTS))})")
        opts = {**DEFAULTS, **given}
        if not opts["temperatures"] or any(float(t) <= 0 for t in opts["temperatures"]):
            raise ConfigError("strategy.options.temperatures: expected a list of numbers > 0")
        return opts

    def fit(self, ctx: FitContext) -> TrainedModel:
        import time

        from edgetl.training import HistoryRow, extract_features, val_row

        opts = self.options(ctx.options)
        views = list(opts["views"])
        k = len(ctx.labels)
        t0 = time.perf_counter()
        try:
            train = extract_features(ctx, ctx.module, ctx.train, views, batch_size=opts["batch_size"])
        except ValueError as exc:
            raise ConfigError(f"strategy.options.views: {exc}") from None
        val = extract_features(ctx, ctx.module, ctx.val, batch_size=opts["batch_size"])
        seconds = time.perf_counter() - t0
        y = np.tile(ctx.train.labels, len(views))
        missing = [ctx.labels[c] for c in range(k) if not (y == c).any()]
        if missing:
            raise ConfigError(f"data.train: no training image of class {', '.join(missing)}")
        mean = train.mean(axis=0)
        prototypes = class_means(normalise(train, mean), y, k)
        cosines = normalise(val, mean) @ prototypes.T
        scale, _ = pick_scale(cosines, ctx.val.labels, [float(t) for t in opts["temperatures"]])
        probs = softmax(scale * cosines)
        ctx.progress(f"prototype: {k} class means from {len(train)} feature vectors, scale {scale:g}", 1, 1)
        ctx.log_epoch(HistoryRow(strategy=self.name, epoch=1, **val_row(ctx, probs), best=True,
                                 epoch_time_s=seconds, extra={"scale": scale}))
        return TrainedModel(module=prototype_module(ctx.module, mean, prototypes, scale), task="classify",
                            labels=list(ctx.labels), best_epoch=1, timings={"feature_seconds": seconds},
                            extra={"scale": scale, "views": views})
