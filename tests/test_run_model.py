"""The run directory's model file: any module in, the same outputs back; runs of another format are refused."""

from __future__ import annotations

import importlib
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from torch import nn  # noqa: E402

from edgetl.api import InputSpec, Strategy, TrainedModel  # noqa: E402
from edgetl.errors import DataError, EdgetlError, PluginError  # noqa: E402
from edgetl.host.contract import check_trained  # noqa: E402
from edgetl.host.run import load_run, save_run_model  # noqa: E402

SPEC = InputSpec(size=(16, 16))


ANOMALY = '''
import torch
from torch import nn


class Anomaly(nn.Module):
    """A toy anomaly model with its own layers: (score (N,), map (N, 1, H, W))."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        heat = torch.sigmoid(self.conv(x))
        return heat.amax(dim=(1, 2, 3)), heat
'''


class Named(Strategy):
    name = "toy"
    plugin = "toys"

    def fit(self, ctx):
        raise NotImplementedError


def _save(tmp_path, trained):
    save_run_model(tmp_path / "run", trained, backbone="timm:test_efficientnet", strategy="toy", input_spec=SPEC,
                   name="toy")
    return load_run(tmp_path / "run")


def test_an_anomaly_module_with_tuple_outputs_round_trips(tmp_path, monkeypatch):
    # the module's class lives in a module of its own, gone (neither imported nor importable) when the run
    # is loaded: what a fresh interpreter without the strategy's code sees
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "edgetl_test_toy_anomaly.py").write_text(ANOMALY)
    with monkeypatch.context() as scoped:
        scoped.syspath_prepend(str(tmp_path / "code"))
        module = importlib.import_module("edgetl_test_toy_anomaly")
        torch.manual_seed(0)
        module = module.Anomaly().eval()
        run = _save(tmp_path, TrainedModel(module=module, task="anomaly", labels=["good", "anomaly"],
                                           output="anomaly_score"))
        del sys.modules["edgetl_test_toy_anomaly"]
    importlib.invalidate_caches()
    with pytest.raises(ImportError):
        importlib.import_module("edgetl_test_toy_anomaly")
    run = load_run(tmp_path / "run")
    x = torch.randn(3, 3, 16, 16)
    score, heat = run.model(x)
    expected_score, expected_heat = module(x)
    assert torch.allclose(score, expected_score) and torch.allclose(heat, expected_heat)
    assert tuple(score.shape) == (3,) and tuple(heat.shape) == (3, 1, 16, 16)
    assert run.task == "anomaly" and run.output == "anomaly_score"
    assert "edgetl_test_toy_anomaly" not in sys.modules  # loading did not need the class


def test_a_run_directory_of_another_format_is_one_line(tmp_path):
    """Only format 2 (``model.pt2`` + ``model.pt``) loads; anything else is refused naming the file."""
    (tmp_path / "old").mkdir()
    torch.save({"format": 1, "name": "old"}, tmp_path / "old" / "model.pt")
    with pytest.raises(DataError, match=r"model\.pt: model format 1, expected 2$"):
        load_run(tmp_path / "old")


def test_check_names_the_plugin_for_a_wrong_anomaly_output():
    trained = TrainedModel(module=nn.Conv2d(3, 1, 1), task="anomaly", labels=["good", "anomaly"])
    with pytest.raises(PluginError, match=r"^strategy 'toy' \(plugin toys\): fit returned a module whose output "
                                          r"for a \(2, 3, 16, 16\) batch is \(2, 1, 16, 16\); expected a tuple"):
        check_trained(Named(), trained, torch.zeros(2, 3, 16, 16))


def test_check_refuses_a_threshold_without_its_class_and_a_non_module():
    with pytest.raises(PluginError, match="threshold 0.3 needs positive="):
        check_trained(Named(), TrainedModel(module=nn.Identity(), task="classify", labels=["a", "b"],
                                            threshold=0.3), torch.zeros(2, 3, 4, 4))
    with pytest.raises(PluginError, match="TrainedModel.module is str"):
        check_trained(Named(), TrainedModel(module="nope", task="classify", labels=["a", "b"]), torch.zeros(1))


def test_a_module_torch_export_cannot_capture_is_one_line_naming_the_strategy():
    class DataDependent(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # Python branching on a tensor value: not capturable
                return torch.softmax(x.mean(dim=(2, 3))[:, :2], dim=1)
            return torch.softmax(-x.mean(dim=(2, 3))[:, :2], dim=1)

    trained = TrainedModel(module=DataDependent(), task="classify", labels=["a", "b"])
    with pytest.raises(EdgetlError, match=r"^strategy 'toy' \(plugin toys\): the returned module cannot be saved"):
        check_trained(Named(), trained, torch.ones(2, 3, 4, 4))


def test_tta_views_pass_through_the_module_as_one_batch():
    from edgetl.training import WithTTA, apply_view

    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3), nn.Softmax(dim=1)).eval()
    batches = []
    module.register_forward_hook(lambda m, args, out: batches.append(len(args[0])))
    x = torch.randn(2, 3, 4, 4)
    views = ["hflip", "vflip", "rot180"]
    out = WithTTA(module, views)(x)
    assert batches == [8]  # 2 images x (identity + 3 views), one call
    expected = sum(module(apply_view(x, v)) for v in ["identity", *views]) / 4
    assert torch.allclose(out, expected, atol=1e-6)
