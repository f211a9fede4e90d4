"""How a strategy author tests their plugin: the method's maths, then the strategy through ``edgetl train``.

Only public edgetl imports; the plugin is found through its entry point
(install it first: ``pip install .``, and set ``EDGETL_LOAD_PLUGINS=prototype``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from edgetl_prototype.strategy import class_means, normalise, pick_scale, softmax

from edgetl.cli import cli
from edgetl.plugins import PluginManager


def test_prototypes_classify_separable_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (3, 16))
    y = np.repeat(np.arange(3), 20)
    x = centres[y] + rng.normal(0, 0.1, (60, 16))
    mean = x.mean(axis=0)
    protos = class_means(normalise(x, mean), y, 3)
    assert np.allclose(np.linalg.norm(protos, axis=1), 1.0)
    cos = normalise(x, mean) @ protos.T
    assert (cos.argmax(axis=1) == y).all()
    scale, _ = pick_scale(cos, y, [1.0, 4.0, 16.0])
    assert scale == 16.0  # clean clusters: the sharpest softmax has the lowest cross-entropy
    assert np.allclose(softmax(scale * cos).sum(axis=1), 1.0)


def test_the_entry_point_registers_the_strategy(monkeypatch):
    monkeypatch.setenv("EDGETL_LOAD_PLUGINS", "prototype")
    strategy = PluginManager().get("strategy", "prototype")
    assert strategy.plugin == "prototype" and strategy.task == "classify"


def _images(root, seed):
    import cv2

    rng = np.random.default_rng(seed)
    for cls in ("good", "defect"):
        (root / cls).mkdir(parents=True)
        for i in range(8):
            img = np.full((32, 32), 128, np.uint8) + rng.integers(0, 10, (32, 32)).astype(np.uint8)
            if cls == "defect":
                img[10:13, 2:30] = 10
            cv2.imwrite(str(root / cls / f"{i}.png"), np.stack([img] * 3, axis=-1))


def test_train_and_eval_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGETL_LOAD_PLUGINS", "prototype")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _images(tmp_path / "train", 1)
    _images(tmp_path / "val", 2)
    config = {"name": "proto", "data": {"train": str(tmp_path / "train"), "val": str(tmp_path / "val")},
              "backbone": {"name": "timm:test_efficientnet", "pretrained": False},
              "strategy": {"name": "prototype", "options": {"temperatures": [1, 10]}},
              "train": {"image_size": 32}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"),
                                 "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["strategy"] == "prototype" and summary["best_epoch"] == 1
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["strategy_extra"]["scale"] in (1.0, 10.0)
    result = runner.invoke(cli, ["eval", str(tmp_path / "run"), str(tmp_path / "val"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    # the reloaded run (model.pt2) scores the val folder exactly as training's final evaluation did
    assert doc["n"] == 16 and doc["accuracy"] == pytest.approx(summary["val"]["accuracy"])
