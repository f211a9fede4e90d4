"""The gate's arithmetic and the precision chain, without a model (fast)."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.api import FallbackStep
from edgetl.errors import UsageError
from edgetl.host.export import resolve_chain
from edgetl.host.gate import gate, wilson_interval
from edgetl.metrics import binary_auc as auroc

LABELS = ["defect", "good"]


def _probs(pred: list[int]) -> np.ndarray:
    out = np.full((len(pred), 2), 0.1)
    out[np.arange(len(pred)), pred] = 0.9
    return out


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson_interval(81, 100)
    # centre (p + z^2/2n) / (1 + z^2/n) = 0.7986, half-width 0.0763 for z = 1.96
    assert lo == pytest.approx(0.7222, abs=1e-4) and hi == pytest.approx(0.8749, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(10, 10)[0] == pytest.approx(0.7225, abs=1e-4)


def test_gate_passes_within_budget_and_reports_n_and_intervals():
    y = np.array([0, 1] * 50)
    ref = _probs(list(y))
    result = gate(ref.copy(), ref, y, task="classify", labels=LABELS, threshold=None, positive="defect",
                  max_drop_points=1.0, min_agreement=0.98)
    assert result["passed"] and result["n"] == 100 and result["agreement"] == 1.0
    assert result["warning"] and "200" in result["warning"]
    assert result["agreement_ci95"][0] < 1.0 <= result["agreement_ci95"][1]


def test_gate_fails_on_agreement_even_when_accuracy_is_unchanged():
    y = np.array([0, 1] * 50)
    ref_pred = list(y)
    ref_pred[:3] = [1 - v for v in ref_pred[:3]]  # the FP32 model gets 3 wrong
    exp_pred = list(y)
    exp_pred[3:6] = [1 - v for v in exp_pred[3:6]]  # the exported one gets 3 *other* ones wrong
    result = gate(_probs(exp_pred), _probs(ref_pred), y, task="classify", labels=LABELS, threshold=None,
                  positive=None, max_drop_points=1.0, min_agreement=0.98)
    assert result["drop_points"] == pytest.approx(0.0)
    assert result["agreement"] == pytest.approx(0.94)
    assert not result["passed"] and "agreement 94/100 = 0.9400 < 0.98" in result["reason"]


def test_gate_reports_each_class_recall_and_names_the_rare_class_it_passes_losing():
    """Four grades, 200 images, 8 of the rare one: 2 of those 8 flip to the commonest grade. Accuracy drops
    1 point and agreement is 0.99, so the gate passes; the recall figures and the export's line show the loss."""
    from edgetl.host.export import _attempt_line

    four = ["p000", "p033", "p067", "p100"]
    y = np.array([0] * 120 + [1] * 32 + [2] * 8 + [3] * 40)
    ref = np.full((len(y), 4), 0.05)
    ref[np.arange(len(y)), y] = 0.85
    exp = ref.copy()
    rare = np.flatnonzero(y == 2)[:2]
    exp[rare] = [0.85, 0.05, 0.05, 0.05]
    result = gate(exp, ref, y, task="classify", labels=four, threshold=None, positive=None,
                  max_drop_points=1.0, min_agreement=0.98)
    assert result["passed"] and result["agreement"] == pytest.approx(0.99)
    assert result["recall"]["p067"] == {"n": 8, "reference": 1.0, "exported": 0.75}
    assert result["recall"]["p000"] == {"n": 120, "reference": 1.0, "exported": 1.0}
    line = _attempt_line({"precision": "int8", "method": "ptq", **result})
    assert "PASS" in line and "class recall lower than FP32 on val: p067 1.00 -> 0.75 (n=8)" in line
    assert "p000" not in line.split("class recall")[1]  # only the classes that lost recall are named
    same = gate(ref.copy(), ref, y, task="classify", labels=four, threshold=None, positive=None,
                max_drop_points=1.0, min_agreement=0.98)
    assert "class recall" not in _attempt_line({"precision": "fp32", "method": "default", **same})


def test_gate_fails_on_a_drop_beyond_the_budget():
    y = np.array([0, 1] * 100)
    exp_pred = list(y)
    exp_pred[:3] = [1 - v for v in exp_pred[:3]]
    result = gate(_probs(exp_pred), _probs(list(y)), y, task="classify", labels=LABELS, threshold=None,
                  positive=None, max_drop_points=1.0, min_agreement=0.98)
    assert result["drop_points"] == pytest.approx(1.5) and not result["passed"]
    assert "drops 1.50 points > 1" in result["reason"] and result["warning"] is None


def test_gate_uses_the_stored_threshold_on_the_positive_class():
    y = np.array([0, 1])
    ref = np.array([[0.3, 0.7], [0.01, 0.99]])  # with threshold 0.2 on 'defect', the first is a defect
    result = gate(ref, ref, y, task="classify", labels=LABELS, threshold=0.2, positive="defect",
                  max_drop_points=1.0, min_agreement=0.98)
    assert result["reference_metric"] == 1.0


def test_auroc_with_ties():
    assert auroc(np.array([True, True, False, False]), np.array([0.9, 0.5, 0.5, 0.1])) == pytest.approx(0.875)
    assert auroc(np.array([True, True]), np.array([0.1, 0.2])) is None


class _Target:
    name = "onnx"
    precisions = ("fp32", "fp16", "int8")
    fallback = (FallbackStep("int8", "ptq"), FallbackStep("int8", "accuracy-aware"), FallbackStep("fp16"),
                FallbackStep("fp32"))


def test_chain_auto_explicit_and_fallback():
    t = _Target()
    assert resolve_chain(t, None, "auto", False) == list(t.fallback)
    assert resolve_chain(t, None, "int8", False) == [FallbackStep("int8", "ptq"), FallbackStep("int8", "accuracy-aware")]
    assert resolve_chain(t, None, "int8", True) == list(t.fallback)
    assert resolve_chain(t, None, "fp16", False) == [FallbackStep("fp16")]
    assert resolve_chain(t, None, "fp16", True) == [FallbackStep("fp16"), FallbackStep("fp32")]


def test_chain_follows_the_profile_and_refuses_what_it_does_not_support():
    from edgetl.config import TargetProfile

    profile = TargetProfile(name="p", format="onnx", precisions=["fp32", "int8"], fallback=["int8/ptq", "fp32"])
    assert resolve_chain(_Target(), profile, "auto", False) == [FallbackStep("int8", "ptq"), FallbackStep("fp32")]
    with pytest.raises(UsageError, match="--precision fp16: not supported by profile 'p'"):
        resolve_chain(_Target(), profile, "fp16", False)
