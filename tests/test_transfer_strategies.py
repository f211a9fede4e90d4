"""The transfer-learning strategies (plugins/edgetl_builtins/transfer): lora, dann, intermediate-pretrain.

Tiny backbone, tiny synthetic images: each strategy trains a few steps,
reports its negative-transfer check, exports through the gate (ONNX and
OpenVINO, signed) and is installed on one shared agent, whose /v1/predict must
give the host model's class; LoRA's parameter sets, merge parity and plain exported graph;
DANN's gradient reversal and its dropped domain head.
"""

from __future__ import annotations

import importlib.util
import json
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from serve_support import exports_and_serves, running_agent  # noqa: E402
from train_fixtures import make_dataset, make_folder, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.config import load_run_config  # noqa: E402
from edgetl.errors import ConfigError  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("tiny"), n_train=12, n_val=6)
    make_folder(root / "target" / "cam2", {"good": 6, "defect": 6}, seed=7)  # layout is ignored: all images count
    return root


def train(tmp_path, data, strategy, options=None, overrides=(), **kw):
    cfg_path = write_config(tmp_path / "run.yaml", data, strategy, options, **{"epochs": 2, **kw})
    overrides = [f"data.target_unlabeled={data / 'target'}", *overrides]
    cfg = load_run_config(cfg_path, overrides)
    summary = Trainer(cfg, tmp_path / "run", device="cpu", log=lambda m: None).run()
    return summary, json.loads((tmp_path / "run" / "metrics.json").read_text())


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    with running_agent(tmp_path_factory) as running:
        yield running


def val_images(data):
    """Two val images of each class: what the agent must answer like the host."""
    return [p for cls in ("defect", "good") for p in sorted((data / "val" / cls).glob("*.png"))[:2]]


def tiny_classifier(seed=0):
    from edgetl.plugins import get_manager
    from edgetl.training import Classifier

    torch.manual_seed(seed)
    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    model = Classifier(backbone.build(pretrained=False), backbone.feature_dim, 2, dropout=0.0)
    return backbone, model


def onnx_op_types(module, tmp_path, name):
    import onnx

    from edgetl.api import ExportSpec
    from edgetl.plugins import get_manager

    files = get_manager().get("target", "onnx").export(module.eval(), torch.randn(1, 3, 32, 32), tmp_path / name,
                                                       ExportSpec())
    model = onnx.load(str(next(f for f in files if str(f).endswith(".onnx"))))
    return Counter(n.op_type for n in model.graph.node)


def assert_verdict(baseline, report, source_only=False):
    """The negative-transfer check: val figures of both, ``helped`` exactly when the adapted model is ahead."""
    key = baseline["metric"]
    assert baseline["main_val"] == pytest.approx(baseline["val"][key] + baseline["delta_val"])
    assert baseline["delta_val"] == pytest.approx(baseline["main_val"] - baseline["baseline_val"])
    assert baseline["helped"] is (baseline["delta_val"] > 0)
    verdict = "transfer **helped**" if baseline["helped"] else "transfer **did NOT help**"
    assert verdict in report and f"Baseline `{baseline['kind']}`" in report
    # dann and intermediate-pretrain adapt with the target images: their finetune baseline never saw them
    assert baseline["source_only"] is source_only and ("**source-only**" in report) is source_only


# -- lora -----------------------------------------------------------------
# a marker, not a module-level importorskip: that skipped the dann and intermediate-pretrain tests as well,
# and imported peft (1.6 s) in every pytest-xdist worker's collection
needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="peft is not installed (edgetl[peft])")


def lora_model(r=4, n_top=None, kinds=("conv", "linear")):
    from edgetl_builtins.transfer.lora import adapter_parameter_count, add_lora, lora_targets

    backbone, model = tiny_classifier()
    groups = backbone.layer_groups(model.features)
    names = lora_targets(model, groups, len(groups) if n_top is None else n_top, list(kinds))
    implied = adapter_parameter_count(model, names, r)
    return model, add_lora(model, names, r, 2 * r, 0.0), names, implied


