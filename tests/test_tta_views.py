"""Test-time views over the 8 symmetries of the square: the module, a trained run, eval/predict, export."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from bundle_factory import make_tiny_run  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from test_torch_free import BLOCKER, ROOT  # noqa: E402
from torch import nn  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.cli import cli  # noqa: E402
from edgetl.host.export import ExportOptions, export_run  # noqa: E402
from edgetl.host.run import load_run, save_run_model  # noqa: E402
from edgetl.preprocess import preprocess_file  # noqa: E402
from edgetl.training import SQUARE_TTA_VIEWS, TTA_VIEWS, VIEWS, Classifier, WithTTA, apply_view  # noqa: E402

DIHEDRAL = [*TTA_VIEWS, *SQUARE_TTA_VIEWS]  # the 7 non-identity symmetries
OPENVINO_PROFILE = ROOT / "targets" / "x86-openvino-cpu.yaml"


def orientation_sensitive() -> nn.Module:
    """(N, 3, 5, 5) -> (N, 3) probabilities from a dense layer over every pixel: no symmetry of its own."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 5, 3), nn.Softmax(dim=1)).eval()


def invoke(*args):
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.stdout, result.stderr


# -- the module -------------------------------------------------------------
def test_eight_view_tta_is_the_mean_over_the_eight_transformed_inputs_in_one_batch():
    module = orientation_sensitive()
    batches = []
    module.register_forward_hook(lambda m, args, out: batches.append(len(args[0])))
    x = torch.randn(2, 3, 5, 5)
    out = WithTTA(module, DIHEDRAL)(x)
    assert batches == [16]  # 2 images x 8 views, one call
    assert set(DIHEDRAL) | {"identity"} == set(VIEWS)
    expected = sum(module(apply_view(x, v)) for v in VIEWS) / 8
    assert torch.allclose(out, expected, atol=1e-6)


def test_eight_view_tta_gives_one_output_for_an_image_and_each_of_its_symmetries():
    module = orientation_sensitive()
    x = torch.randn(2, 3, 5, 5)
    tta = WithTTA(module, DIHEDRAL)
    for view in DIHEDRAL:
        moved = apply_view(x, view)
        assert not torch.allclose(module(moved), module(x), atol=1e-3), view  # the bare module does see it
        assert torch.allclose(tta(moved), tta(x), atol=1e-6), view
    # flips alone are not enough: a quarter turn changes the 4-view average
    flips = WithTTA(module, TTA_VIEWS)
    assert not torch.allclose(flips(apply_view(x, "rot90")), flips(x), atol=1e-3)


def test_square_views_refuse_a_non_square_batch_and_unknown_names():
    module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Softmax(dim=1))
    with pytest.raises(ValueError, match=r"^view 'transpose' swaps height and width, so it needs a square input, "
                                         r"and this one is 4x6 \(H x W\)"):
        WithTTA(module, ["hflip", "transpose"])(torch.zeros(1, 3, 4, 6))
    assert WithTTA(module, TTA_VIEWS)(torch.zeros(1, 3, 4, 6)).shape == (1, 3)  # shape-preserving ones: any size
    with pytest.raises(ValueError, match=r"unknown test-time view 'rot45' \(known: hflip, vflip, rot180, rot90"):
        WithTTA(module, ["rot45"])
    with pytest.raises(ValueError, match="unknown test-time view 'identity'"):  # the identity is always in
        WithTTA(module, ["identity"])


