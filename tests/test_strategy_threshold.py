"""A threshold the strategy returns is honoured, or refused with a reason when the config sets a policy."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")

from plugin_factory import activate, make_plugin  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.config import load_run_config  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402
from edgetl.plugins import reset_manager  # noqa: E402

OWN_THRESHOLD = '''
from edgetl.api import Strategy, TrainedModel
from edgetl.hookspecs import hookimpl


class Fixed(Strategy):
    name = "fixed-threshold"

    def fit(self, ctx):
        import torch
        from torch import nn

        torch.manual_seed(0)
        module = nn.Sequential(ctx.module, nn.Linear(ctx.backbone.feature_dim, len(ctx.labels)), nn.Softmax(1))
        return TrainedModel(module=module, task="classify", labels=list(ctx.labels), threshold=0.3,
                            positive="defect")


@hookimpl
def edgetl_strategies(register):
    register(Fixed())
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    make_plugin(tmp_path / "site", "fixed", OWN_THRESHOLD)
    activate(monkeypatch, tmp_path / "site", "fixed")
    reset_manager()
    yield
    reset_manager()


def _run(tmp_path, overrides, out):
    data = make_dataset(tmp_path / "data", n_train=6, n_val=6)
    cfg = load_run_config(write_config(tmp_path / f"{out}.yaml", data, "fixed-threshold"), overrides)
    lines = []
    Trainer(cfg, tmp_path / out, device="cpu", log=lines.append).run()
    return json.loads((tmp_path / out / "metrics.json").read_text()), lines


def test_the_strategys_threshold_is_kept_under_argmax(tmp_path, plugin):
    metrics, lines = _run(tmp_path, [], "own")
    assert (metrics["threshold"], metrics["positive"], metrics["threshold_source"]) == (0.3, "defect", "strategy")
    assert any("fixed-threshold's own threshold 0.3000" in line for line in lines)


def test_a_recall_policy_in_the_config_wins_and_says_so(tmp_path, plugin):
    metrics, lines = _run(tmp_path, ["train.threshold={policy: recall, class: defect, target: 1.0}"], "policy")
    assert metrics["threshold_source"] == "config" and metrics["threshold"] != 0.3
    assert any("train.threshold (recall) wins over fixed-threshold's own threshold 0.3000" in line for line in lines)
