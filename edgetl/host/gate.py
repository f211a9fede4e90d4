"""The accuracy gate: is the exported (maybe quantized) model as good as the FP32 torch model?

Run on the run's validation set through the exported model's own runtime and
the shared preprocessing. Pass = the task metric drops by at most ``gate``
points (accuracy for classification, AUROC for anomaly scores) *and* the top-1
decisions agree with the FP32 model on at least ``min_agreement`` of the
images. Agreement catches what an aggregate metric hides: a model that flips
as many right answers to wrong as wrong to right keeps its accuracy but is not
the model that was validated. Both figures come with n and a Wilson 95 %
interval; under 200 images the interval is wide, and the report says so.

Boundary cases are decided by rule, not by luck: an image whose FP32 output
sits within :data:`edgetl.metrics.TIE_MARGIN` (1e-4) of the decision boundary
is a tie. If the exported model decides it the other way, that is not a flip
(it keeps the reference's decision for the metric, and ``ties`` counts it).
Every other changed decision is a flip. Agreement is a count: with ``n``
images the gate needs ``ceil(min_agreement * n)`` of them unflipped, so below
``1 / (1 - min_agreement)`` images (50 at 0.98) a single real flip fails.

The figures also carry each class's recall under both models (``recall``),
reported and not gated: an INT8 model can keep the accuracy and the agreement
bound while the few changed decisions all land on one rare class (on ELPV,
the p067 grade), and a class with a handful of validation images cannot be
bounded without failing on noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.metrics import (
    TIE_MARGIN,
    binary_auc,
    confusion_matrix,
    decide,
    flips,
    is_scores,
    score_classes,
    wilson_interval,
)

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


def task_metric(outputs: np.ndarray, y: np.ndarray, task: str, labels: list[str], threshold: float | None,
                positive: str | None, decided: np.ndarray | None = None) -> tuple[str, float, list[float]]:
    """(name, value, 95 % interval): accuracy (Wilson) for classify, AUROC for anomaly scores.

    ``decided``: the decisions to score (default: :func:`edgetl.metrics.decide` of ``outputs``).
    """
    if task == "anomaly" and is_scores(outputs):
        value = binary_auc(y == score_classes(labels, positive)[0], outputs.reshape(-1))
        if value is not None:
            return "roc_auc", value, [float("nan"), float("nan")]
    decided = decide(outputs, labels, threshold, positive) if decided is None else decided
    correct = int((decided == y).sum())
    return "accuracy", correct / max(1, len(y)), list(wilson_interval(correct, len(y)))


def gate(exported: np.ndarray, reference: np.ndarray, y: np.ndarray, *, task: str, labels: list[str],
         threshold: float | None, positive: str | None, max_drop_points: float,
         min_agreement: float, tie_margin: float = TIE_MARGIN) -> dict[str, Any]:
    """Compare exported outputs with the FP32 torch outputs (one row per image) on labels ``y``.

    A changed decision counts against agreement (and the exported metric)
    only if the reference's margin to the decision boundary exceeds
    ``tie_margin`` (:func:`edgetl.metrics.flips`); ties are reported.

    Returns:
        ``{passed, reason, n, metric, reference_metric, exported_metric,
        exported_metric_ci95, drop_points, agreement, agreement_ci95,
        ties, tie_margin, max_abs_diff, recall, warning}`` (``recall``: per
        class, :func:`class_recall`; None for anomaly scores).
    """
    n = len(y)
    real, tie = flips(exported, reference, labels, threshold, positive, tie_margin)
    same = n - int(real.sum())
    # a tie takes the reference's decision, so it costs neither agreement nor accuracy
    ref_decided = decide(reference, labels, threshold, positive)
    decided = np.where(tie, ref_decided, decide(exported, labels, threshold, positive))
    name, ref_value, _ = task_metric(reference, y, task, labels, threshold, positive, ref_decided)
    _, exp_value, exp_ci = task_metric(exported, y, task, labels, threshold, positive, decided)
    agreement = same / max(1, n)
    drop = (ref_value - exp_value) * 100.0
    diff = float(np.max(np.abs(exported - reference))) if n else 0.0
    recall = class_recall(ref_decided, decided, y, labels) if name == "accuracy" else None
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
        "ties": int(tie.sum()), "tie_margin": tie_margin, "max_abs_diff": diff, "recall": recall,
        "warning": (f"only {n} validation images: the 95 % intervals are wide (want >= {SMALL_N})"
                    if n < SMALL_N else None),
    }


def class_recall(reference: np.ndarray, exported: np.ndarray, y: np.ndarray,
                 labels: list[str]) -> dict[str, dict[str, Any]]:
    """``{label: {n, reference, exported}}``: each class's recall under the two models' decisions (class
    indices), for the classes present in ``y``."""
    ref, exp = (np.diag(confusion_matrix(y, d, len(labels))) for d in (reference, exported))
    n = np.bincount(np.asarray(y, dtype=int), minlength=len(labels))
    return {label: {"n": int(n[i]), "reference": float(ref[i] / n[i]), "exported": float(exp[i] / n[i])}
            for i, label in enumerate(labels) if n[i]}


def recall_losses(recall: dict[str, dict[str, Any]] | None) -> str:
    """The classes the exported model recalls less often than FP32, as one line ("" when none)."""
    return ", ".join(f"{label} {r['reference']:.2f} -> {r['exported']:.2f} (n={r['n']})"
                     for label, r in (recall or {}).items() if r["exported"] < r["reference"])


SLICE_KEYS = ("n", "passed", "reason", "metric", "reference_metric", "exported_metric", "exported_metric_ci95",
              "drop_points", "agreement", "agreement_ci95", "ties", "warning")


def gate_slices(exported: np.ndarray, reference: np.ndarray, y: np.ndarray, slices: dict[str, Any],
                **rules: Any) -> dict[str, list[dict[str, Any]]]:
    """The gate's own rules on every slice: ``{attribute: [{slice, n, passed, reason, …}]}``.

    ``slices`` maps an attribute name to each image's value (one per row of
    ``exported``); ``rules`` are :func:`gate`'s keyword arguments. Each
    slice is gated exactly like the whole set — same drop budget, same
    agreement bound, same tie rule — so a slice with fewer than
    ``1 / (1 - min_agreement)`` images fails on a single real flip, and one
    under :data:`SMALL_N` images carries the gate's width warning.
    """
    out = {}
    for name, values in slices.items():
        values = np.asarray(values, dtype=object)
        rows = []
        for value in sorted(set(values.tolist()), key=str):
            mine = values == value
            figures = gate(exported[mine], reference[mine], y[mine], **rules)
            rows.append({"slice": str(value), **{k: figures[k] for k in SLICE_KEYS}})
        out[name] = rows
    return out


def with_slices(figures: dict[str, Any], per_slice: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The whole-set ``figures`` plus ``slices``; a failing slice fails the attempt, named in ``reason``."""
    failing = [f"slice {name}={r['slice']} (n={r['n']}): {r['reason']}"
               for name, rows in per_slice.items() for r in rows if not r["passed"]]
    figures = {**figures, "slices": per_slice}
    if failing:
        figures["passed"] = False
        figures["reason"] = "; ".join([figures["reason"], *failing] if figures["reason"] else failing)
    return figures