def test_train_tta_over_a_strategy_that_already_averages_views_is_one_layer_over_both_lists():
    from edgetl.api import TrainedModel
    from edgetl.host.engine import with_tta

    module = orientation_sensitive()
    batches = []
    module.register_forward_hook(lambda m, args, out: batches.append(len(args[0])))
    trained = TrainedModel(module=WithTTA(module, ["hflip", "rot90"]), task="classify", labels=["a", "b", "c"])
    line = with_tta(trained, ["rot90", "vflip"])
    assert line == ("train.tta: the strategy's model already averages views ['hflip', 'rot90']; one layer over "
                    "['hflip', 'rot90', 'vflip'] (not one inside the other)")
    assert trained.module.views == ("hflip", "rot90", "vflip") and trained.module.module is module
    x = torch.randn(2, 3, 5, 5)
    out = trained.module(x)
    assert batches == [8]  # 2 images x (identity + 3 views), not 2 x 3 x 3
    expected = sum(module(apply_view(x, v)) for v in ("identity", "hflip", "rot90", "vflip")) / 4
    assert torch.allclose(out, expected, atol=1e-6)
    plain = TrainedModel(module=module, task="classify", labels=["a", "b", "c"])
    assert with_tta(plain, ["vflip"]) is None and plain.module.views == ("vflip",)


def test_evaluation_batches_hold_fewer_images_under_tta_so_each_call_keeps_its_size(monkeypatch):
    import types

    import edgetl.training.data as training_data
    from edgetl.host.engine import Trainer

    asked = []
    monkeypatch.setattr(training_data, "predict", lambda module, data, device, batch_size, **kw: asked.append(batch_size))
    trainer = types.SimpleNamespace(cfg=types.SimpleNamespace(train=types.SimpleNamespace(batch_size=32)),
                                    device="cpu", info=None, progress=lambda *a: None)
    split = types.SimpleNamespace(name="val", plain=None)
    module = orientation_sensitive()
    Trainer.predict(trainer, module, split)
    Trainer.predict(trainer, WithTTA(module, DIHEDRAL), split)
    Trainer.predict(trainer, WithTTA(module, ["hflip"]), split)
    assert asked == [64, 8, 32]  # 64 inputs per call: 64 images, 8 x 8 views, 32 x 2


