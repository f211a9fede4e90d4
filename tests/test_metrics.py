"""edgetl.metrics: the evaluation document, operating point and AUC, checked against scikit-learn."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from edgetl.metrics import decide, evaluate, pick_threshold, roc_auc, wilson_interval

SCHEMA = json.loads((Path(__file__).parents[1] / "docs/schemas/eval.schema.json").read_text())


def _probs(rng, y, k, signal=1.5):
    logits = rng.normal(0, 1, (len(y), k))
    logits[np.arange(len(y)), y] += signal
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_metrics_match_sklearn_multiclass():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    p = _probs(rng, y, 4)
    labels = ["p000", "p033", "p067", "p100"]
    doc = evaluate(y, p, labels)
    pred = p.argmax(1)
    assert doc["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert doc["balanced_accuracy"] == pytest.approx(sk.balanced_accuracy_score(y, pred))
    assert doc["confusion_matrix"] == sk.confusion_matrix(y, pred).tolist()
    prec, rec, f1, sup = sk.precision_recall_fscore_support(y, pred, zero_division=0)
    for i, name in enumerate(labels):
        assert doc["per_class"][name]["precision"] == pytest.approx(prec[i])
        assert doc["per_class"][name]["recall"] == pytest.approx(rec[i])
        assert doc["per_class"][name]["f1"] == pytest.approx(f1[i])
        assert doc["per_class"][name]["support"] == sup[i]
    assert doc["roc_auc"] == pytest.approx(sk.roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert doc["recall_at_threshold"] is None and doc["false_reject_rate"] is None
    assert doc["n"] == 300
    jsonschema.validate(doc, SCHEMA)


def test_binary_auc_with_ties_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    s = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.8, 0.3, 0.2])
    p = np.stack([1 - s, s], axis=1)
    assert roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, s))


def test_recall_threshold_reaches_target_on_its_data_and_rejects_fewest():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)  # labels: defect=0, good=1
    p = _probs(rng, y, 2, signal=1.0)
    for target in (0.9, 0.95, 0.99, 1.0):
        t = pick_threshold(y, p, 0, target)
        doc = evaluate(y, p, ["defect", "good"], threshold=t, positive="defect")
        assert doc["recall_at_threshold"] >= target
        # any higher threshold misses the target: t is the best operating point
        higher = evaluate(y, p, ["defect", "good"], threshold=np.nextafter(t, 1), positive="defect")
        assert higher["recall_at_threshold"] < target
        assert doc["false_reject_rate"] <= evaluate(y, p, ["defect", "good"], threshold=t / 2,
                                                    positive="defect")["false_reject_rate"]
        jsonschema.validate(doc, SCHEMA)


def test_decide_applies_threshold_to_positive_class_only():
    p = np.array([[0.3, 0.5, 0.2], [0.05, 0.9, 0.05], [0.6, 0.1, 0.3]])
    labels = ["defect", "good", "scratch"]
    assert decide(p, labels).tolist() == [1, 1, 0]
    assert decide(p, labels, threshold=0.25, positive="defect").tolist() == [0, 1, 0]
    assert decide(p, labels, threshold=0.7, positive="defect").tolist() == [1, 1, 2]


def test_false_reject_rate_counts_good_parts_flagged():
    y = np.array([0, 0, 1, 1, 1, 1])  # defect, defect, good x4
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9], [0.1, 0.9], [0.3, 0.7]])
    doc = evaluate(y, p, ["defect", "good"])
    assert doc["recall_at_threshold"] == pytest.approx(0.5)
    assert doc["false_reject_rate"] == pytest.approx(0.25)
    assert doc["threshold"] is None


def test_wilson_interval_contains_the_estimate():
    lo, hi = wilson_interval(513, 656)
    assert lo < 513 / 656 < hi and hi - lo == pytest.approx(0.063, abs=0.005)


def test_metrics_import_without_torch():
    code = "import sys, edgetl.metrics, edgetl.predictor; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
