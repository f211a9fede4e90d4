"""Class-prior (logit) adjustment: the numpy rule, its choice on val, and a run whose saved model carries it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from edgetl.metrics import adjust, adjustment_offsets, evaluate, tune_adjustment


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_adjust_is_softmax_of_log_probs_plus_offsets_and_tau_0_is_the_argmax():
    rng = np.random.default_rng(0)
    p = _softmax(rng.normal(size=(50, 4)))
    prior = np.array([0.57, 0.11, 0.04, 0.28])
    off = adjustment_offsets(prior, 1.0)
    np.testing.assert_allclose(off, -np.log(prior / prior.sum()))
    np.testing.assert_allclose(adjust(p, off), _softmax(np.log(p) + off), atol=1e-12)
    np.testing.assert_allclose(adjust(p, adjustment_offsets(prior, 0.0)), p, atol=1e-12)
    with pytest.raises(ValueError, match="prior"):
        adjustment_offsets([0.5, 0.0], 1.0)


def _skewed(n_major=200, n_minor=20, seed=0):
    """A model that under-predicts the rare class 1: its probability is scaled down 4x."""
    rng = np.random.default_rng(seed)
    y = np.array([0] * n_major + [1] * n_minor)
    score = rng.normal(size=len(y)) + 1.6 * y
    p1 = 1 / (1 + np.exp(-(score - 1.0)))
    p = np.stack([1 - p1, p1], axis=1) * np.array([1.0, 0.25])
    return y, p / p.sum(axis=1, keepdims=True)


def test_tune_picks_a_tau_that_raises_balanced_accuracy_within_the_accuracy_bound():
    y, p = _skewed()
    prior = np.bincount(y) / len(y)
    tau, curve = tune_adjustment(y, p, prior)
    base = curve[0]
    assert curve[0]["tau"] == 0.0 and tau > 0
    chosen = next(c for c in curve if c["tau"] == tau)
    assert chosen["balanced_accuracy"] > base["balanced_accuracy"] + 0.05
    assert chosen["accuracy"] >= base["accuracy"] - 0.02 - 1e-12
    assert all(c["balanced_accuracy"] <= chosen["balanced_accuracy"] + 1e-12 for c in curve
               if c["accuracy"] >= base["accuracy"] - 0.02 - 1e-12)
    doc = evaluate(y, adjust(p, adjustment_offsets(prior, tau)), ["a", "b"])
    assert doc["balanced_accuracy"] == pytest.approx(chosen["balanced_accuracy"])
    # no accuracy to give up: argmax stays; a recall floor goes before the accuracy bound
    assert tune_adjustment(y, p, prior, max_accuracy_drop=0.0)[0] <= tau
    floor_tau, floor_curve = tune_adjustment(y, p, prior, max_accuracy_drop=0.0, min_recall=0.5)
    floor = next(c for c in floor_curve if c["tau"] == floor_tau)
    assert floor["meets_min_recall"] and min(floor["recall"].values()) >= 0.5


pytest.importorskip("torch")
pytest.importorskip("timm")

from train_fixtures import make_folder, one_torch_thread, write_config  # noqa: E402, F401


def _val_probs(run):
    with (run / "predictions_val.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    return np.array([[float(r["p_defect"]), float(r["p_good"])] for r in rows]), [r["predicted"] for r in rows]


def test_a_balanced_run_saves_the_adjusted_model_and_says_so(tmp_path):
    from edgetl.config import load_run_config
    from edgetl.host.engine import Trainer

    data = tmp_path / "data"
    make_folder(data / "train", {"good": 16, "defect": 4}, seed=1)
    make_folder(data / "val", {"good": 6, "defect": 6}, seed=2)
    runs = {}
    for name, policy in (("plain", "{policy: argmax}"), ("adjusted", "{policy: balanced, tau: 1.05}")):
        cfg = load_run_config(write_config(tmp_path / f"{name}.yaml", data, "linear-probe", epochs=1),
                              [f"train.threshold={policy}"])
        lines: list[str] = []
        Trainer(cfg, tmp_path / name, device="cpu", log=lines.append).run()
        runs[name] = (json.loads((tmp_path / name / "metrics.json").read_text()), lines)
    metrics, lines = runs["adjusted"]
    decision = metrics["decision"]
    assert decision["tau"] == 1.05 and decision["tau_from"] == "config"  # off the tuning grid: added to the curve
    assert decision["prior"] == pytest.approx({"defect": 0.2, "good": 0.8})
    assert runs["plain"][0]["decision"] is None and metrics["threshold"] is None
    assert any("class-prior adjustment, tau 1.05 (from config): val accuracy" in line for line in lines)
    assert "class-prior adjustment" in (tmp_path / "adjusted" / "report.md").read_text()
    plain, _ = _val_probs(tmp_path / "plain")
    adjusted, predicted = _val_probs(tmp_path / "adjusted")
    # same seed, same head: the saved model's outputs are the plain model's, adjusted (to the CSV's 6 decimals)
    np.testing.assert_allclose(adjusted, adjust(plain, decision["offsets"]), atol=2e-5)
    assert predicted == [["defect", "good"][i] for i in adjusted.argmax(axis=1)]
    # the bundle (ONNX, read without torch on a device) outputs the same adjusted probabilities
    from edgetl.bundle_predictor import BundlePredictor
    from edgetl.host.export import ExportOptions, export_run
    from edgetl.host.run import load_run
    from edgetl.preprocess import preprocess_file

    result = export_run(tmp_path / "adjusted", ExportOptions(format="onnx", precision="fp32", calib_count=8,
                                                             latency_runs=1, out=tmp_path / "adjusted.edgetl"))
    assert result.attempts[0]["passed"]
    with (tmp_path / "adjusted" / "predictions_val.csv").open() as fh:
        paths = [row["path"] for row in csv.DictReader(fh)]
    spec = load_run(tmp_path / "adjusted").input
    with BundlePredictor(result.bundle) as predictor:
        got = np.concatenate([predictor.predict(preprocess_file(p, spec)) for p in paths])
    np.testing.assert_allclose(got[:, [0, 1]], adjusted, atol=2e-5)


def test_tau_and_min_recall_belong_to_the_balanced_policy():
    from pydantic import ValidationError

    from edgetl.config import ThresholdPolicy

    assert ThresholdPolicy(policy="balanced", min_recall=0.1).tau is None
    with pytest.raises(ValidationError, match="belong to policy 'balanced'"):
        ThresholdPolicy(policy="argmax", tau=1.0)


def _fit_minority_recall(tau: float) -> tuple[float, float]:
    """A linear classifier trained by ``fit_epochs`` on 10:1 overlapping classes; (minority recall, accuracy)
    on fresh points drawn like the training set."""
    import torch
    from torch.utils.data import TensorDataset

    from edgetl.api import FitContext
    from edgetl.config import RunConfig
    from edgetl.training import Split, fit_epochs

    gen = torch.Generator().manual_seed(0)

    def draw(n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.cat([torch.zeros(n0, dtype=torch.long), torch.ones(n1, dtype=torch.long)])
        return torch.randn(n0 + n1, 2, generator=gen) + 1.5 * y[:, None].float(), y

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(2, 2)

        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.fc(x), dim=1)

    (x, y), (xv, yv), (xt, yt) = draw(600, 60), draw(200, 20), draw(2000, 200)
    cfg = RunConfig.model_validate({
        "name": "la", "data": {"train": "t", "val": "v"}, "backbone": {"name": "efficientnet_lite0"},
        "strategy": {"name": "linear-probe"},
        "train": {"epochs": 30, "batch_size": 64, "lr": 0.05, "logit_adjustment": tau,
                  "early_stopping": {"metric": "loss", "patience": None}}})
    torch.manual_seed(0)
    model = Linear()
    ctx = FitContext(backbone=None, module=None, train=None, val=Split("val", None, None, yv.numpy(), []),
                     labels=["major", "minor"], options={}, config=cfg, device=torch.device("cpu"))
    fit_epochs(ctx, model, model.parameters(), tag="la", train=Split("train", TensorDataset(x, y), None, y.numpy(), []),
               val_inputs=TensorDataset(xv, yv))
    with torch.inference_mode():
        pred = model.logits(xt).argmax(dim=1)
    return float((pred[yt == 1] == 1).float().mean()), float((pred == yt).float().mean())


def test_logit_adjusted_loss_makes_the_models_own_argmax_find_the_rare_class():
    """``train.logit_adjustment`` (tau 1, balanced softmax) moves the raw argmax toward the 1-in-11 class:
    on these overlapping classes the plain loss finds few of them, the adjusted one most."""
    plain_recall, plain_acc = _fit_minority_recall(0.0)
    la_recall, la_acc = _fit_minority_recall(1.0)
    assert plain_recall < 0.5 and la_recall > plain_recall + 0.3, (plain_recall, la_recall)
    assert la_acc < plain_acc  # the trade: accuracy on the skewed mix is what it gives up
    from edgetl.training import prior_shift

    np.testing.assert_allclose(prior_shift(np.array([0, 0, 0, 1]), 3, 2.0), 2.0 * np.log([0.75, 0.25, 0.25]))
    assert prior_shift(np.array([0, 1]), 2, 0.0) is None