def test_the_view_names_load_without_torch():
    code = BLOCKER + ("from edgetl.training import SQUARE_TTA_VIEWS, TTA_VIEWS\n"
                      "from edgetl.training.view_names import check_tta_views\n"
                      "check_tta_views(['rot90'], (8, 8))\n"
                      "print(TTA_VIEWS + SQUARE_TTA_VIEWS)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(tuple(DIHEDRAL))


# -- a run trained with train.tta: [rot90, transpose] ---------------------------
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tta"), n_train=8, n_val=6)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("tta-run")
    cfg = write_config(root / "c.yaml", data, epochs=1, tta=["rot90", "transpose"])
    code, _, err = invoke("train", str(cfg), "--out", str(root / "run"), "--device", "cpu")
    assert code == 0, err
    return root / "run"


def trained_classifier(run_dir) -> Classifier:
    """The Classifier a tiny run saved (inside its WithTTA: keys ``module.*``), rebuilt from model.pt."""
    from edgetl.plugins import get_manager

    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    model = Classifier(backbone.build(pretrained=False), backbone.feature_dim, 2, dropout=0.0)
    state = torch.load(run_dir / "model.pt", weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    return model.eval()


def test_a_run_trained_with_square_views_keeps_them_in_its_saved_model(run):
    loaded = load_run(run)
    classifier = trained_classifier(run)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = sum(classifier(apply_view(x, v)) for v in ("identity", "rot90", "transpose")) / 3
        assert torch.allclose(loaded.model(x), expected, atol=1e-5)
        assert not torch.allclose(classifier(x), expected, atol=1e-4)  # the views change the answer here
    assert "test-time views rot90, transpose" in (run / "report.md").read_text()


def test_eval_and_predict_on_the_run_use_the_views(run, data):
    code, out, err = invoke("eval", str(run), str(data / "val"), "--json")
    assert code == 0, err
    trained = json.loads((run / "metrics.json").read_text())["final"]["val"]
    assert json.loads(out)["accuracy"] == pytest.approx(trained["accuracy"])
    image = sorted((data / "val" / "defect").glob("*.png"))[0]
    code, out, err = invoke("predict", str(run), str(image), "--json")
    assert code == 0, err
    x = torch.from_numpy(preprocess_file(image, load_run(run).input))
    with torch.no_grad():
        classifier = trained_classifier(run)
        want = (sum(classifier(apply_view(x, v)) for v in ("identity", "rot90", "transpose")) / 3)[0]
    scores = json.loads(out)["scores"]
    assert [scores["defect"], scores["good"]] == pytest.approx(want.tolist(), abs=1e-5)


def test_square_views_on_a_non_square_input_stop_train_before_anything_is_written(data, tmp_path, monkeypatch):
    from edgetl_builtins.timm.backbones import TimmBackbone

    original = TimmBackbone.__init__

    def wide(self, *args, **kwargs):  # a backbone whose own input is 32 x 48 (H x W)
        original(self, *args, **kwargs)
        self.input = dataclasses.replace(self.input, size=(32, 48))

    monkeypatch.setattr(TimmBackbone, "__init__", wide)
    cfg = write_config(tmp_path / "c.yaml", data, epochs=1)
    code, out, err = invoke("train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu",
                            "--set", "train.image_size=null", "--set", "train.tta=[hflip, rot270]")
    assert code in (1, 2) and out == "" and "Traceback" not in err
    assert "train.tta: view 'rot270' swaps height and width, so it needs a square input, and this one is 32x48" \
        in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
    code, _, err = invoke("train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu",
                          "--set", "train.tta=[rot45]")
    assert code in (1, 2) and "train.tta: unknown test-time view 'rot45'" in err, err
    assert not (tmp_path / "run").exists()


# -- export ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def dihedral_run(tmp_path_factory):
    """The tiny run's model wrapped in all 7 views and saved as a run of its own (48 x 48 input)."""
    root = tmp_path_factory.mktemp("tta-export")
    base_dir = make_tiny_run(root)
    base = load_run(base_dir)
    trained = dataclasses.replace(base.trained(), module=WithTTA(trained_classifier(base_dir), DIHEDRAL))
    save_run_model(root / "runs" / "dihedral", trained, backbone=base.backbone, strategy=base.strategy,
                   input_spec=base.input, name="dihedral", config=base.config)
    return root / "runs" / "dihedral"


def val_batch(run_dir) -> np.ndarray:
    spec = load_run(run_dir).input
    paths = sorted((run_dir.parent.parent / "data" / "val").rglob("*.png"))[::4]
    return np.concatenate([preprocess_file(p, spec) for p in paths])


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_eight_view_model_exports_through_the_fp32_gate_and_stays_invariant(dihedral_run, tmp_path, fmt):
    from edgetl.bundle_predictor import BundlePredictor

    if fmt == "openvino":
        pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgetl[openvino]')")
    target = {"target": OPENVINO_PROFILE} if fmt == "openvino" else {}
    result = export_run(dihedral_run, ExportOptions(format=fmt, precision="fp32", calib_count=16, latency_runs=2,
                                                    out=tmp_path / "b.edgetl", **target))
    (attempt,) = result.attempts
    assert attempt["precision"] == "fp32" and attempt["passed"], attempt  # the gate: agreement with torch
    export = next(s for s in result.stages if s["stage"] == "export")
    assert export["detail"]["exporter"] == "dynamo"  # the transposes need no fallback exporter
    x = val_batch(dihedral_run)
    with torch.no_grad():
        want = load_run(dihedral_run).model(torch.from_numpy(x)).numpy()
    turned = apply_view(torch.from_numpy(x), "rot90").numpy().copy()
    with BundlePredictor(result.bundle) as predictor:
        got = np.concatenate([predictor.predict(image[None]) for image in x])
        got_turned = np.concatenate([predictor.predict(image[None]) for image in turned])
    assert np.abs(got - want).max() < 1e-4
    assert np.abs(got_turned - got).max() < 1e-4  # the exported graph averages the 8 views too
