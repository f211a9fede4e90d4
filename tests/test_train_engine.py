"""``edgetl train``: the run directory, errors a user can act on, resume, determinism, DDP, baseline."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from click.testing import CliRunner  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.cli import cli  # noqa: E402
from edgetl.config import load_run_config  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402
from edgetl.host.run import load_run  # noqa: E402
from edgetl.training import loop  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_train=12, n_test=6)


def run_cli(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]


def test_train_writes_the_run_directory(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=2)
    code, out, err = run_cli("train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu", "--json",
                             "--set", "train.threshold.policy=recall", "--set", "train.threshold.class=defect",
                             "--set", "train.threshold.target=0.9")
    assert code == 0, err
    summary = json.loads(out)  # stdout holds only the JSON document
    run = tmp_path / "run"
    for name in ("model.pt", "config.yaml", "metrics.json", "history.csv", "report.md", "curves.png",
                 "confusion_val.png", "per_class_val.png", "roc_val.png", "confusion_test.png",
                 "predictions_val.csv", "predictions_test.csv"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert "finetune epoch   1" in err and "finetune epoch   2" in err  # one line per epoch on stderr
    assert "evaluate val: 20/20 images" in err and "evaluate test: 12/12 images" in err  # the final evaluation
    history = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in history] == ["1", "2"]
    assert {"train_loss", "val_loss", "val_accuracy", "val_balanced_accuracy", "lr_head", "epoch_time_s"} <= set(
        history[0])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"]["test"]["n"] == 12 and metrics["final"]["val"]["n"] == 20
    assert metrics["positive"] == "defect" and 0 <= metrics["threshold"] <= 1
    assert metrics["final"]["val"]["recall_at_threshold"] >= 0.9  # chosen on val, so it holds there
    assert summary["threshold"] == metrics["threshold"] and summary["test"]["n"] == 12
    loaded = load_run(run)
    assert loaded.labels == ["defect", "good"] and loaded.threshold == metrics["threshold"]
    assert loaded.positive == "defect" and loaded.input.size == (32, 32) and loaded.name == "tiny"
    probs = loaded.model(torch.zeros(2, 3, 32, 32))
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(1), torch.ones(2))
    report = (run / "report.md").read_text()
    assert "validation split only" in report and "![curves](curves.png)" in report


def test_out_exists_needs_resume_or_force(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=1)
    (tmp_path / "run").mkdir()
    code, _, err = run_cli("train", str(cfg), "--out", str(tmp_path / "run"))
    assert code == 2 and "already exists; pass --resume" in err and "Traceback" not in err
    code, _, err = run_cli("train", str(cfg), "--out", str(tmp_path / "run"), "--force", "--device", "cpu")
    assert code == 0, err


def test_a_failed_train_leaves_nothing_behind_and_the_fixed_command_runs(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=1)
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(cfg), "--out", str(run), "--device", "cpu",
                           "--set", f"data.val={tmp_path / 'no-val'}")  # fails after the run folder is made
    assert code != 0 and "no-val" in err and not run.exists(), err
    code, _, err = run_cli("train", str(cfg), "--out", str(run), "--device", "cpu")  # no --force needed
    assert code == 0 and (run / "model.pt").is_file(), err


def test_train_without_a_yaml_takes_the_folder_layout(tmp_path, data):
    import yaml

    tiny = ["--backbone", "timm:test_efficientnet", "--set", "backbone.pretrained=false", "--set",
            "train.image_size=32", "--set", "train.epochs=1", "--device", "cpu"]
    code, _, err = run_cli("train", "--data", str(data), *tiny, "--out", str(tmp_path / "split"))
    assert code == 0, err
    cfg = yaml.safe_load((tmp_path / "split" / "config.yaml").read_text())
    assert cfg["data"]["train"] == str(data / "train") and cfg["data"]["val"] == str(data / "val")
    assert cfg["data"]["test"] == str(data / "test") and cfg["strategy"]["name"] == "linear-probe"
    assert cfg["name"] == data.name
    from edgetl.workflow.training import folder_config

    flat = folder_config(data / "train")  # one folder of class folders: split by the seed
    assert flat["data"] == {"train": str(data / "train"), "val_split": 0.2}
    flat_config = {**flat, "backbone": {"name": "timm:test_efficientnet", "pretrained": False}}
    from edgetl.config import RunConfig, validate

    assert validate(RunConfig, flat_config, "flat").data.val_split == 0.2
    code, _, err = run_cli("train")
    assert code == 2 and "give a run config (CONFIG.yaml) or --data DIR" in err


@pytest.mark.parametrize("override, message", [
    ("strategy.name=finetun", "unknown strategy 'finetun'; did you mean 'finetune'"),
    ("train.lr=-0.1", "train.lr: Input should be greater than 0"),
    ("data.train=/nonexistent/train", "data.train: /nonexistent/train: no such directory"),
    ("strategy.options.unfrezee=2", "strategy.options.unfrezee: unknown option of 'finetune'; did you mean 'unfreeze'"),
    ("train.threshold.policy=recall", "policy 'recall' needs 'class'"),
    ("backbone.name=timm:no_such_net_xyz", "timm:no_such_net_xyz"),
])
def test_bad_configs_fail_with_one_line(tmp_path, data, override, message):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=1)
    code, out, err = run_cli("train", str(cfg), "--out", str(tmp_path / "run"), "--set", override,
                             "--device", "cpu")
    assert code in (1, 2) and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3 and out == ""
    if override.startswith("strategy."):  # Strategy.check_options ran before the run directory was made
        assert not (tmp_path / "run").exists()


def test_threshold_class_must_be_a_label(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=1)
    code, _, err = run_cli("train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu",
                           "--set", "train.threshold={policy: recall, class: crack, target: 0.9}")
    assert code == 1 and "train.threshold.class: 'crack' is not a class" in err


def _trainer(tmp_path, data, out, resume=False, epochs=2):
    cfg = load_run_config(write_config(tmp_path / "c.yaml", data, epochs=epochs, dropout=0.2, lr=0.01),
                          ["augment=[hflip, vflip]", "strategy.options.freeze_bn=false"])
    return Trainer(cfg, tmp_path / out, device="cpu", resume=resume, log=lambda m: None)


def test_rerun_is_deterministic_and_resume_continues_exactly(tmp_path, data, monkeypatch):
    # an interrupted-then-resumed run equal to bit to an uninterrupted one proves both re-run
    # determinism (same seed -> same weights) and an exact resume
    _trainer(tmp_path, data, "full").run()
    a = weights(tmp_path / "full")

    real_save = loop.save_checkpoint

    def interrupt(ctx, state):
        real_save(ctx, state)
        if state["epoch"] + 1 == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", interrupt)
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path, data, "cut").run()
    assert not (tmp_path / "cut" / "model.pt").exists() and (tmp_path / "cut" / "checkpoint.pt").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    _trainer(tmp_path, data, "cut", resume=True).run()
    c = weights(tmp_path / "cut")
    assert all(torch.equal(a[k], c[k]) for k in a)
    history = list(csv.DictReader((tmp_path / "cut" / "history.csv").open()))
    assert [r["epoch"] for r in history] == ["1", "2"]
    full = list(csv.DictReader((tmp_path / "full" / "history.csv").open()))
    assert [r["train_loss"] for r in history] == [r["train_loss"] for r in full]


def test_resume_without_checkpoint_is_an_error(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", data, epochs=1)
    (tmp_path / "run").mkdir()
    code, _, err = run_cli("train", str(cfg), "--out", str(tmp_path / "run"), "--resume", "--device", "cpu")
    assert code == 2 and "nothing to resume" in err


def test_evaluation_reports_images_done_after_each_batch():
    from edgetl.training.data import predict

    calls = []
    images = torch.utils.data.TensorDataset(torch.rand(10, 3, 4, 4), torch.zeros(10))
    out = predict(torch.nn.Flatten(), images, torch.device("cpu"), batch_size=4,
                  progress=lambda done, total: calls.append((done, total)))
    assert out.shape == (10, 48) and calls == [(4, 10), (8, 10), (10, 10)]


def test_trainer_prints_a_counted_stage_every_fifth_of_the_way(tmp_path, data):
    lines = []
    trainer = Trainer(load_run_config(write_config(tmp_path / "c.yaml", data)), tmp_path / "run", log=lines.append)
    for done in [*range(64, 654, 64), 654]:  # ELPV's test split in batches of 64
        trainer.progress("evaluate test", done, 654)
    trainer.progress("early stop: no better val loss for 3 epochs", 0, 0)  # a message: always printed
    trainer.progress("sam: second pass", 4, 10)  # any other stage: always printed, with its counts
    assert lines == [f"  evaluate test: {n}/654 images" for n in (192, 320, 448, 576, 654)] + [
        "early stop: no better val loss for 3 epochs", "sam: second pass 4/10"]


def test_scratch_baseline_is_reported(tmp_path, data):
    cfg = load_run_config(write_config(tmp_path / "c.yaml", data, epochs=1), ["train.baseline=scratch"])
    lines = []
    summary = Trainer(cfg, tmp_path / "run", device="cpu", log=lines.append).run()
    assert "  evaluate test (baseline-scratch): 12/12 images" in lines
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    base = metrics["baseline"]
    assert base["kind"] == "scratch" and isinstance(base["helped"], bool)
    assert base["delta_val"] == pytest.approx(base["main_val"] - base["baseline_val"])
    assert summary["baseline"]["kind"] == "scratch"
    assert "Negative-transfer check" in (tmp_path / "run" / "report.md").read_text()
    history = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert {r["strategy"] for r in history} == {"finetune", "baseline-scratch"}


# DDP (``--nproc 2``, gloo): the suite's one two-process run is in tests/test_strategy_docs.py,
# test_the_tutorial_under_two_processes_matches_one (the same weights, per-epoch loss and val accuracy,
# one JSON document from rank 0), where it also carries the tutorial's extra_loss under DDP.
