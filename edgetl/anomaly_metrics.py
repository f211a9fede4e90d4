"""Anomaly-detection metrics and threshold selection, in numpy only (no torch, no sklearn).

Public: the strategies choose their threshold with :func:`f1_threshold` /
:func:`percentile_threshold`, and ``edgetl train``/``eval`` report
:func:`anomaly_document`. Scores are "higher = more anomalous"; labels are
``True`` for anomalous images (every class but ``good``).

- image AUROC: :func:`edgetl.metrics.binary_auc` over image scores;
- image F1 at the operating point (normalised score >= 0.5);
- pixel AUROC: the same over every pixel of every image that has a mask;
- PRO (per-region overlap, Bergmann et al., MVTec AD): for each threshold the
  mean, over connected defect regions, of the share of the region above it,
  integrated over the false-positive rate of defect-free pixels from 0 to 0.3
  and divided by 0.3 (1.0 is perfect).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.metrics import ANOMALY_THRESHOLD, binary_auc

__all__ = [
    "THRESHOLD", "PRO_FPR_LIMIT", "f1_threshold", "percentile_threshold", "f1_at", "pro_score",
    "pixel_auroc", "anomaly_document", "evaluate_anomaly",
]


THRESHOLD = ANOMALY_THRESHOLD  # the one constant (edgetl.metrics): a normalised score >= 0.5 is anomalous
PRO_FPR_LIMIT = 0.3
"""The false-positive-rate limit up to which :func:`pro_score` integrates (the usual 30 %)."""


def f1_threshold(is_anomalous: np.ndarray, scores: np.ndarray) -> float:
    """The raw-score threshold with the best F1 on (validation) images; midway between two scores.

    Returns:
        ``t`` such that ``score >= t`` is predicted anomalous.
    Raises:
        ValueError: no anomalous or no good image (F1 undefined).
    """
    y = np.asarray(is_anomalous, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():
        raise ValueError("F1 threshold needs both good and anomalous images")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    last = np.r_[s[1:] != s[:-1], True]  # cut only between distinct scores
    f1 = np.where(last, 2 * tp / (tp + fp + y.sum()), -1.0)
    k = int(np.argmax(f1))
    return float(s[k] if k + 1 == len(s) else (s[k] + s[k + 1]) / 2.0)


def percentile_threshold(good_scores: np.ndarray, percentile: float) -> float:
    """The ``percentile``-th percentile of good images' scores (e.g. 99: about 1 % of good parts rejected)."""
    good = np.asarray(good_scores, dtype=np.float64)
    if good.size == 0:
        raise ValueError("percentile threshold needs good validation images")
    return float(np.percentile(good, percentile))


def f1_at(is_anomalous: np.ndarray, predicted: np.ndarray) -> float:
    """F1 of the ``predicted`` (N,) bool decisions against the true ``is_anomalous`` (N,) bool labels."""
    y, p = np.asarray(is_anomalous, dtype=bool), np.asarray(predicted, dtype=bool)
    tp = int((y & p).sum())
    denom = int(p.sum()) + int(y.sum())
    return 2.0 * tp / denom if denom else 0.0


