"""Experiment tracking: a training run and its export, logged to TensorBoard and MLflow (offline)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("timm")

from click.testing import CliRunner  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.api import Logger, LoggerRun  # noqa: E402
from edgetl.cli import cli  # noqa: E402
from edgetl.config import LoggerConfig, load_run_config  # noqa: E402
from edgetl.errors import ConfigError, MissingDependencyError  # noqa: E402
from edgetl.plugins import PluginManager  # noqa: E402
from edgetl.tracking import Tracking, flatten  # noqa: E402

HAVE_TB = importlib.util.find_spec("tensorboard") is not None
HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None
needs_tb = pytest.mark.skipif(not HAVE_TB, reason="tensorboard is not installed (pip install 'edgetl[tensorboard]')")
needs_mlflow = pytest.mark.skipif(not HAVE_MLFLOW, reason="mlflow is not installed (pip install 'edgetl[mlflow]')")


def _config(tmp_path, data, loggers) -> str:
    path = write_config(tmp_path / "c.yaml", data, epochs=2)
    cfg = yaml.safe_load(path.read_text())
    cfg["loggers"] = loggers
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """One 2-epoch training run with both loggers, then one ONNX export of it."""
    if not (HAVE_TB and HAVE_MLFLOW):
        pytest.skip("needs tensorboard and mlflow (pip install 'edgetl[tensorboard,mlflow]')")
    pytest.importorskip("onnxruntime")
    root = tmp_path_factory.mktemp("tracked")
    data = make_dataset(root / "data", n_train=12, n_val=6)
    config = _config(root, data, ["tensorboard", {"name": "mlflow", "options": {"experiment": "tiny"}}])
    run = root / "run"
    result = CliRunner().invoke(cli, ["train", config, "--out", str(run), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    from edgetl.host.export import ExportOptions, export_run

    export_run(run, ExportOptions(format="onnx", precision="fp32", calib_count=8, latency_runs=0,
                                  out=root / "b.edgetl"))
    return run, result.stderr


@needs_tb
def test_training_run_writes_tensorboard_events(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, stderr = tracked
    assert "tracking with tensorboard, mlflow" in stderr
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("val_loss")] == [1, 2]  # one point per epoch
    assert {"train_loss", "val_balanced_accuracy"} <= set(tags["scalars"])
    assert "figures/curves" in tags["images"] and "figures/confusion_val" in tags["images"]
    assert any(t.startswith("export/onnx-fp32/") for t in tags["scalars"])  # export results, later process
    texts = set(tags["tensors"])  # add_text and hparams are stored as tensors
    assert {"config/text_summary", "export/text_summary", "status/text_summary"} <= texts


@needs_mlflow
def test_training_run_writes_an_mlflow_run_in_a_file_store(tracked):
    from mlflow.tracking import MlflowClient

    run, _ = tracked
    state = json.loads((run / "mlflow.json").read_text())
    assert state["tracking_uri"] == (run / "mlruns").resolve().as_uri()  # default: file store in the run
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    mlrun = client.get_run(state["run_id"])
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "tiny"
    assert client.get_experiment(mlrun.info.experiment_id).name == "tiny"
    assert mlrun.data.params["train.epochs"] == "2" and mlrun.data.params["strategy.name"] == "finetune"
    assert [m.step for m in client.get_metric_history(state["run_id"], "val_loss")] == [1, 2]
    assert any(k.startswith("export.onnx.fp32.") for k in mlrun.data.metrics)
    top = {a.path for a in client.list_artifacts(state["run_id"])}
    assert {"figures", "run", "exports"} <= top
    saved = {a.path for a in client.list_artifacts(state["run_id"], "run")}
    assert {"run/model.pt", "run/config.yaml", "run/metrics.json", "run/report.md"} <= saved
    assert not any("mlruns" in p for p in saved)  # the store is not copied into itself


def test_loggers_config_accepts_names_and_mappings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "data": {"train": "d"},
                                    "loggers": ["tensorboard", {"name": "mlflow", "options": {"tracking_uri": "u"}}]}))
    cfg = load_run_config(path)
    assert [(lg.name, lg.options) for lg in cfg.loggers] == [("tensorboard", {}), ("mlflow", {"tracking_uri": "u"})]
    path.write_text(yaml.safe_dump({"name": "x", "data": {"train": "d"}, "loggers": [{"nme": "mlflow"}]}))
    with pytest.raises(ConfigError, match="loggers.0"):
        load_run_config(path)


def test_unknown_logger_and_unknown_option_stop_before_training(tmp_path):
    data = make_dataset(tmp_path / "data", n_train=4, n_val=2)
    result = CliRunner().invoke(cli, ["train", _config(tmp_path, data, ["tensorbord"]), "--out",
                                      str(tmp_path / "r1"), "--device", "cpu"])
    assert result.exit_code == 1 and "unknown logger 'tensorbord'; did you mean 'tensorboard'" in result.stderr
    assert not (tmp_path / "r1").exists()  # checked before the run directory is made
    if HAVE_MLFLOW:
        bad = [{"name": "mlflow", "options": {"tracking_url": "x"}}]
        result = CliRunner().invoke(cli, ["train", _config(tmp_path, data, bad), "--out", str(tmp_path / "r2"),
                                          "--device", "cpu"])
        assert result.exit_code == 1 and "mlflow: unknown option(s) tracking_url" in result.stderr


def test_missing_library_is_an_install_hint_and_the_plugin_is_listed_unavailable(monkeypatch, tmp_path):
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    pm = PluginManager()
    info = pm.plugins["edgetl_builtins.loggers"]
    assert info.status in ("partial", "unavailable") and "pip install 'edgetl[mlflow]'" in info.reason
    monkeypatch.setattr("edgetl.plugins._MANAGER", pm)
    cfg = load_run_config(write_config(tmp_path / "c.yaml", tmp_path, epochs=1))
    cfg = cfg.model_copy(update={"loggers": [LoggerConfig(name="mlflow")]})
    with pytest.raises(MissingDependencyError, match=r"edgetl\[mlflow\]"):
        Tracking.start(cfg, tmp_path / "run")


def test_a_logger_that_fails_mid_run_is_reported_and_dropped_not_fatal():
    class Flaky(LoggerRun):
        calls = 0

        def log_metrics(self, step, metrics):
            Flaky.calls += 1
            raise OSError("tracking server went away")

    said: list[str] = []
    tracking = Tracking([("flaky", Flaky())], log=said.append)
    tracking.metrics({"epoch": 1, "val_loss": 0.5})
    tracking.metrics({"epoch": 2, "val_loss": 0.4})
    tracking.finish(None)
    assert Flaky.calls == 1 and len(said) == 1 and "logger flaky failed in log_metrics" in said[0]


def test_history_rows_become_numeric_metrics_and_baseline_rows_are_prefixed():
    seen = []

    class Rec(LoggerRun):
        def log_metrics(self, step, metrics):
            seen.append((step, metrics))

    tracking = Tracking([("rec", Rec())], log=lambda m: None)
    tracking.metrics({"epoch": 3, "strategy": "finetune", "val_loss": 0.25, "best": True})
    tracking.metrics({"epoch": 1, "val_loss": 0.5}, tag="baseline-scratch")
    assert seen == [(3, {"val_loss": 0.25, "best": 1.0}), (1, {"baseline-scratch/val_loss": 0.5})]
    assert flatten({"train": {"lr": 0.1, "tta": ["hflip"]}, "name": "x"}) == {
        "train.lr": 0.1, "train.tta": "['hflip']", "name": "x"}


def test_logger_default_resume_starts_a_run_named_after_the_folder(tmp_path):
    class L(Logger):
        name = "rec"

        def start(self, run_name, params, run_dir, options):
            self.args = (run_name, params, run_dir, options)
            return None

    logger = L()
    logger.resume(tmp_path / "myrun", {"a": 1})
    assert logger.args == ("myrun", {}, tmp_path / "myrun", {"a": 1})


def test_train_resume_continues_each_loggers_run(tmp_path, monkeypatch):
    from tests.plugin_factory import activate, make_plugin

    make_plugin(tmp_path / "site", "rec", """
from edgetl import api
from edgetl.hookspecs import hookimpl
calls = []
class Run(api.LoggerRun):
    def log_metrics(self, step, metrics): pass
class Rec(api.Logger):
    name = "rec"
    def start(self, run_name, params, run_dir, options):
        calls.append(("start", run_name, params["train.epochs"])); return Run()
    def resume(self, run_dir, options):
        calls.append(("resume", run_dir.name)); return Run()
@hookimpl
def edgetl_loggers(register): register(Rec())
""")
    activate(monkeypatch, tmp_path / "site", load="rec")
    monkeypatch.setattr("edgetl.plugins._MANAGER", PluginManager())
    cfg = load_run_config(write_config(tmp_path / "c.yaml", tmp_path, epochs=4))
    cfg = cfg.model_copy(update={"loggers": [LoggerConfig(name="rec")]})
    Tracking.start(cfg, tmp_path / "run", log=lambda m: None)
    Tracking.start(cfg, tmp_path / "run", log=lambda m: None, resume=True)
    import sys

    assert sys.modules["edgetl_test_rec"].calls == [("start", "tiny", 4), ("resume", "run")]
