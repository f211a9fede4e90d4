"""``patchcore`` and ``padim``: anomaly detection learned from good images only.

Neither trains a weight: both run the frozen backbone once over the good
training images, keep statistics of their patch features (PatchCore a
coreset memory bank, PaDiM a Gaussian per position), then score the
validation images to choose the threshold and normalise the outputs so 0.5
is that threshold.

Common options:
    stages: indices of ``Backbone.feature_maps`` to use, shallow to deep
        (default [2, 3]: strides 8 and 16 on EfficientNet and ResNet).
    sigma: Gaussian smoothing of the anomaly map, in input pixels (default 4).
    threshold: ``auto`` (F1-optimal on val when val has anomalous images,
        else a percentile of the good val scores), ``f1`` or ``percentile``.
    percentile: for ``percentile``: the percentile of good val scores (99).
    batch_size: images per backbone pass (32).
    border: input pixels along each edge left out of the image score (0;
        the map keeps them), for cameras whose frame edge is not part of
        the inspected surface.

patchcore options:
    coreset_ratio: share of training patches kept in the memory bank
        (default 0.01; the paper shows 1 % losing little against 10 %, and
        the search cost on the device is proportional to the bank size).
    max_bank: an upper bound on bank rows, or null.
    neighbours: ``b`` of the paper's reweighting (9).
    projection_dim: random-projection width used by coreset selection (128).
    chunk: bank rows per matrix product at inference (4096; bounds memory).

padim options:
    channels: size of the random channel subset (100).
    epsilon: ridge added to each covariance (0.01).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError, DataError
from edgetl.training import DefaultOptions, positive_float, resolve_options

if TYPE_CHECKING:  # numpy loads in the functions: registering the plugin imports no numpy
    import numpy as np

COMMON = {"stages": [2, 3], "sigma": 4.0, "threshold": "auto", "percentile": 99.0, "batch_size": 32, "border": 0}
LABELS = ["good", "anomaly"]


def is_anomalous(ctx: FitContext, labels: np.ndarray) -> np.ndarray:
    """True for every image whose class is not ``good`` (the first class when there is no ``good``)."""
    import numpy as np
    good = ctx.labels.index("good") if "good" in ctx.labels else 0
    return np.asarray(labels) != good


def run_batches(ctx: FitContext, split: Any, fn: Any, batch_size: int, stage: str) -> list[Any]:
    """``fn(x)`` under no_grad for each batch of the split's un-augmented images, results on the CPU."""
    import torch

    from edgetl.training import batches

    out, done = [], 0
    with torch.no_grad():
        for x, _ in batches(ctx, split.plain, batch_size):
            result = fn(x)
            out.append(tuple(r.cpu() for r in result) if isinstance(result, tuple) else result.cpu())
            done += len(x)
            ctx.progress(stage, done, len(split))
    return out


def choose_threshold(name: str, rule: str, percentile: float, scores: np.ndarray,
                     anomalous: np.ndarray) -> tuple[float, str]:
    """(raw threshold, rule used) from validation scores; ``auto`` picks F1 when val has both kinds."""
    from edgetl.anomaly_metrics import f1_threshold, percentile_threshold  # numpy: not at registration

    if rule not in ("auto", "f1", "percentile"):
        raise ConfigError(f"strategy.options.threshold: expected auto, f1 or percentile, got {rule!r} ({name})")
    both = bool(anomalous.any() and (~anomalous).any())
    if rule == "f1" and not both:
        raise DataError(f"strategy {name}: threshold f1 needs good and anomalous images in data.val "
                        f"(found {int((~anomalous).sum())} good, {int(anomalous.sum())} anomalous); "
                        "use threshold: percentile")
    if rule == "f1" or (rule == "auto" and both):
        return f1_threshold(anomalous, scores), "f1"
    if not (0 < percentile <= 100):
        raise ConfigError(f"strategy.options.percentile: expected 0 < p <= 100, got {percentile!r} ({name})")
    return percentile_threshold(scores[~anomalous], percentile), f"percentile {percentile:g}"


def calibrate(ctx: FitContext, name: str, model: Any, opts: dict[str, Any]) -> dict[str, Any]:
    """Score ``ctx.val`` with the raw model, set both normalisers; returns facts for the run."""
    import numpy as np
    results = run_batches(ctx, ctx.val, model.raw, int(opts["batch_size"]), "features val")
    scores = np.concatenate([r[0].numpy() for r in results]).astype(np.float64)
    peaks = np.concatenate([r[1].flatten(1).max(dim=1).values.numpy() for r in results]).astype(np.float64)
    anomalous = is_anomalous(ctx, ctx.val.labels)
    facts: dict[str, Any] = {}
    for key, values, norm in (("image", scores, model.image_norm), ("pixel", peaks, model.pixel_norm)):
        threshold, rule = choose_threshold(name, opts["threshold"], float(opts["percentile"]), values, anomalous)
        scale = float(np.std(values)) or 1.0
        norm.set(threshold, scale)
        facts[f"{key}_threshold_raw"], facts[f"{key}_scale"], facts["threshold_rule"] = threshold, scale, rule
    ctx.progress(f"{name}: threshold ({facts['threshold_rule']}) on {len(scores)} val images "
                 f"({int(anomalous.sum())} anomalous): raw score {facts['image_threshold_raw']:.4g} -> 0.5", 0, 0)
    return facts


