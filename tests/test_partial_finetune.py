"""``partial-finetune``: the frozen bottom runs once (cached activations), the top trains, the model exports."""

from __future__ import annotations

import csv

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.config import load_run_config  # noqa: E402
from edgetl.errors import ConfigError  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def train(tmp_path, data, options=None, out="run", log=lambda m: None, **kw):
    cfg = load_run_config(write_config(tmp_path / f"{out}.yaml", data, "partial-finetune", options, **kw), [])
    summary = Trainer(cfg, tmp_path / out, device="cpu", log=log).run()
    return summary, list(csv.DictReader((tmp_path / out / "history.csv").open()))


def test_split_backbone_halves_compute_the_backbone_and_share_its_weights():
    from edgetl_builtins.timm.backbones import TimmBackbone

    from edgetl.training import split_backbone

    module = TimmBackbone("test_efficientnet").build(pretrained=False).eval()
    stages = len(module.blocks)
    x = torch.randn(2, 3, 32, 32)
    for n_top in (1, 2, stages + 1):
        bottom, top = split_backbone(module, n_top)
        assert torch.allclose(top(bottom(x)), module(x), atol=1e-6)
        assert len(list(top.children())) == n_top - 1 + 3  # stages, conv_head, bn2, pool
    bottom, top = split_backbone(module, 2)
    assert top[0] is module.blocks[-1] and bottom[0] is module.conv_stem  # the same modules, not copies
    for bad in (0, stages + 2, "2", True):
        with pytest.raises(ValueError, match="top layer groups"):
            split_backbone(module, bad)
    with pytest.raises(ValueError, match="layout"):
        split_backbone(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), 1)


def test_partial_finetune_trains_the_top_on_cached_maps(tmp_path, data, count_calls):
    stem_calls = count_calls("conv_stem")  # forward passes through the stem of every backbone built
    summary, history = train(tmp_path, data, {"unfreeze": 2, "hidden": 8, "head_epochs": 3}, out="a",
                             epochs=2, lr=0.01)
    short = stem_calls["n"]
    stem_calls["n"] = 0
    summary, history = train(tmp_path, data, {"unfreeze": 2, "hidden": 8, "head_epochs": 3}, out="b",
                             epochs=12, lr=0.01)
    assert stem_calls["n"] == short  # 6x the epochs, not one more pass through the frozen stem
    stages = [r["strategy"] for r in history]
    assert stages == ["partial-finetune-head"] * 3 + ["partial-finetune"] * 12
    joint = [float(r["train_loss"]) for r in history[3:]]
    assert min(joint[-3:]) < joint[0]
    trainable = {int(r["trainable_params"]) for r in history[3:]}
    head_only = {int(r["trainable_params"]) for r in history[:3]}
    assert min(trainable) > max(head_only)  # the top stage trains in the joint epochs
    assert max(float(r["val_accuracy"]) for r in history[3:]) > 0.6  # above chance (0.5) on this random backbone


def test_partial_finetune_leaves_the_bottom_frozen_and_updates_the_top(tmp_path, data, monkeypatch):
    from edgetl_builtins.strategies.partial import PartialFinetune

    seen = {}
    original = PartialFinetune.fit

    def fit(self, ctx):
        seen["initial"] = {k: v.clone() for k, v in ctx.module.state_dict().items()}
        seen["trained"] = original(self, ctx)
        return seen["trained"]

    monkeypatch.setattr(PartialFinetune, "fit", fit)
    train(tmp_path, data, {"unfreeze": 2, "head_epochs": 0}, epochs=2, lr=0.05)
    model = seen["trained"].module
    bottom, top = model.features
    assert torch.equal(bottom[0].weight, seen["initial"]["conv_stem.weight"])  # frozen: bit for bit
    assert not torch.equal(top[-3].weight, seen["initial"]["conv_head.weight"])  # trained
    # freeze_bn (default): the top's BatchNorm statistics are the pretrained ones, its affine weights trained
    assert torch.equal(top[-2].running_mean, seen["initial"]["bn2.running_mean"])
    assert not torch.equal(top[-2].weight, seen["initial"]["bn2.weight"])
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x).sum(1), torch.ones(2), atol=1e-5)  # a plain classifier on images