def pro_score(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], fpr_limit: float = PRO_FPR_LIMIT) -> float | None:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD); None without any defect region.

    Args:
        maps: per image (H, W) float anomaly maps.
        masks: per image (H, W) bool ground truth, same shapes.
    """
    import cv2

    scores, weights, normal = [], [], []
    n_regions = 0
    region_sizes: list[np.ndarray] = []
    for amap, mask in zip(maps, masks, strict=True):
        count, labels = cv2.connectedComponents(np.asarray(mask, dtype=np.uint8), connectivity=8)
        sizes = np.bincount(labels.ravel(), minlength=count).astype(np.float64)
        region_sizes.append(sizes)
        n_regions += count - 1
        scores.append(np.asarray(amap, dtype=np.float64).ravel())
        normal.append(labels.ravel() == 0)
        weights.append(np.where(labels.ravel() == 0, 0.0, 1.0 / sizes[labels.ravel()]))
    if n_regions == 0:
        return None
    s = np.concatenate(scores)
    is_normal = np.concatenate(normal)
    w = np.concatenate(weights) / n_regions
    if not is_normal.any():
        return None
    order = np.argsort(-s, kind="mergesort")
    s, is_normal, w = s[order], is_normal[order], w[order]
    last = np.r_[s[1:] != s[:-1], True]
    fpr = np.r_[0.0, (np.cumsum(is_normal) / is_normal.sum())[last]]
    pro = np.r_[0.0, np.cumsum(w)[last]]
    if fpr[-1] < fpr_limit:
        return float(np.trapezoid(pro, fpr) / fpr_limit)
    cut = int(np.searchsorted(fpr, fpr_limit, side="right"))
    pro_at = np.interp(fpr_limit, fpr[cut - 1:cut + 1], pro[cut - 1:cut + 1])
    return float(np.trapezoid(np.r_[pro[:cut], pro_at], np.r_[fpr[:cut], fpr_limit]) / fpr_limit)


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float | None:
    """AUROC over every pixel of the given maps (None when no pixel, or every pixel, is a defect)."""
    if not maps:
        return None
    s = np.concatenate([np.asarray(m, dtype=np.float32).ravel() for m in maps])
    y = np.concatenate([np.asarray(m, dtype=bool).ravel() for m in masks])
    return binary_auc(y, s)


def anomaly_document(is_anomalous: np.ndarray, scores: np.ndarray, maps: Sequence[np.ndarray] | None = None,
                     masks: Sequence[np.ndarray | None] | None = None) -> dict[str, Any]:
    """The anomaly evaluation document for normalised image scores (N,) and optional maps/masks.

    Pixel metrics use the images that have a mask (a good image without a
    mask file counts as all-good when at least one mask exists).

    Returns:
        ``{image_auroc, image_f1, pixel_auroc, pro, threshold, accuracy,
        recall_at_threshold, false_reject_rate, n, n_anomalous, n_masks}``;
        ``n_masks`` counts the anomalous images that have a mask.
    """
    y = np.asarray(is_anomalous, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    pred = s >= THRESHOLD
    doc: dict[str, Any] = {
        "image_auroc": binary_auc(y, s), "image_f1": f1_at(y, pred), "pixel_auroc": None, "pro": None,
        "threshold": THRESHOLD, "accuracy": float((pred == y).mean()) if len(y) else 0.0,
        "recall_at_threshold": float(pred[y].mean()) if y.any() else None,
        "false_reject_rate": float(pred[~y].mean()) if (~y).any() else None,
        "n": int(len(y)), "n_anomalous": int(y.sum()), "n_masks": 0,
    }
    if maps is None or masks is None or not any(m is not None for m in masks):
        return doc
    pairs = []
    for amap, mask, bad in zip(maps, masks, y, strict=True):
        amap = np.asarray(amap, dtype=np.float32).reshape(np.asarray(amap).shape[-2:])
        if mask is None:
            if bad:
                continue  # an anomalous image without a mask: its pixels are unknown
            mask = np.zeros(amap.shape, dtype=bool)
        pairs.append((amap, np.asarray(mask, dtype=bool)))
    doc["n_masks"] = sum(1 for m, bad in zip(masks, y, strict=True) if m is not None and bad)
    doc["pixel_auroc"] = pixel_auroc([p[0] for p in pairs], [p[1] for p in pairs])
    doc["pro"] = pro_score([p[0] for p in pairs], [p[1] for p in pairs])
    return doc


def evaluate_anomaly(predictor: Any, data_dir: str | Path, *, batch_size: int = 32,
                     progress: Any = None) -> dict[str, Any]:
    """``edgetl eval`` for anomaly models: score a good/defect folder (with masks if present).

    ``predictor`` is a run or bundle predictor with ``predict_outputs``
    (:mod:`edgetl.predictor`). Returns :func:`anomaly_document` plus ``labels``
    and ``per_class`` (image count and mean score of each folder).
    """
    from edgetl.data.anomaly import load_anomaly_split, read_mask
    from edgetl.preprocess import preprocess_file

    samples = load_anomaly_split(data_dir, what=str(data_dir))
    paths = [s.path for s in samples.items]
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        outs = predictor.predict_outputs(np.concatenate([preprocess_file(p, predictor.input) for p in chunk]))
        scores.append(np.asarray(outs["output"], dtype=np.float64).reshape(len(chunk), -1).max(axis=1))
        if "map" in outs:
            maps.extend(np.asarray(outs["map"], dtype=np.float32).reshape(len(chunk), *outs["map"].shape[-2:]))
        if progress is not None:
            progress(min(start + batch_size, len(paths)), len(paths))
    y = np.asarray(samples.labels, dtype=bool)
    s = np.concatenate(scores) if scores else np.zeros(0)
    masks = [read_mask(m, predictor.input, bool(a)) for m, a in zip(samples.masks, y, strict=True)]
    has_masks = maps and any(m is not None for m in samples.masks)
    doc = anomaly_document(y, s, maps if has_masks else None, masks if has_masks else None)
    kinds = sorted(set(samples.kinds))
    doc["labels"] = list(samples.classes)
    doc["per_class"] = {k: {"support": sum(1 for x in samples.kinds if x == k),
                            "mean_score": float(np.mean([v for v, x in zip(s, samples.kinds, strict=True) if x == k]))}
                        for k in kinds}
    return doc
