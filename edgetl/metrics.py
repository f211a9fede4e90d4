"""Classification metrics and the operating point, in numpy only (no torch, no sklearn).

The host's ``edgetl eval``, the export gate and the device agent all compute the
same evaluation document from (labels, probabilities), so it lives here, light
enough for a device that has neither torch nor scikit-learn.

The document (``edgetl eval --json``, docs/schemas/eval.schema.json)::

    {accuracy, balanced_accuracy, per_class: {label: {precision, recall, f1, support}},
     confusion_matrix, labels, roc_auc, threshold, recall_at_threshold,
     false_reject_rate, n}

Every figure is a fraction in [0, 1]. ``confusion_matrix[i][j]`` counts images
of true class ``labels[i]`` predicted as ``labels[j]``.

The decision rule (one for ``eval``, the export gate, the device's reference
check and every predictor): a stored ``threshold`` applies to the ``positive``
class (e.g. ``defect``): an image is that class when its probability is at
least the threshold, otherwise the most probable of the other classes. Without
a threshold the decision is the argmax. Anomaly scores (one normalised score
per image) are anomalous at or above the threshold, :data:`ANOMALY_THRESHOLD`
(0.5) unless one is stored.

Class-prior (logit) adjustment (``train.threshold.policy: balanced``; Menon et
al., "Long-tail learning via logit adjustment", ICLR 2021) is not a second rule:
the run's model gets a fixed last step that multiplies each class's probability
by ``prior_c ** -tau`` and renormalises (:func:`adjust`), so its outputs, the
bundle's and the device's, are the adjusted probabilities and the argmax above
decides on them. :func:`tune_adjustment` picks ``tau`` on validation data.

Ties: an image whose reference output lies within :data:`TIE_MARGIN` of the
decision boundary (:func:`decision_margin`) has no meaningful decision: two
runtimes that agree to 1e-6 may still land on different sides. Comparisons
between two models (the gate's agreement, the reference check) do not count
such an image as a disagreement (:func:`flips`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ANOMALY_THRESHOLD", "TIE_MARGIN", "ADJUST_TAUS", "decide", "decision_margin", "flips",
    "binary_auc", "roc_auc", "roc_curve", "confusion_matrix", "evaluate", "pick_threshold",
    "tune_adjustment", "adjust", "adjustment_offsets", "wilson_interval",
]


DEFECT_NAMES = ("defect", "anomaly", "bad", "ng", "reject")
ANOMALY_THRESHOLD = 0.5
"""Decision threshold of a normalised anomaly score when none is stored: anomalous at or above it."""
TIE_MARGIN = 1e-4
"""Distance to the decision boundary (in probability or score units) under which a decision is a tie.

