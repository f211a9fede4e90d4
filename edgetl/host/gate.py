"""The accuracy gate: is the exported (maybe quantized) model as good as the FP32 torch model?

Run on the run's validation set through the exported model's own runtime and
the shared preprocessing. Pass = the task metric drops by at most ``gate``
points (accuracy for classification, AUROC for anomaly scores) *and* the top-1
decisions agree with the FP32 model on at least ``min_agreement`` of the
images. Agreement catches what an aggregate metric hides: a model that flips
as many right answers to wrong as wrong to right keeps its accuracy but is not
the model that was validated. Both figures come with n and a Wilson 95 %
interval; under 200 images the interval is wide, and the report says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.metrics import wilson_interval

SMALL_N = 200


def per_image(outputs: np.ndarray, owner: np.ndarray, n: int, labels: list[str] | None = None,
              positive: str | None = None) -> np.ndarray:
    """Tile rows -> one row per image, aggregated exactly as ``edgetl predict`` does (identity without tiling)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if len(outputs) == n:
        return outputs
    from edgetl.predictor import aggregate_tiles

    rows = [aggregate_tiles(outputs[owner == i], list(labels or []), positive) for i in range(n)]
    return np.stack(rows).reshape(n, -1) if outputs.ndim > 1 else np.concatenate(rows)


def decisions(outputs: np.ndarray, labels: list[str], threshold: float | None, positive: str | None) -> np.ndarray:
    """Class index per image under the operating point (stored threshold on ``positive``, else argmax)."""
    if outputs.ndim == 1:  # anomaly scores, 0.5 = threshold: 1 = anomalous
        return (outputs >= 0.5).astype(np.int64)
    pred = outputs.argmax(axis=1)
    if threshold is None or positive not in labels:
        return pred
    pos = labels.index(positive)
    others = outputs.copy()
    others[:, pos] = -np.inf
    return np.where(outputs[:, pos] >= threshold, pos, others.argmax(axis=1))


def auroc(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with tie correction); None with one class only."""
    pos, neg = score[is_pos], score[~is_pos]
    if len(pos) == 0 or len(neg) == 0:
        return None
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks of ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def task_metric(outputs: np.ndarray, y: np.ndarray, task: str, labels: list[str], threshold: float | None,
                positive: str | None) -> tuple[str, float, list[float]]:
    """(name, value, 95 % interval): accuracy (Wilson) for classify, AUROC for anomaly scores."""
    if task == "anomaly" and outputs.ndim == 1:
        pos = labels.index(positive) if positive in labels else 1
        value = auroc(y == pos, outputs)
        if value is not None:
            return "roc_auc", value, [float("nan"), float("nan")]
    correct = int((decisions(outputs, labels, threshold, positive) == y).sum())
    return "accuracy", correct / max(1, len(y)), list(wilson_interval(correct, len(y)))


def gate(exported: np.ndarray, reference: np.ndarray, y: np.ndarray, *, task: str, labels: list[str],
         threshold: float | None, positive: str | None, max_drop_points: float,
         min_agreement: float) -> dict[str, Any]:
    """Compare exported outputs with the FP32 torch outputs (one row per image) on labels ``y``.

    Returns:
        ``{passed, reason, n, metric, reference_metric, exported_metric,
        exported_metric_ci95, drop_points, agreement, agreement_ci95,
        max_abs_diff, warning}``.
    """
    n = len(y)
    name, ref_value, _ = task_metric(reference, y, task, labels, threshold, positive)
    _, exp_value, exp_ci = task_metric(exported, y, task, labels, threshold, positive)
    same = int((decisions(exported, labels, threshold, positive)
                == decisions(reference, labels, threshold, positive)).sum())
    agreement = same / max(1, n)
    drop = (ref_value - exp_value) * 100.0
    diff = float(np.max(np.abs(exported - reference))) if n else 0.0
    reasons = []
    if drop > max_drop_points + 1e-9:
        reasons.append(f"{name} drops {drop:.2f} points > {max_drop_points:g}")
    if agreement < min_agreement:
        reasons.append(f"top-1 agreement {same}/{n} = {agreement:.4f} < {min_agreement:g}")
    if not np.isfinite(exported).all():
        reasons.append("non-finite outputs")
    return {
        "passed": not reasons, "reason": "; ".join(reasons) or None, "n": n, "metric": name,
        "reference_metric": ref_value, "exported_metric": exp_value, "exported_metric_ci95": exp_ci,
        "drop_points": drop, "agreement": agreement, "agreement_ci95": list(wilson_interval(same, n)),
        "max_abs_diff": diff,
        "warning": (f"only {n} validation images: the 95 % intervals are wide (want >= {SMALL_N})"
                    if n < SMALL_N else None),
    }
