"""Continual learning: ``edgetl train --from RUN`` and the ``rehearsal`` strategy (plugins/edgetl_builtins/transfer).

Tiny backbone, tiny synthetic images with three visibly different classes:
stage 1 learns ``good`` and ``line``; stage 2 sees only the new class
``spot`` (no old-class image), so a naive fine-tune forgets the old classes
while rehearsal (stored exemplars) + LwF keeps predicting them. Also: the
buffer's bound and balance, the exemplars carried forward, the ``--from``
errors, and the continual run exported through the gate (ONNX and OpenVINO)
and served on the agent like the host model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from serve_support import running_agent  # noqa: E402
from train_fixtures import one_torch_thread, write_config  # noqa: E402, F401

from edgetl.config import load_run_config  # noqa: E402
from edgetl.errors import ConfigError, EdgetlError, UsageError  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402


def make_image(rng: np.random.Generator, kind: str, size: int = 40) -> np.ndarray:
    """``good``: a smooth gradient; ``line``: plus a dark line; ``spot``: plus a bright square."""
    img = np.linspace(90, 170, size, dtype=np.float32)[None, :].repeat(size, 0) + rng.normal(0, 6, (size, size))
    r = int(rng.integers(6, size - 12))
    if kind == "line":
        img[r:r + 3, 3:size - 3] = 20
    elif kind == "spot":
        img[r:r + 9, r:r + 9] = 250
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([img, img, img], axis=-1)


def make_folder(root, per_class: dict[str, int], seed: int):
    import cv2

    rng = np.random.default_rng(seed)
    for kind, n in per_class.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / kind / f"{kind}_{i:03d}.png"), make_image(rng, kind))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("continual")
    make_folder(root / "old" / "train", {"good": 14, "line": 14}, seed=1)
    make_folder(root / "old" / "val", {"good": 6, "line": 6}, seed=2)
    make_folder(root / "new" / "train", {"spot": 14}, seed=3)  # the new class only
    for split, seed in (("val", 4), ("test", 5)):
        make_folder(root / "new" / split, {"good": 6, "line": 6, "spot": 6}, seed=seed)
    return root


def train(run_dir, data, strategy="rehearsal", options=None, from_run=None, overrides=(), **kw):
    cfg_path = write_config(run_dir.parent / f"{run_dir.name}.yaml", data, strategy, options,
                            **{"epochs": 4, "lr": 1e-2, **kw})
    cfg = load_run_config(cfg_path, list(overrides))
    Trainer(cfg, run_dir, device="cpu", log=lambda m: None, from_run=from_run).run()
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, data):
    """good/line, rehearsal without --from: a fine-tune that stores a 12-image buffer."""
    run = tmp_path_factory.mktemp("s1") / "run"
    train(run, data / "old", options={"buffer_size": 13})
    return run


@pytest.fixture(scope="module")
def stage2(tmp_path_factory, data, stage1):
    """spot only (+ the stored exemplars), rehearsal + LwF, with the naive fine-tune as baseline."""
    run = tmp_path_factory.mktemp("s2") / "run"
    metrics = train(run, data / "new", options={"buffer_size": 9, "lwf": True}, from_run=stage1,
                    baseline="finetune", class_weights="balanced")
    return run, metrics


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with running_agent(tmp_path_factory) as running:
        yield running


def index(run):
    return json.loads((run / "exemplars" / "index.json").read_text())


def test_buffer_is_bounded_balanced_and_stored_with_hashes(stage1):
    import hashlib

    doc = index(stage1)
    assert doc["buffer_size"] == 13 and doc["selection"] == "herding"
    assert doc["counts"] == {"good": 6, "line": 6}  # 13 // 2 each: equal share, never over the bound
    for item in doc["items"]:
        path = stage1 / item["file"]
        assert path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == item["sha256"]
        assert path.parent.name == item["label"]


def test_selection_is_bounded_per_class_and_deterministic():
    from edgetl_builtins.transfer.rehearsal import herding, select

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [10, 2, 30])
    features = rng.normal(size=(42, 8))
    for feats in (features, None):
        chosen = select(labels, feats, 3, 12, seed=0)
        counts = np.bincount(labels[chosen], minlength=3)
        assert counts.tolist() == [4, 2, 4] and len(set(chosen)) == len(chosen)  # a small class keeps all it has
        assert chosen == select(labels, feats, 3, 12, seed=0)
    # herding's first pick is the image nearest the class mean
    f = features[:10] / np.linalg.norm(features[:10], axis=1, keepdims=True)
    assert herding(features[:10], 1) == [int(np.argmin(np.linalg.norm(f - f.mean(0), axis=1)))]


def test_old_classes_kept_with_rehearsal_forgotten_by_naive_finetune(stage2):
    run, metrics = stage2
    assert metrics["labels"] == ["good", "line", "spot"]  # old indices kept, the new class appended
    doc = metrics["continual"]
    assert doc["old_labels"] == ["good", "line"] and doc["new_labels"] == ["spot"] and doc["split"] == "test"
    assert doc["before"]["overall"] >= 0.8  # stage 1 had learnt its classes
    ours, naive = doc["after"], doc["baseline"]
    assert naive["strategy"] == "finetune"
    # trained on spot images only (its best epoch by val, which holds every class, forgets least)
    assert naive["old"]["overall"] <= 0.5 and naive["forgetting"]["overall"] >= 0.4
    assert ours["old"]["overall"] >= 0.8 and ours["new"]["overall"] >= 0.5
    assert ours["forgetting"]["overall"] <= naive["forgetting"]["overall"] - 0.3
    report = (run / "report.md").read_text()
    assert "## Continual learning" in report and "| **old classes** |" in report
    assert metrics["strategy_extra"]["exemplars_rehearsed"] == 12 and metrics["strategy_extra"]["lwf"] is True


def test_exemplars_are_carried_forward(stage1, stage2):
    run, _ = stage2
    doc = index(run)
    assert doc["counts"] == {"good": 3, "line": 3, "spot": 3}
    sources = {item["source"] for item in doc["items"] if item["label"] != "spot"}
    assert sources <= {str(stage1 / item["file"]) for item in index(stage1)["items"]}  # old classes: old exemplars


def test_continual_run_exports_through_the_gate_and_serves(tmp_path, data, stage2, agent):
    pytest.importorskip("onnxruntime")
    import zipfile

    from serve_support import exports_and_serves

    run, _ = stage2
    images = [sorted((data / "new" / "test" / cls).glob("*.png"))[0] for cls in ("good", "line", "spot")]
    exports_and_serves(agent, run, tmp_path, images)  # ONNX and OpenVINO, each through the default gate
    bundles = sorted(tmp_path.glob(f"{run.name}-*.edgetl"))
    assert [b.name for b in bundles] == [f"{run.name}-onnx.edgetl", f"{run.name}-openvino.edgetl"]
    for bundle in bundles:
        with zipfile.ZipFile(bundle) as zf:
            manifest = json.loads(zf.read("manifest.json"))
            assert not [n for n in zf.namelist() if "exemplar" in n]  # the buffer stays in the run directory
        assert manifest["labels"] == ["good", "line", "spot"]


def test_from_run_loads_the_old_backbone_and_expands_the_head(tmp_path, data, stage1):
    from edgetl.host.continual import open_previous, previous_run
    from edgetl.plugins import get_manager

    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    prev = open_previous(stage1, tmp_path / "out", backbone.name, _spec(backbone), "classify")
    module = backbone.build(pretrained=False)
    got = previous_run(prev, module, backbone.feature_dim, ["good", "line", "spot"])
    old = prev.state_dict
    assert torch.equal(module.state_dict()["conv_stem.weight"], old["features.conv_stem.weight"])
    head = got.classifier.head[-1]
    assert head.weight.shape[0] == 3 and torch.equal(head.weight[:2], old["head.1.weight"])
    assert not torch.equal(head.weight[2], torch.zeros_like(head.weight[2]))  # the new row is initialised
    # what finetune, progressive and linear-probe build on: build_classifier returns that classifier
    from types import SimpleNamespace

    from edgetl.training import build_classifier

    ctx = SimpleNamespace(previous=got, config=SimpleNamespace(train=SimpleNamespace(dropout=0.1)))
    assert build_classifier(ctx) is got.classifier and got.classifier.head[0].p == 0.1
    with pytest.raises(ValueError, match="hidden"):
        build_classifier(ctx, hidden=16)


def _spec(backbone):
    import dataclasses

    return dataclasses.replace(backbone.input, size=(32, 32))


def test_from_errors_are_one_line(tmp_path, data, stage1):
    cases = [
        ({"from_run": tmp_path / "nope"}, UsageError, "no such run directory"),
        ({"from_run": stage1, "overrides": ["train.image_size=48"]}, ConfigError, "differs from the --from run's"),
        ({"from_run": stage1, "overrides": ["backbone.name=efficientnet_lite0"]}, ConfigError, "backbone.name"),
        ({"from_run": stage1, "options": {"lwf": "yes"}}, ConfigError, "strategy.options.lwf"),
        ({"options": {"lwf": True}}, ConfigError, "needs a previous run"),
    ]
    for i, (kw, kind, text) in enumerate(cases):
        with pytest.raises(kind, match=text) as info:
            train(tmp_path / f"bad{i}", data / "new" if "from_run" in kw else data / "old", **{"epochs": 1, **kw})
        assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgetlError, match="not a run directory"):
        train(tmp_path / "bad2", data / "new", from_run=tmp_path / "empty", epochs=1)


def test_from_an_anomaly_run_is_refused(tmp_path, data, stage1):
    import torch as t

    fake = tmp_path / "anomaly"
    fake.mkdir()
    payload = t.load(stage1 / "model.pt", weights_only=True)
    payload["task"] = "anomaly"
    t.save(payload, fake / "model.pt")
    (fake / "model.pt2").write_bytes((stage1 / "model.pt2").read_bytes())
    with pytest.raises(UsageError, match="anomaly model"):
        train(tmp_path / "bad", data / "new", from_run=fake, epochs=1)


def test_cli_from_missing_run_is_one_line(tmp_path, data):
    from click.testing import CliRunner

    from edgetl.cli import cli

    cfg = write_config(tmp_path / "c.yaml", data / "new", "finetune", None, epochs=1)
    result = CliRunner().invoke(cli, ["train", str(cfg), "--from", str(tmp_path / "nope"),
                                      "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code != 0 and "--from" in result.output and "no such run directory" in result.output
    assert "Traceback" not in result.output


# -- splitting a class: stage 1 learns good vs defect (line and spot images), stage 2 splits defect -----
SPLIT = ["continual.split.defect=[line, spot]"]


@pytest.fixture(scope="module")
def merged(tmp_path_factory, data):
    """good vs defect, where defect holds line and spot images (the stage-1 binary task)."""
    import shutil

    root = tmp_path_factory.mktemp("merged")
    for split, n, seed in (("train", 8, 6), ("val", 4, 7)):
        make_folder(root / split, {"good": 2 * n, "line": n, "spot": n}, seed=seed)
        for kind in ("line", "spot"):
            (root / split / "defect").mkdir(exist_ok=True)
            for f in (root / split / kind).iterdir():
                shutil.move(str(f), str(root / split / "defect" / f.name))
            (root / split / kind).rmdir()
    run = root / "run"
    train(run, root, options={"buffer_size": 8})
    return run


@pytest.fixture(scope="module")
def split_data(tmp_path_factory, data):
    """Stage 2: training images of the children only; val and test hold good, line and spot."""
    root = tmp_path_factory.mktemp("split_data")
    make_folder(root / "train", {"line": 8, "spot": 8}, seed=8)
    for split in ("val", "test"):
        (root / split).symlink_to(data / "new" / split)
    return root


@pytest.fixture(scope="module")
def split_run(tmp_path_factory, split_data, merged):
    """good / line / spot from the good-vs-defect run, defect split; rehearsal + LwF, naive baseline."""
    run = tmp_path_factory.mktemp("split") / "run"
    cfg = load_run_config(write_config(run.parent / "c.yaml", split_data, "rehearsal", {"lwf": True},
                                       epochs=3, lr=1e-2, baseline="finetune"), SPLIT)
    lines: list[str] = []
    Trainer(cfg, run, device="cpu", log=lines.append, from_run=merged).run()
    return run, json.loads((run / "metrics.json").read_text()), lines


def test_split_labels_and_child_rows_start_from_the_parent(tmp_path, data, merged):
    from edgetl.host.continual import open_previous, plan_labels, previous_run
    from edgetl.plugins import get_manager

    split = {"defect": ["line", "spot"]}
    prev_labels = ["defect", "good"]  # stage 1's sorted folders
    assert plan_labels(prev_labels, ["good", "line", "spot", "zeta"], split) == ["good", "line", "spot", "zeta"]
    assert plan_labels(["a", "b", "c"], ["x2", "x1"], {"b": ["x2", "x1"]}) == ["a", "c", "x1", "x2"]
    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    prev = open_previous(merged, tmp_path / "out", backbone.name, _spec(backbone), "classify")
    assert prev.labels == prev_labels
    prev.split = split
    labels = ["good", "line", "spot"]
    got = previous_run(prev, backbone.build(pretrained=False), backbone.feature_dim, labels)
    assert got.split == split and got.new_labels == ["line", "spot"]
    assert [got.parent(c) for c in labels] == ["good", "defect", "defect"]
    head, old = got.classifier.head[-1], prev.state_dict
    assert torch.equal(head.weight[0], old["head.1.weight"][1])  # good keeps its row at its new index
    for i in (1, 2):
        assert torch.equal(head.weight[i], old["head.1.weight"][0])
        assert torch.allclose(head.bias[i], old["head.1.bias"][0] - np.log(2))
    # the new model starts out predicting the old one's probabilities, defect's spread over its children
    x = torch.stack([img for img, _ in _images(data)])
    got.classifier.eval()
    with torch.no_grad():
        new = got.classifier(x)  # probabilities
        before = prev.model(x)
    assert torch.allclose(new[:, 0], before[:, 1], atol=1e-5)
    assert torch.allclose(new[:, 1] + new[:, 2], before[:, 0], atol=1e-5)
    assert torch.allclose(new[:, 1], new[:, 2], atol=1e-6)


def _images(data):
    """Four normalised 32 px test images as (x, label) pairs."""
    from edgetl.data.folder import load_split
    from edgetl.plugins import get_manager
    from edgetl.training.datasets import ImageDataset

    samples = load_split(data / "new" / "test")
    ds = ImageDataset(samples, _spec(get_manager().get("backbone", "timm:test_efficientnet")), augment=[],
                      train=False, seed=0)
    return [ds[i] for i in (0, 7, 13, 17)]


def test_split_run_reports_the_old_task_merged_before_and_after(split_run):
    import csv

    run, metrics, lines = split_run
    assert metrics["labels"] == ["good", "line", "spot"]
    doc = metrics["continual"]
    assert doc["old_labels"] == ["defect", "good"] and doc["new_labels"] == ["line", "spot"]
    assert doc["split_classes"] == {"defect": ["line", "spot"]}
    assert doc["before"]["n"] == {"defect": 12, "good": 6}  # a child's test images count as its parent's
    # "after" recomputed from the saved predictions: the children's probabilities summed
    with open(run / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    parent_of = {"good": "good", "line": "defect", "spot": "defect"}
    hits = {"defect": 0, "good": 0}
    for r in rows:
        p = {"good": float(r["p_good"]), "defect": float(r["p_line"]) + float(r["p_spot"])}
        hits[parent_of[r["label"]]] += max(p, key=p.get) == parent_of[r["label"]]
    after = doc["after"]["old"]
    assert after["per_class"] == {"defect": hits["defect"] / 12, "good": hits["good"] / 6}
    assert after["overall"] == pytest.approx((hits["defect"] + hits["good"]) / 18)
    assert doc["after"]["forgetting"]["overall"] == pytest.approx(doc["before"]["overall"] - after["overall"])
    assert set(doc["after"]["new"]["per_class"]) == {"line", "spot"}
    assert doc["baseline"]["strategy"] == "finetune" and "defect" in doc["baseline"]["old"]["per_class"]
    report = (run / "report.md").read_text()
    assert "| defect (= line + spot) | 12 |" in report and "Split classes: defect → line, spot" in report
    # the stored defect exemplars cannot be relabelled: dropped, and the log says so
    assert any("dropped 4 stored exemplars of split classes (defect)" in line for line in lines)
    assert metrics["strategy_extra"]["exemplars_rehearsed"] == 4  # the good ones


def test_split_config_errors_are_one_line(tmp_path, split_data, stage1, merged):
    cases = [
        (stage1, ["continual.split.defect=[spot]"], "continual.split.defect: 'defect' is not a class of the --from"),
        (merged, ["continual.split.defect=[line, spot, dent]"], "child 'dent' has no images in data.train"),
        (merged, ["continual.split.defect=[good, spot]"], "child 'good' is a class of the --from run already"),
        (None, SPLIT, "continual.split: splits classes of a previous run; give one with --from"),
        (merged, ["continual.split.defect=[]"], "continual.split.defect: List should have at least 1 item"),
        (merged, ["continual.split={defect: [line], good: [line]}"], "'line' is a child of both"),
        (merged, ["continual.split.defect=[defect]"], "'defect' is split itself"),
    ]
    for i, (from_run, overrides, text) in enumerate(cases):
        with pytest.raises(ConfigError) as info:
            train(tmp_path / f"bad{i}", split_data, from_run=from_run, overrides=overrides, epochs=1)
        assert text in str(info.value) and "\n" not in str(info.value)