FP32 runtimes differ from torch by about 1e-6 on probabilities; 1e-4 leaves
two orders of magnitude of headroom and is still far below any margin a model
is trusted on.
"""


def positive_index(labels: Sequence[str], positive: str | None) -> int | None:
    """Index of the class whose recall is reported: the stored one, else a defect-like name."""
    if positive is not None:
        return list(labels).index(positive) if positive in labels else None
    for name in DEFECT_NAMES:
        if name in labels:
            return list(labels).index(name)
    return None


def is_scores(outputs: np.ndarray) -> bool:
    """Whether ``outputs`` are anomaly scores, (N,) or (N, 1), rather than (N, K) probabilities."""
    return outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1)


def score_classes(labels: Sequence[str], positive: str | None) -> tuple[int, int]:
    """(anomalous, normal) class indices for anomaly scores: ``positive`` if it is a label, else index 1."""
    hi = list(labels).index(positive) if positive in labels else 1
    return hi, 1 if hi == 0 else 0


def decide(probs: np.ndarray, labels: Sequence[str], threshold: float | None = None,
           positive: str | None = None) -> np.ndarray:
    """Predicted class indices (N,) under the operating point (the module docstring's rule).

    Args:
        probs: (N, K) probabilities, or (N,) / (N, 1) normalised anomaly scores.
        labels: class names in output order.
        threshold: the stored operating point, or None (argmax; anomaly: 0.5).
        positive: the class the threshold applies to.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if is_scores(probs):
        hi, lo = score_classes(labels, positive)
        cut = ANOMALY_THRESHOLD if threshold is None else threshold
        return np.where(probs.reshape(-1) >= cut, hi, lo).astype(np.int64)
    pred = probs.argmax(axis=1)
    pos = positive_index(labels, positive) if positive is not None else None
    if threshold is None or pos is None:
        return pred
    others = probs.copy()
    others[:, pos] = -np.inf
    fallback = others.argmax(axis=1) if probs.shape[1] > 1 else np.zeros(len(probs), dtype=int)
    return np.where(probs[:, pos] >= threshold, pos, fallback)


def _gap(probs: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 per row (inf with one column)."""
    if probs.shape[1] < 2:
        return np.full(len(probs), np.inf)
    top = np.sort(probs, axis=1)
    return top[:, -1] - top[:, -2]


def decision_margin(probs: np.ndarray, labels: Sequence[str], threshold: float | None = None,
                    positive: str | None = None) -> np.ndarray:
    """How far each row's output must move to change its :func:`decide` decision (N,), >= 0.

    Argmax: top-1 minus top-2 probability. Threshold on ``positive``: the
    distance of its probability to the threshold, and, when the other classes
    decide, also their own top-1 minus top-2. Anomaly scores: the distance to
    the threshold. An output moved by at most ``d`` per element changes a
    decision only where the margin is at most ``2 d``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if is_scores(probs):
        cut = ANOMALY_THRESHOLD if threshold is None else threshold
        return np.abs(probs.reshape(-1) - cut)
    pos = positive_index(labels, positive) if positive is not None else None
    if threshold is None or pos is None:
        return _gap(probs)
    to_threshold = np.abs(probs[:, pos] - threshold)
    others = _gap(np.delete(probs, pos, axis=1))
    return np.where(probs[:, pos] >= threshold, to_threshold, np.minimum(to_threshold, others))


def flips(outputs: np.ndarray, reference: np.ndarray, labels: Sequence[str], threshold: float | None = None,
          positive: str | None = None, tie_margin: float = TIE_MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose decision differs from the reference's: (real flips, ties), two (N,) bool masks.

    A differing row is a *tie*, not a flip, when the reference's own
    :func:`decision_margin` is at most ``tie_margin``: its decision sat on the
    boundary, and which side a runtime's rounding puts it on says nothing
    about the model.
    """
    differ = (decide(outputs, labels, threshold, positive) != decide(reference, labels, threshold, positive))
    tie = differ & (decision_margin(reference, labels, threshold, positive) <= tie_margin)
    return differ & ~tie, tie


def pick_threshold(y_true: np.ndarray, probs: np.ndarray, pos: int, target_recall: float) -> float:
    """The highest threshold on ``probs[:, pos]`` whose recall of class ``pos`` is >= target.

    Highest, because among the thresholds that catch enough defects it rejects
    the fewest good parts. Chosen on validation data only.

    Args:
        y_true: (N,) int true class indices.
        probs: (N, K) probabilities.
        pos: the positive (defect) class index.
        target_recall: e.g. 0.99.

    Returns:
        A threshold in [0, 1]; 0.0 when the class has no validation samples.
    """
    y_true = np.asarray(y_true)
    scores = np.sort(np.asarray(probs, dtype=np.float64)[y_true == pos, pos])[::-1]
    if scores.size == 0:
        return 0.0
    need = int(np.ceil(target_recall * scores.size - 1e-9))
    need = min(max(need, 1), scores.size)
    return float(scores[need - 1])


ADJUST_TAUS = tuple(round(0.1 * i, 1) for i in range(21))
"""The ``tau`` grid :func:`tune_adjustment` searches by default: 0 (argmax) to 2 in steps of 0.1."""


def adjustment_offsets(prior: Sequence[float] | np.ndarray, tau: float) -> np.ndarray:
    """Per-class log offsets ``-tau * log(prior)`` (K,): rare classes are raised, common ones lowered.

    ``tau = 1`` makes the argmax the Bayes decision for balanced accuracy when
    the probabilities are calibrated (Menon et al., 2021); 0 leaves the argmax.
    """
    prior = np.asarray(prior, dtype=np.float64)
    if prior.ndim != 1 or not np.all(prior > 0):
        raise ValueError(f"prior: expected positive class frequencies, got {prior.tolist()}")
    return -float(tau) * np.log(prior / prior.sum())


def adjust(probs: np.ndarray, offsets: Sequence[float] | np.ndarray) -> np.ndarray:
    """``probs`` (N, K) times ``exp(offsets)`` per class, renormalised: softmax(log p + offsets)."""
    probs = np.asarray(probs, dtype=np.float64)
    w = np.exp(np.asarray(offsets, dtype=np.float64) - np.max(offsets))
    q = probs * w[None, :]
    return q / np.clip(q.sum(axis=1, keepdims=True), 1e-300, None)


def tune_adjustment(y_true: np.ndarray, probs: np.ndarray, prior: Sequence[float] | np.ndarray,
                    taus: Sequence[float] = ADJUST_TAUS, max_accuracy_drop: float = 0.02,
                    min_recall: float | None = None) -> tuple[float, list[dict[str, Any]]]:
    """The ``tau`` of :func:`adjustment_offsets` for ``probs`` (validation data), and the curve it chose on.

    The one with the highest balanced accuracy (the smallest tau on ties)
    among the taus whose accuracy is at most ``max_accuracy_drop`` below the
    argmax's (tau 0). With ``min_recall``, only taus where every class
    present reaches that recall compete, the floor going first: when none of
    them is within the accuracy bound, the most accurate of them is taken;
    when no tau reaches the floor, it is dropped (the curve says so:
    ``meets_min_recall``).

    Returns:
        (tau, curve): one dict per tau with ``tau``, ``accuracy``,
        ``balanced_accuracy``, ``recall`` (per class index present) and
        ``meets_min_recall``.
    """
    y_true = np.asarray(y_true, dtype=int)
    labels = [str(i) for i in range(np.asarray(probs).shape[1])]
    base = evaluate(y_true, probs, labels)["accuracy"]
    curve = []
    for tau in sorted({0.0, *map(float, taus)}):
        doc = evaluate(y_true, adjust(probs, adjustment_offsets(prior, tau)), labels)
        recall = {int(k): v["recall"] for k, v in doc["per_class"].items() if v["support"]}
        curve.append({"tau": tau, "accuracy": doc["accuracy"], "balanced_accuracy": doc["balanced_accuracy"],
                      "recall": recall,
                      "meets_min_recall": min_recall is None or min(recall.values()) >= min_recall - 1e-12})
    floor = [c for c in curve if c["meets_min_recall"]] or curve
    ok = [c for c in floor if c["accuracy"] >= base - max_accuracy_drop - 1e-12]
    if not ok:
        top = max(c["accuracy"] for c in floor)
        ok = [c for c in floor if c["accuracy"] == top]
    best = max(ok, key=lambda c: (round(c["balanced_accuracy"], 12), -c["tau"]))
    return best["tau"], curve


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def binary_auc(is_pos: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve via the rank-sum (Mann-Whitney U) formula; ties count half."""
    is_pos = np.asarray(is_pos, dtype=bool)
    n_pos, n_neg = int(is_pos.sum()), int((~is_pos).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = score[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[is_pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, probs: np.ndarray, pos: int | None = None) -> float | None:
    """Binary: AUC of the positive class (index ``pos``, else 1). Multi-class: macro one-vs-rest.

    Returns None when it is undefined (a class has no samples).
    """
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    k = probs.shape[1]
    if k == 2:
        p = 1 if pos is None else pos
        return binary_auc(y_true == p, probs[:, p])
    aucs = [binary_auc(y_true == c, probs[:, c]) for c in range(k)]
    if any(a is None for a in aucs):
        return None
    return float(np.mean(aucs))


def roc_curve(is_pos: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at every distinct threshold, for plots."""
    is_pos = np.asarray(is_pos, dtype=bool)
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="mergesort")
    tp = np.concatenate([[0], np.cumsum(is_pos[order])])
    fp = np.concatenate([[0], np.cumsum(~is_pos[order])])
    return fp / max(fp[-1], 1), tp / max(tp[-1], 1)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def evaluate(y_true: Sequence[int] | np.ndarray, probs: np.ndarray, labels: Sequence[str],
             threshold: float | None = None, positive: str | None = None) -> dict[str, Any]:
    """The evaluation document (``eval --json``) for true indices (N,) and probabilities (N, K).

    ``recall_at_threshold`` is the recall of the positive class under the
    operating decision and ``false_reject_rate`` the fraction of the other
    classes' images predicted as the positive class (good parts rejected).
    Both are None when there is no positive class (e.g. ELPV's four classes
    with the argmax policy). ``balanced_accuracy`` averages recall over the
    classes present in ``y_true``.
    """
    labels = list(labels)
    y_true = np.asarray(y_true, dtype=int)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(labels)
    if probs.ndim != 2 or probs.shape[1] != k or len(probs) != len(y_true):
        raise ValueError(f"expected probabilities of shape ({len(y_true)}, {k}), got {probs.shape}")
    pred = decide(probs, labels, threshold, positive)
    cm = confusion_matrix(y_true, pred, k)
    n = int(len(y_true))
    per_class: dict[str, dict[str, float | int]] = {}
    recalls = []
    for i, name in enumerate(labels):
        tp, support, predicted = cm[i, i], cm[i].sum(), cm[:, i].sum()
        precision, recall = _ratio(tp, predicted), _ratio(tp, support)
        f1 = _ratio(2 * precision * recall, precision + recall)
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(support)}
        if support:
            recalls.append(recall)
    pos = positive_index(labels, positive)
    recall_at, frr = None, None
    if pos is not None and n:
        is_pos = y_true == pos
        recall_at = _ratio(int(((pred == pos) & is_pos).sum()), int(is_pos.sum()))
        frr = _ratio(int(((pred == pos) & ~is_pos).sum()), int((~is_pos).sum()))
    return {
        "accuracy": _ratio(np.trace(cm), n),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": labels,
        "roc_auc": roc_auc(y_true, probs, pos) if n else None,
        "threshold": None if threshold is None else float(threshold),
        "recall_at_threshold": recall_at,
        "false_reject_rate": frr,
        "n": n,
    }


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (accuracy over ``n`` images)."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if correct == 0 else float(max(0.0, centre - half))  # exact at the ends, not 1 - 1e-16
    high = 1.0 if correct == n else float(min(1.0, centre + half))
    return (low, high)
