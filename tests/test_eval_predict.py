"""``edgetl eval`` and ``edgetl predict`` on a saved run; the predictor's operating point and tiles."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from click.testing import CliRunner  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.api import InputSpec  # noqa: E402
from edgetl.cli import cli  # noqa: E402
from edgetl.config import load_run_config  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402
from edgetl.predictor import open_predictor, predict_document  # noqa: E402
from edgetl.preprocess import read_image  # noqa: E402

SCHEMAS = Path(__file__).parents[1] / "docs" / "schemas"
EVAL_SCHEMA = json.loads((SCHEMAS / "eval.schema.json").read_text())
PREDICT_SCHEMA = json.loads((SCHEMAS / "predict.schema.json").read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalpred")
    data = make_dataset(root / "data", n_train=16, n_val=8)
    cfg = load_run_config(write_config(root / "c.yaml", data, "linear-probe", epochs=5, lr=0.05),
                          ["train.threshold={policy: recall, class: defect, target: 0.75}"])
    Trainer(cfg, root / "run", device="cpu", log=lambda m: None).run()
    return root / "run", data


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_eval_json_matches_schema_and_the_training_metrics(run):
    run_dir, data = run
    code, out, err = invoke("eval", str(run_dir), str(data / "val"), "--json")
    assert code == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, EVAL_SCHEMA)
    trained = json.loads((run_dir / "metrics.json").read_text())["final"]["val"]
    assert doc["n"] == 16 and doc["labels"] == ["defect", "good"]
    assert doc["threshold"] == pytest.approx(trained["threshold"])
    for key in ("accuracy", "balanced_accuracy", "recall_at_threshold", "false_reject_rate"):
        assert doc[key] == pytest.approx(trained[key]), key  # same preprocessing, same decision
    assert doc["recall_at_threshold"] >= 0.75


def test_eval_text_output_and_errors(run, tmp_path):
    run_dir, data = run
    code, out, _ = invoke("eval", str(run_dir), str(data / "val"))
    assert code == 0 and "accuracy" in out and "defect" in out
    (tmp_path / "other" / "crack").mkdir(parents=True)
    (tmp_path / "other" / "good").mkdir(parents=True)
    for cls in ("crack", "good"):
        (tmp_path / "other" / cls / "a.png").write_bytes((data / "val" / "good" / "good_000.png").read_bytes())
    code, _, err = invoke("eval", str(run_dir), str(tmp_path / "other"))
    assert code == 1 and "crack" in err and "Traceback" not in err
    code, _, err = invoke("eval", str(tmp_path), str(data / "val"))
    assert code == 1 and "not a run directory" in err


def test_predict_json_lines_one_per_image(run):
    run_dir, data = run
    images = sorted((data / "val" / "defect").glob("*.png"))[:2]
    code, out, err = invoke("predict", str(run_dir), str(images[0]), "--json")
    assert code == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, PREDICT_SCHEMA)
    assert set(doc["scores"]) == {"defect", "good"} and sum(doc["scores"].values()) == pytest.approx(1, abs=1e-5)
    assert doc["model"] == "tiny" and "threshold" in doc and doc["latency_ms"] > 0
    expected = "defect" if doc["scores"]["defect"] >= doc["threshold"] else "good"
    assert doc["label"] == expected
    code, out, _ = invoke("predict", str(run_dir), *map(str, images), "--json")
    docs = [json.loads(line) for line in out.splitlines()]  # JSON lines: one document per image
    for d in docs:
        jsonschema.validate(d, PREDICT_SCHEMA)
    assert [d["image"] for d in docs] == [str(p) for p in images]


def test_predict_missing_image_is_one_line(run, tmp_path):
    run_dir, _ = run
    code, out, err = invoke("predict", str(run_dir), str(tmp_path / "nope.png"))
    assert code == 1 and "nope.png" in err and out == ""


class _Fixed:
    """A predictor whose tiles' probabilities are given: to check aggregation and the threshold."""

    name, labels, task, positive = "fixed", ["defect", "good"], "classify", "defect"

    def __init__(self, tile_probs, threshold, tile=None):
        self.tile_probs, self.threshold = np.asarray(tile_probs, np.float32), threshold
        self.input = replace(InputSpec(size=(8, 8)), tile=tile)

    def predict(self, batch):
        assert len(batch) == len(self.tile_probs)
        return self.tile_probs


def test_threshold_recall_and_frr_move_the_operating_point_and_print_its_effect_on_val(run):
    run_dir, data = run
    stored = json.loads((run_dir / "metrics.json").read_text())["threshold"]
    code, out, err = invoke("eval", str(run_dir), str(data / "val"), "--threshold", "1.0", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["threshold"] == 1.0, err
    assert f"defect >= 1.000 (threshold): on val ({data / 'val'}) recall" in err and f"stored >= {stored:.3f}" in err
    code, out, err = invoke("eval", str(run_dir), str(data / "val"), "--recall", "1.0", "--json")
    assert code == 0 and json.loads(out)["recall_at_threshold"] == 1.0, err  # met on val, evaluated on val
    code, out, err = invoke("eval", str(run_dir), str(data / "val"), "--frr", "0", "--json")
    assert code == 0 and json.loads(out)["false_reject_rate"] == 0.0, err
    code, out, err = invoke("predict", str(run_dir), str(data / "val" / "good"), "--threshold", "0", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and lines and all(d["label"] == "defect" and d["threshold"] == 0.0 for d in lines), err
    assert "false-reject rate 1.000" in err  # every good image flagged, said before the lines
    code, _, err = invoke("eval", str(run_dir), str(data / "val"), "--threshold", "0.2", "--recall", "0.9")
    assert code == 2 and "give one of --threshold, --recall, --frr" in err
    code, _, err = invoke("eval", str(run_dir), str(data / "val"), "--threshold", "1.5")
    assert code == 2 and "--threshold 1.5: expected a fraction in [0, 1]" in err


def test_tiles_take_the_most_defective_tile_and_threshold_applies():
    image = np.zeros((16, 16, 3), np.uint8)
    p = [[0.1, 0.9], [0.35, 0.65], [0.2, 0.8], [0.05, 0.95]]
    doc = predict_document(_Fixed(p, threshold=0.3, tile=(2, 2)), image)
    assert doc["scores"]["defect"] == pytest.approx(0.35) and doc["label"] == "defect"
    doc = predict_document(_Fixed(p, threshold=0.5, tile=(2, 2)), image)
    assert doc["label"] == "good" and doc["threshold"] == 0.5


def test_open_predictor_on_a_run_predicts_probabilities(run):
    run_dir, data = run
    predictor = open_predictor(run_dir)
    image = read_image(next((data / "val" / "good").glob("*.png")))
    doc = predict_document(predictor, image)
    assert doc["label"] in predictor.labels and predictor.input.size == (32, 32)


def test_standardised_probe_folds_exactly_into_the_head():
    from edgetl_builtins.strategies.linear_probe import fold_standardisation

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.Linear(5, 3)).eval()
    x = torch.randn(7, 5) * 3 + 1
    mean, std = x.mean(0), x.std(0)
    expected = head((x - mean) / std)
    fold_standardisation(head, mean, std)
    assert torch.allclose(head(x), expected, atol=1e-5)