def test_partial_finetune_bad_unfreeze_is_a_config_error(tmp_path, data):
    with pytest.raises(ConfigError, match="strategy.options.unfreeze"):
        train(tmp_path, data, {"unfreeze": 99}, epochs=1)
    with pytest.raises(ConfigError, match="strategy.options.head_epochs"):
        train(tmp_path, data, {"head_epochs": -1}, out="b", epochs=1)
    with pytest.raises(ConfigError, match="strategy.options.map_flips"):
        train(tmp_path, data, {"map_flips": "yes"}, out="c", epochs=1)
    with pytest.raises(ConfigError, match="strategy.options.freeze_bn"):
        train(tmp_path, data, {"freeze_bn": "auto"}, out="d", epochs=1)


def test_cached_maps_flip_each_map_reproducibly():
    from edgetl_builtins.strategies.partial import CachedMaps

    maps = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3).repeat(64, 1, 1, 1)
    ds = CachedMaps(maps, torch.zeros(64, dtype=torch.long), seed=0)
    seen = {tuple(ds[i][0].flatten().tolist()) for i in range(64)}
    want = {tuple(torch.flip(maps[0], dims=d).flatten().tolist()) for d in ((), (2,), (1,), (1, 2))}
    assert seen == want  # all four: as is, horizontal, vertical, both
    first = [ds[i][0] for i in range(8)]
    assert all(torch.equal(a, ds[i][0]) for i, a in enumerate(first))  # same seed, epoch, index: same flip
    ds.set_epoch(1)
    assert any(not torch.equal(a, ds[i][0]) for i, a in enumerate(first))


def test_cached_maps_sample_one_view_per_image_and_epoch():
    from edgetl_builtins.strategies.partial import CachedMaps

    n, views = 40, 4  # view-major, as cached: maps[v * n + i] is image i in view v
    maps = torch.stack([torch.full((1, 2, 2), float(v * n + i)) for v in range(views) for i in range(n)])
    labels = torch.arange(n).repeat(views)
    ds = CachedMaps(maps, labels, seed=0, n_views=views, flips=False)
    assert len(ds) == n  # an epoch is one pass over the images, not over the views
    drawn = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        rows = [ds[i] for i in range(n)]
        assert [int(y) for _, y in rows] == list(range(n))  # image i's own label, whichever view
        assert all(int(m[0, 0, 0]) % n == i for i, (m, _) in enumerate(rows))  # image i, in some view
        drawn.append([int(m[0, 0, 0]) // n for m, _ in rows])
    assert set(sum(drawn, [])) == set(range(views))  # every view is drawn
    assert drawn[0] != drawn[1]  # fresh draws each epoch
    ds.set_epoch(0)
    assert [int(ds[i][0][0, 0, 0]) // n for i in range(n)] == drawn[0]  # reproducible
    with pytest.raises(ValueError, match="not 2 views"):
        CachedMaps(maps[:-1], labels[:-1], seed=0, n_views=2)


def test_partial_finetune_samples_cached_views(tmp_path, data):
    lines = []
    summary, history = train(tmp_path, data, {"unfreeze": 2, "hidden": 8, "head_epochs": 1,
                                              "views": ["identity", "hflip", "transpose", "antitranspose"],
                                              "view_sampling": "random"}, log=lines.append, epochs=2, lr=0.01)
    joint = [r for r in history if r["strategy"] == "partial-finetune"]
    assert len(joint) == 2 and all(float(r["train_loss"]) > 0 for r in joint)
    pooled = [ln.strip() for ln in lines if "pooled by the frozen top" in ln]  # the head stage's pass is counted
    assert pooled[-1] == "features val pooled by the frozen top: 20/20 images"
    assert "features train pooled by the frozen top: 192/192 images" in pooled  # 48 images x 4 views
    with pytest.raises(ConfigError, match="strategy.options.view_sampling"):
        train(tmp_path, data, {"view_sampling": "some"}, out="b", epochs=1)


def test_partial_finetune_run_exports_through_the_gate(tmp_path, data):
    pytest.importorskip("onnxruntime")
    from edgetl.host.export import ExportOptions, export_run

    train(tmp_path, data, {"unfreeze": 2, "hidden": 8, "head_epochs": 2,
                           "cache_dir": str(tmp_path / "cache")}, epochs=2, lr=0.01)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # train and val maps, float16 on disk
    result = export_run(tmp_path / "run", ExportOptions(format="onnx", precision="fp32", calib_count=16,
                                                        latency_runs=2, out=tmp_path / "b.edgetl"))
    attempt = result.manifest.export.attempts[-1]
    assert attempt.passed and attempt.agreement >= 0.98
    assert result.manifest.target.precision == "fp32"