@needs_peft
def test_lora_trains_only_adapters_and_head_with_the_count_the_config_implies():
    model, _, names, implied = lora_model(r=4, n_top=2)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n or n.startswith("head.") for n in trainable)
    assert {n.split(".lora_")[0] for n in trainable if ".lora_" in n} == set(names)
    head = sum(p.numel() for p in model.head.parameters())
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == implied + head
    # rank 4 on the top two groups of test_efficientnet: its SE convs, pointwise convs and conv_head
    assert all(n.startswith(("features.blocks.4", "features.conv_head")) for n in names)
    frozen = [p for n, p in model.named_parameters() if n.startswith("features.") and ".lora_" not in n]
    assert frozen and not any(p.requires_grad for p in frozen)


@needs_peft
def test_lora_skips_depthwise_convolutions_it_cannot_merge():
    _, _, names, _ = lora_model()
    from edgetl.plugins import get_manager  # noqa: F401

    _, plain = tiny_classifier()
    modules = dict(plain.named_modules())
    depthwise = [n for n, m in modules.items() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and not set(depthwise) & set(names)


@needs_peft
def test_lora_merged_and_unmerged_outputs_agree(tmp_path):
    from edgetl_builtins.transfer.lora import merge

    model, peft_model, _, _ = lora_model(r=4)
    for n, p in model.named_parameters():  # peft starts B at zero: make the adapter do something
        if ".lora_B." in n:
            torch.nn.init.normal_(p, std=0.3)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        with peft_model.disable_adapter():
            base = model(x)
        adapted = model(x)
        merged = merge(peft_model)
        out = merged(x)
    assert not torch.allclose(base, adapted, atol=1e-3)  # the adapter changes the output ...
    torch.testing.assert_close(out, adapted, atol=1e-5, rtol=1e-4)  # ... and merging keeps that change
    assert not [n for n, _ in merged.named_modules() if "lora" in n]
    assert set(merged.state_dict()) == set(tiny_classifier()[1].state_dict())


@needs_peft
def test_lora_exported_graph_has_only_the_plain_models_ops(tmp_path):
    from edgetl_builtins.transfer.lora import merge

    model, peft_model, _, _ = lora_model(r=4)
    merged = merge(peft_model)
    assert onnx_op_types(merged, tmp_path, "lora") == onnx_op_types(tiny_classifier(1)[1], tmp_path, "plain")


@needs_peft
def test_lora_trains_exports_serves_and_reports(tmp_path, data, agent):
    summary, metrics = train(tmp_path, data, "lora", {"r": 2, "alpha": 4, "groups": 3},
                             overrides=["train.baseline=linear-probe", "slices=[{name: cls, folder: 1}]"])
    extra = metrics["strategy_extra"]
    assert extra["lora_rank"] == 2 and extra["adapter_params"] > 0 and extra["adapter_bytes"] > 0
    assert extra["trainable_params"] < extra["total_params"] / 2
    assert extra["train_peak_mb"] >= extra["train_peak_increase_mb"] >= 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Strategy" in report and "adapter_params" in report
    assert metrics["baseline"]["strategy"] == "linear-probe" and "## Negative-transfer check" in report
    assert_verdict(metrics["baseline"], report)
    assert {r["slice"] for r in metrics["slices"]["val"]["cls"]} == {"good", "defect"}  # per-slice report
    assert "## Per slice" in report and "### `cls` (val)" in report
    exports_and_serves(agent, tmp_path / "run", tmp_path, val_images(data))


@needs_peft
def test_lora_bad_option_is_one_line(tmp_path, data):
    with pytest.raises(ConfigError, match=r"strategy.options.layers"):
        train(tmp_path, data, "lora", {"layers": ["attention"]})


# -- dann -----------------------------------------------------------------
def test_gradient_reversal_flips_and_scales_the_gradient():
    from edgetl_builtins.transfer.dann import grad_reverse

    x = torch.randn(5, 3, requires_grad=True)
    y = grad_reverse(x, 0.25)
    torch.testing.assert_close(y, x)
    (y * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.25 * torch.arange(3.0).expand(5, 3))


def test_dann_lambda_schedule_rises_from_zero_to_almost_one():
    from edgetl_builtins.transfer.dann import lambda_schedule

    assert lambda_schedule(0.0) == 0.0
    assert lambda_schedule(0.5) == pytest.approx(2 / (1 + 2.718281828 ** -5) - 1)
    assert 0.999 < lambda_schedule(1.0) < 1.0


def test_dann_trains_drops_the_domain_head_exports_and_serves(tmp_path, data, agent):
    summary, metrics = train(tmp_path, data, "dann", {"domain_hidden": 8}, overrides=["train.baseline=finetune"])
    # the source-only baseline: finetune on the same labelled data, no target images
    assert metrics["baseline"]["kind"] == "finetune" and metrics["baseline"]["strategy"] == "finetune"
    assert_verdict(metrics["baseline"], (tmp_path / "run" / "report.md").read_text(), source_only=True)
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    assert "domain_loss" in history[0] and "grl_lambda" in history[0]
    assert metrics["strategy_extra"]["target_images"] == 12
    from edgetl.host.run import load_run

    state = torch.load(tmp_path / "run" / "model.pt", map_location="cpu", weights_only=True)["state_dict"]
    assert set(state) == set(tiny_classifier()[1].state_dict())  # backbone + label head, no domain head
    loaded = load_run(tmp_path / "run").model
    n_plain = sum(v.numel() for k, v in tiny_classifier()[1].state_dict().items())
    assert sum(v.numel() for v in loaded.state_dict().values()) == n_plain
    exports_and_serves(agent, tmp_path / "run", tmp_path, val_images(data))


def test_dann_without_target_images_is_one_line(tmp_path, data):
    cfg = load_run_config(write_config(tmp_path / "c.yaml", data, "dann", {}, epochs=1), [])
    with pytest.raises(ConfigError, match="data.target_unlabeled"):
        Trainer(cfg, tmp_path / "run", device="cpu", log=lambda m: None).run()


def test_missing_target_folder_is_one_line(tmp_path, data):
    cfg = load_run_config(write_config(tmp_path / "c.yaml", data, "dann", {}, epochs=1),
                          [f"data.target_unlabeled={tmp_path / 'nope'}"])
    from edgetl.errors import DataError

    with pytest.raises(DataError, match="data.target_unlabeled"):
        Trainer(cfg, tmp_path / "run", device="cpu", log=lambda m: None).run()


# -- intermediate-pretrain ------------------------------------------------
def test_rotations_are_four_views_with_their_labels():
    from edgetl_builtins.transfer.pretrain import rotations

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views, labels = rotations(x)
    assert views.shape == (8, 3, 4, 4) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    torch.testing.assert_close(views[2], torch.rot90(x[0], 1, dims=(-2, -1)))


def test_intermediate_pretrain_trains_both_stages_exports_and_serves(tmp_path, data, agent):
    summary, metrics = train(tmp_path, data, "intermediate-pretrain", {"pretrain_epochs": 2},
                             overrides=["train.baseline=finetune"])
    rows = [r.split(",")[0] for r in (tmp_path / "run" / "history.csv").read_text().splitlines()[1:]]
    assert rows == ["rotation-pretrain"] * 2 + ["intermediate-pretrain"] * 2 + ["baseline-finetune"] * 2
    assert metrics["baseline"]["strategy"] == "finetune"  # source-only: the same labelled data, no target images
    assert_verdict(metrics["baseline"], (tmp_path / "run" / "report.md").read_text(), source_only=True)
    assert summary["epochs_run"] == 2 and summary["best_epoch"] in (1, 2)
    assert metrics["strategy_extra"]["pretrain_epochs"] == 2
    assert 0 <= metrics["strategy_extra"]["rotation_accuracy"] <= 1
    exports_and_serves(agent, tmp_path / "run", tmp_path, val_images(data))
