"""The decision rule, its margin, and the gate at a decision boundary (issue: 19/20 with max diff 5e-7).

Constructed cases: an FP32 export whose only difference from torch is 1e-7
rounding on an image that sits exactly between two classes must pass; a
real flip must still fail, however small the validation set.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetl.host.gate import gate
from edgetl.metrics import ANOMALY_THRESHOLD, TIE_MARGIN, decide, decision_margin, flips

LABELS = ["defect", "good"]


def _confident(y: np.ndarray) -> np.ndarray:
    out = np.full((len(y), 2), 0.1)
    out[np.arange(len(y)), y] = 0.9
    return out


def _boundary_case(n: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n images, image 0 on the boundary: torch says 0.5000004 defect, the runtime 0.4999998."""
    y = np.array([0, 1] * (n // 2))
    reference = _confident(y)
    reference[0] = [0.5 + 4e-7, 0.5 - 4e-7]
    exported = reference.copy()
    exported[0] = [0.5 - 2e-7, 0.5 + 2e-7]
    exported[1:] += 1e-7 * np.random.default_rng(0).standard_normal((n - 1, 2))
    return y, reference, exported


def test_fp32_flip_inside_numerical_tolerance_is_a_tie_not_a_failure():
    y, reference, exported = _boundary_case()
    assert (decide(exported, LABELS) != decide(reference, LABELS)).sum() == 1  # the raw decisions do differ
    result = gate(exported, reference, y, task="classify", labels=LABELS, threshold=None, positive=None,
                  max_drop_points=1.0, min_agreement=0.98)
    assert result["passed"], result["reason"]
    assert result["ties"] == 1 and result["agreement"] == 1.0 and result["drop_points"] == pytest.approx(0.0)
    assert result["max_abs_diff"] < 1e-6 and result["tie_margin"] == TIE_MARGIN


def test_a_real_flip_still_fails_a_small_validation_set():
    y, reference, exported = _boundary_case()
    exported[3] = exported[3][::-1]  # a confident image (margin 0.8) changes its answer
    result = gate(exported, reference, y, task="classify", labels=LABELS, threshold=None, positive=None,
                  max_drop_points=100.0, min_agreement=0.98)
    assert not result["passed"] and result["ties"] == 1
    assert "agreement 19/20 = 0.9500 < 0.98" in result["reason"]


def test_a_flip_just_outside_the_tie_margin_counts():
    y = np.array([0, 1] * 10)
    reference = _confident(y)
    reference[0] = [0.5 + 2 * TIE_MARGIN, 0.5 - 2 * TIE_MARGIN]  # margin 4e-4: the model's decision
    exported = reference.copy()
    exported[0] = exported[0][::-1]
    result = gate(exported, reference, y, task="classify", labels=LABELS, threshold=None, positive=None,
                  max_drop_points=100.0, min_agreement=0.98)
    assert result["ties"] == 0 and result["agreement"] == pytest.approx(19 / 20) and not result["passed"]


def test_margin_follows_the_operating_point():
    probs = np.array([[0.30, 0.70], [0.10, 0.90]])
    # threshold 0.25 on defect: row 0 is a defect 0.05 above the threshold; row 1 good, 0.15 below it
    assert decide(probs, LABELS, 0.25, "defect").tolist() == [0, 1]
    assert decision_margin(probs, LABELS, 0.25, "defect") == pytest.approx([0.05, 0.15])
    # three classes, threshold on defect not reached: the others decide, so their gap counts too
    three = np.array([[0.1, 0.46, 0.44]])
    assert decision_margin(three, ["defect", "a", "b"], 0.5, "defect") == pytest.approx([0.02])
    # anomaly scores: distance to the stored threshold, else to 0.5
    scores = np.array([0.52, 0.1])
    assert decide(scores, ["good", "anomaly"]).tolist() == [1, 0]
    assert decision_margin(scores, ["good", "anomaly"]) == pytest.approx([0.02, ANOMALY_THRESHOLD - 0.1])
    assert decide(scores, ["good", "anomaly"], threshold=0.05).tolist() == [1, 1]


def test_anomaly_tie_at_the_score_threshold():
    reference = np.array([0.5 + 1e-6, 0.9, 0.1])
    exported = np.array([0.5 - 1e-6, 0.9, 0.1])
    real, tie = flips(exported, reference, ["good", "anomaly"])
    assert tie.tolist() == [True, False, False] and not real.any()


def test_reference_check_does_not_fail_fp32_on_a_boundary_image(tmp_path):
    """The device's reference check applies the same rule: a stored tie flipping on this machine passes."""
    import cv2

    from edgetl.reference import TOLERANCES, check_reference

    (tmp_path / "reference").mkdir()
    cv2.imwrite(str(tmp_path / "reference" / "000.png"), np.full((8, 8, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "reference" / "001.png"), np.full((8, 8, 3), 128, np.uint8))
    stored = [[0.5 + 3e-7, 0.5 - 3e-7], [0.9, 0.1]]
    (tmp_path / "reference" / "outputs.json").write_text(json.dumps({"images": [
        {"file": f"reference/00{i}.png", "label": "defect", "output": [out]} for i, out in enumerate(stored)]}))
    manifest = {
        "schema_version": 1, "name": "t", "model_version": "t-1", "created": "2026-01-01T00:00:00+00:00",
        "task": "classify", "labels": LABELS, "output": "probabilities",
        "input": {"size": [8, 8], "mean": [0.5] * 3, "std": [0.5] * 3},
        "target": {"format": "onnx", "precision": "fp32", "files": ["model/m.onnx"]},
        "compat": {"arch": "x86_64"}, "files": {"model/m.onnx": "0" * 64},
        "reference": {"outputs": "reference/outputs.json", "count": 2, "precision": "fp32",
                      "tolerance": TOLERANCES["fp32"]},
    }

    class Runtime:
        def __init__(self, first, second=(0.9, 0.1)):
            self.outputs = iter([np.array([first], np.float32), np.array([second], np.float32)])

        def predict(self, batch):
            return next(self.outputs)

    report = check_reference(tmp_path, manifest, Runtime([0.5 - 3e-7, 0.5 + 3e-7]))
    assert report["passed"] and report["label_agreement"] == 1.0, report["failures"]
    report = check_reference(tmp_path, manifest, Runtime([0.5 - 3e-7, 0.5 + 3e-7], (0.1, 0.9)))  # a real flip
    assert not report["passed"] and report["label_agreement"] == 0.5
    assert report["failures"] == ["reference/001.png: label [1] here, [0] on the host"]