class _AnomalyStrategy(DefaultOptions, Strategy):
    task = "anomaly"
    requires = ("torch",)
    extra = "train"
    DEFAULTS: dict[str, Any] = COMMON

    def options(self, ctx: FitContext) -> dict[str, Any]:
        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        opts["sigma"] = float(opts["sigma"]) if float(opts["sigma"]) == 0 else positive_float(
            self.name, "sigma", opts["sigma"])
        for key in ("batch_size", "border"):
            low = 1 if key == "batch_size" else 0
            if not isinstance(opts[key], int) or isinstance(opts[key], bool) or opts[key] < low:
                raise ConfigError(f"strategy.options.{key}: expected an integer >= {low}, got {opts[key]!r} "
                                  f"({self.name})")
        return opts

    def train_features(self, ctx: FitContext, opts: dict[str, Any]) -> tuple[Any, Any, tuple[int, int]]:
        """(PatchFeatures, train features (N, D, h, w), input size) over the good training images."""
        import torch

        from edgetl_builtins.anomaly.host.features import PatchFeatures, check_stages

        first = ctx.train.plain[0][0]
        size = (int(first.shape[-2]), int(first.shape[-1]))
        stages = check_stages(ctx.backbone, ctx.module, opts["stages"], size)
        features = PatchFeatures(ctx.backbone, ctx.module, stages).to(ctx.device)
        anomalous = is_anomalous(ctx, ctx.train.labels)
        if anomalous.any():
            raise DataError(f"strategy {self.name}: data.train must hold good images only; "
                            f"{int(anomalous.sum())} of {len(anomalous)} are anomalous")
        feats = torch.cat(run_batches(ctx, ctx.train, features, int(opts["batch_size"]), "features train"))
        return features, feats, size

    def trained(self, model: Any, facts: dict[str, Any]) -> TrainedModel:
        from edgetl.anomaly_metrics import THRESHOLD

        return TrainedModel(module=model.eval(), task="anomaly", labels=list(LABELS), threshold=THRESHOLD,
                            output="anomaly_score", positive="anomaly", extra=facts)


class PatchCore(_AnomalyStrategy):
    name = "patchcore"
    description = "PatchCore: coreset memory bank of good patches, nearest-neighbour distance (good images only)"
    DEFAULTS = {**COMMON, "coreset_ratio": 0.01, "max_bank": None, "neighbours": 9, "projection_dim": 128,
                "chunk": 4096}

    def fit(self, ctx: FitContext) -> TrainedModel:
        import time

        from edgetl_builtins.anomaly.host.models import PatchCoreModel
        from edgetl_builtins.anomaly.host.search import greedy_coreset, k_nearest

        opts = self.options(ctx)
        ratio = positive_float(self.name, "coreset_ratio", opts["coreset_ratio"], upper=1.0)
        features, feats, size = self.train_features(ctx, opts)
        patches = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]).contiguous()
        n_keep = max(1, int(round(ratio * len(patches))))
        if opts["max_bank"] is not None:
            n_keep = min(n_keep, int(opts["max_bank"]))
        t0 = time.perf_counter()
        chosen = greedy_coreset(patches, n_keep, seed=int(ctx.config.train.seed),
                                projection_dim=int(opts["projection_dim"]),
                                progress=lambda done, total: ctx.progress(
                                    f"  patchcore: coreset of {len(patches)} patches, rows chosen", done, total))
        bank = patches[chosen]
        support = k_nearest(bank, bank, int(opts["neighbours"]))
        coreset_s = time.perf_counter() - t0
        ctx.progress(f"patchcore: memory bank {len(bank)} of {len(patches)} patches ({ratio:g}), "
                     f"{bank.shape[1]} dims, coreset {coreset_s:.1f} s", 0, 0)
        model = PatchCoreModel(features, bank, support, size, sigma=opts["sigma"], chunk=int(opts["chunk"]),
                               border=opts["border"]).to(ctx.device).eval()
        facts = calibrate(ctx, self.name, model, opts)
        facts.update(bank_size=int(len(bank)), train_patches=int(len(patches)), feature_dim=int(bank.shape[1]),
                     coreset_seconds=coreset_s)
        return self.trained(model, facts)


class Padim(_AnomalyStrategy):
    name = "padim"
    description = "PaDiM: a Gaussian of good patch features per position, Mahalanobis distance (good images only)"
    DEFAULTS = {**COMMON, "channels": 100, "epsilon": 0.01}

    def fit(self, ctx: FitContext) -> TrainedModel:
        import torch

        from edgetl_builtins.anomaly.host.models import PadimModel

        opts = self.options(ctx)
        eps = positive_float(self.name, "epsilon", opts["epsilon"])
        features, feats, size = self.train_features(ctx, opts)
        n, dim, h, w = feats.shape
        if n < 2:
            raise DataError(f"strategy {self.name}: needs at least 2 good training images, got {n}")
        keep = min(int(opts["channels"]), dim)
        gen = torch.Generator().manual_seed(int(ctx.config.train.seed))
        channels = torch.randperm(dim, generator=gen)[:keep].sort().values
        x = feats.index_select(1, channels).flatten(2).permute(2, 0, 1).double()        # (P, N, d)
        mean = x.mean(dim=1)
        centred = x - mean.unsqueeze(1)
        cov = centred.transpose(1, 2) @ centred / (n - 1) + eps * torch.eye(keep, dtype=torch.float64)
        inv_cov = torch.linalg.inv(cov)
        model = PadimModel(features, channels, mean.float(), inv_cov.float(), size, sigma=opts["sigma"],
                           border=opts["border"]).to(ctx.device).eval()
        ctx.progress(f"padim: {keep} of {dim} channels, {h * w} positions", 0, 0)
        facts = calibrate(ctx, self.name, model, opts)
        facts.update(channels=keep, feature_dim=dim, positions=h * w)
        return self.trained(model, facts)
