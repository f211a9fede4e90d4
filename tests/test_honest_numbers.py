"""Numbers that agree with each other: argmax beside the operating point, the baseline's real budget, one format."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

ROOT = Path(__file__).resolve().parents[1]


def test_quick_demo_config_trains_no_baseline():
    from edgetl.config import load_run_config

    cfg = load_run_config(ROOT / "examples/defect_detection/textures-linear-probe.yaml")
    assert cfg.train.baseline == "none"


def test_deploy_and_verify_lines_format_tolerances_one_way():
    from edgetl.cli.deploy_cmd import describe

    report = {"reference": {"passed": True, "n": 32, "label_agreement": 1.0, "max_abs_diff": 0.0123456,
                            "tolerance": {"label_agreement": 0.98, "max_abs_diff": 0.15}}}
    line = next(x for x in describe(SimpleNamespace(report=report, error=None)) if x.startswith("reference"))
    assert "label agreement 1.000 (need >= 0.980)" in line and "max |diff| 0.0123 (bound 0.15)" in line


class TestReport:
    """A tiny run with an operating point and a scratch baseline, under both budgets."""

    @pytest.fixture(scope="class")
    def runs(self, tmp_path_factory):
        import edgetl

        root = tmp_path_factory.mktemp("honest")
        data = make_dataset(root / "data", n_train=12, n_val=6)
        config = write_config(root / "c.yaml", data, "linear-probe", epochs=2, lr=0.05)
        common = {"train": {"baseline": "scratch", "threshold": {"policy": "recall", "class": "defect",
                                                                 "target": 0.8}}}
        lines: list[str] = []
        wall = edgetl.train(config, out=root / "wall", log=lines.append, **common)
        epochs = edgetl.train(config, out=root / "epochs", log=None, **{"train.baseline_budget": "epochs"}, **common)
        return wall, epochs, lines

    def test_report_shows_argmax_and_operating_point_side_by_side(self, runs):
        wall, _, lines = runs
        report = wall.report.read_text()
        threshold = wall.metrics["threshold"]
        assert "| val | argmax | 12 |" in report and f"| val | p(defect) ≥ {threshold:.3f} | 12 |" in report
        assert "Two decisions, side by side" in report and "`val_acc`/`val_bacc`" in report
        argmax = wall.metrics["final_argmax"]["val"]
        assert argmax["threshold"] is None and argmax["n"] == wall.metrics["final"]["val"]["n"]
        assert any("| val | argmax |" in line for line in lines)  # the training log ends with the same table

    def test_wall_clock_baseline_says_its_budget_and_flags_a_single_epoch(self, runs):
        wall, _, lines = runs
        base = wall.metrics["baseline"]
        assert base["budget"] == "wall_clock" and base["epochs_run"] >= 1
        report = wall.report.read_text()
        assert "budget: the same wall-clock as this run's training" in report
        assert f"{base['epochs_run']} epoch(s) in" in report
        assert ("**The baseline ran a single epoch**" in report) == (base["epochs_run"] == 1) == base["single_epoch"]
        assert "same budget: " not in report  # the old claim that did not say which budget

    def test_epochs_budget_runs_the_same_epochs(self, runs):
        _, epochs, _ = runs
        base = epochs.metrics["baseline"]
        assert base["budget"] == "epochs" and base["epochs_run"] == 2 and not base["single_epoch"]
        assert "budget: the same number of epochs (2): 2 run in" in epochs.report.read_text()
        assert json.loads((epochs.dir / "metrics.json").read_text())["baseline"]["budget_epochs"] == 2
