"""The Python API: docs/python.md runs as a doctest, and the API stays light and honest at its edges."""

from __future__ import annotations

import doctest
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "python.md"


def test_import_edgetl_loads_no_ml_framework_and_the_api_on_demand():
    code = ("import sys, edgetl\n"
            "assert callable(edgetl.train) and callable(edgetl.load) and callable(edgetl.deploy)\n"
            "assert edgetl.Model and edgetl.Prediction and edgetl.Bundle and edgetl.fmt.prob(0.5) == '0.500'\n"
            "import edgetl.deploy.rollout\n"
            "assert callable(edgetl.deploy), 'importing a deploy submodule must keep edgetl.deploy callable'\n"
            "heavy = [m for m in ('torch', 'timm', 'onnxruntime', 'openvino') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr


def test_unknown_attribute_is_an_attribute_error():
    import edgetl

    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        edgetl.trian  # noqa: B018


def test_load_names_what_is_wrong(tmp_path):
    import edgetl
    from edgetl.errors import DataError

    with pytest.raises(DataError, match="no such run directory or bundle file"):
        edgetl.load(tmp_path / "nope")
    with pytest.raises(DataError, match="not a run directory"):
        edgetl.load(tmp_path)


def test_overrides_merge_sections_and_set_dotted_keys():
    from edgetl.workflow.training import resolve_config

    base = {"name": "x", "data": {"train": "a"}, "train": {"epochs": 5, "lr": 0.1}}
    cfg = resolve_config(base, {"train": {"epochs": 2}, "data.val": Path("b"), "augment": []})
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.1 and cfg.data.val == "b" and cfg.augment == []
    assert base["train"]["epochs"] == 5  # the caller's dict is not changed
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match="epochs"):
        resolve_config(base, {"train": {"epochs": "many"}})


def test_deploy_needs_a_token_or_a_fleet(tmp_path):
    import edgetl
    from edgetl.errors import UsageError

    with pytest.raises(UsageError, match="token"):
        edgetl.deploy(tmp_path / "x.edgetl", device="http://127.0.0.1:1")
    with pytest.raises(UsageError, match="either a device URL"):
        edgetl.deploy(tmp_path / "x.edgetl")


@pytest.mark.skipif(not DOC.is_file(), reason="docs/python.md missing")
def test_docs_python_md_examples_run(tmp_path, monkeypatch):
    """Every example of docs/python.md, top to bottom, in a scratch folder, against a real local agent."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("skimage")
    from agent_support import ThreadAgent
    from train_fixtures import one_torch_thread  # noqa: F401  (autouse: one thread for tiny models)

    from edgetl.keys import generate_keypair

    monkeypatch.chdir(tmp_path)
    generate_keypair("demo")
    with ThreadAgent(tmp_path / "agent-state", [tmp_path / "demo.pub"]) as agent:
        failures, tried = doctest.testfile(str(DOC), module_relative=False, globs={
            "device_url": agent.url, "token": agent.token}, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
            verbose=False, report=True)
    assert tried >= 30 and failures == 0, f"{failures} of {tried} examples in docs/python.md failed (see above)"


def test_annotate_draws_the_banner_and_the_heat_map():
    from edgetl.annotate import annotate
    from edgetl.prediction import Prediction

    image = np.full((100, 200, 3), 128, np.uint8)
    result = Prediction(label="defect", scores={"defect": 0.7, "good": 0.3}, threshold=0.2, positive="defect",
                        score=0.7)
    out = annotate(image, result)
    assert out.shape == (160, 320, 3) and (image == 128).all()  # enlarged to 320 wide; input untouched
    assert out[2, 160].tolist() != [128, 128, 128]  # the banner darkened the top
    assert tuple(out[80, 0]) == (40, 40, 230)  # a red border: the decision is the defect class
    good = annotate(image, {"label": "good", "scores": {"defect": 0.1, "good": 0.9}, "threshold": 0.2})
    assert tuple(good[80, 0]) == (60, 170, 60)
    heat = np.zeros((1, 1, 8, 8), np.float32)
    heat[..., 4:, 4:] = 1.0  # anomalous bottom-right quarter
    hot = annotate(image, result, heatmap=heat)
    assert hot[140, 300, 2] > hot[140, 300, 0] and hot[100, 20].tolist() != hot[140, 300].tolist()


def test_formatter_is_the_one_used_for_thresholds_and_tolerances():
    from edgetl import fmt

    assert fmt.prob(0.1997506469488144) == "0.200" and fmt.prob(None) == "–" and fmt.prob(0.000123) == "0.000123"
    assert fmt.tol(0.15) == "0.15" and fmt.tol(0.1) == "0.1" and fmt.tol(2.345e-5) == "2.35e-05"
    assert fmt.pct(0.76) == "76.0 %"


class _AnomalyPredictor:
    """An anomaly model in the predictor contract, with maps: the image's mean brightness is its score."""

    name, labels, task, threshold, positive = "fake-anomaly", ["good", "anomaly"], "anomaly", 0.5, None

    def __init__(self):
        from edgetl.api import InputSpec

        self.input = InputSpec(size=(16, 16), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
        self.calls = 0

    def predict(self, batch):
        return batch.mean(axis=(1, 2, 3)).astype(np.float32)

    def predict_outputs(self, batch):
        self.calls += 1
        return {"output": self.predict(batch), "map": batch.mean(axis=1, keepdims=True).astype(np.float32)}


class _OlderAnomalyPredictor(_AnomalyPredictor):
    """A runtime that offers only ``predict_map``."""

    predict_outputs = None

    def predict_map(self, batch):
        return batch.mean(axis=1, keepdims=True).astype(np.float32)


@pytest.mark.parametrize("kind", [_AnomalyPredictor, _OlderAnomalyPredictor])
def test_anomaly_predictions_carry_score_threshold_and_map_and_save_overlays(tmp_path, kind):
    import cv2

    from edgetl.workflow.model import Model

    model = Model(tmp_path / "fake.edgetl")
    model._predictor = kind()
    dark, bright = np.full((32, 32, 3), 40, np.uint8), np.full((32, 32, 3), 230, np.uint8)
    ok, bad = model.predict([dark, bright], save=tmp_path / "out")
    assert (ok.label, bad.label) == ("good", "anomaly") and bad.alarm and not ok.alarm
    assert bad.score == pytest.approx(230 / 255, abs=1e-3) and bad.threshold == 0.5 and bad.positive == "anomaly"
    assert bad.anomaly_map.shape == (16, 16) and bad.describe() == "anomaly 0.902 (threshold 0.500) -> anomaly"
    doc = bad.to_dict()
    assert doc["anomaly_score"] == bad.score and doc["image"] == "array[1]" and "anomaly_map" not in doc
    overlay = cv2.imread(str(tmp_path / "out" / "array_0001.png"))
    assert overlay.shape == (320, 320, 3) and overlay[200, 160, 2] > overlay[200, 160, 0]  # red-hot map drawn
    assert model.predict(dark, maps=False)[0].anomaly_map is None
    if kind is _AnomalyPredictor:
        assert model._predictor.calls == 2  # one inference per image gave both the score and the map
