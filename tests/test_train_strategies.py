"""The three strategies on a tiny backbone and a tiny synthetic set: each behaviour in seconds."""

from __future__ import annotations

import csv
import json
import math

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.config import load_run_config  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402
from edgetl.training import loop  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def train(tmp_path, data, strategy="finetune", options=None, out="run", overrides=(), **kw):
    cfg_path = write_config(tmp_path / f"{out}.yaml", data, strategy, options, **kw)
    cfg = load_run_config(cfg_path, list(overrides))
    summary = Trainer(cfg, tmp_path / out, device="cpu", log=lambda m: None).run()
    history = list(csv.DictReader((tmp_path / out / "history.csv").open()))
    return summary, history


def test_finetune_loss_decreases(tmp_path, data):
    _, history = train(tmp_path, data, options={"freeze_bn": False}, epochs=4, lr=0.01)
    losses = [float(r["train_loss"]) for r in history]
    assert losses[-1] < 0.6 * losses[0], losses


def test_linear_probe_caches_features_once(tmp_path, data, count_calls):
    count_backbone_calls = count_calls()
    # 48 train images in one batch of 64, 4 views (identity, hflip, vflip, rot180); 20 val images
    _, history = train(tmp_path, data, "linear-probe", {"batch_size": 64}, out="a", epochs=2, lr=0.05,
                       overrides=["augment=[hflip, vflip]"])
    short = count_backbone_calls["n"]
    count_backbone_calls["n"] = 0
    _, history = train(tmp_path, data, "linear-probe", {"batch_size": 64}, out="b", epochs=25, lr=0.05,
                       overrides=["augment=[hflip, vflip]"])
    assert count_backbone_calls["n"] == short  # 12x the epochs, not one more backbone pass
    feature_pass = 4 * 1 + 1  # train views x batches + val
    final_eval = 1  # the returned model on val (no test split here)
    contract = 2  # the check of what fit returned: one forward pass, one torch.export capture
    assert short == feature_pass + final_eval + contract
    losses = [float(r["train_loss"]) for r in history]
    assert losses[-1] < losses[0]
    assert all(r["unfrozen_groups"] == "0" for r in history)


def test_linear_probe_disk_cache_skips_backbone_on_rerun(tmp_path, data, count_calls):
    count_backbone_calls = count_calls()
    opts = {"cache_dir": str(tmp_path / "cache")}
    train(tmp_path, data, "linear-probe", opts, out="a", epochs=2)
    first = count_backbone_calls["n"]
    count_backbone_calls["n"] = 0
    train(tmp_path, data, "linear-probe", opts, out="b", epochs=2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2  # train identity + val identity
    # only the final evaluation (1) and the check of what fit returned (forward + export: 2) run it
    assert count_backbone_calls["n"] == 3 and first > 3


def test_linear_probe_stage_pooled_features_are_disk_cached_too(tmp_path, data):
    opts = {"cache_dir": str(tmp_path / "cache"), "stages": [1, 2], "hidden": 8}
    train(tmp_path, data, "linear-probe", opts, out="a", epochs=2)
    files = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(files) == 2  # train identity + val identity, under the stage-pool tag
    stamps = [f.stat().st_mtime_ns for f in files]
    train(tmp_path, data, "linear-probe", opts, out="b", epochs=2)
    assert sorted((tmp_path / "cache").glob("*.npy")) == files and [f.stat().st_mtime_ns for f in files] == stamps
    val = [json.loads((tmp_path / run / "metrics.json").read_text())["final"]["val"] for run in ("a", "b")]
    assert val[0] == val[1]  # the same features read back: the same head, the same figures
    train(tmp_path, data, "linear-probe", {**opts, "stages": [2]}, out="c", epochs=2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 4  # other stages: other features, other keys


def test_feature_cache_key_of_a_from_run_includes_the_previous_weights(tmp_path):
    from types import SimpleNamespace

    from edgetl.training.features import cache_key

    image = tmp_path / "a.png"
    image.write_bytes(b"pixels")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.pt").write_bytes(b"old weights")
    ctx = SimpleNamespace(config=SimpleNamespace(backbone=SimpleNamespace(pretrained=True, weights=None)),
                          backbone=SimpleNamespace(name="b"), input=None, previous=None)
    pretrained = cache_key(ctx, [image], "identity")
    ctx.previous = SimpleNamespace(run_dir=tmp_path / "old")
    from_old = cache_key(ctx, [image], "identity")
    (tmp_path / "old" / "model.pt").write_bytes(b"other weights")
    assert len({pretrained, from_old, cache_key(ctx, [image], "identity")}) == 3


def test_linear_probe_stage_pooling_is_part_of_the_saved_model(tmp_path, data):
    from edgetl.host.run import load_run

    summary, history = train(tmp_path, data, "linear-probe", {"stages": [1, 2], "hidden": 8, "standardize": True},
                             epochs=3, lr=0.05, early_stopping={"metric": "loss", "patience": None})
    assert len(history) == 3 and summary["best_epoch"] >= 1
    run = load_run(tmp_path / "run")  # the saved program includes the pooling: same input, probabilities out
    probs = run.model(torch.randn(2, 3, 32, 32))
    assert tuple(probs.shape) == (2, len(run.labels))
    assert torch.allclose(probs.sum(dim=1), torch.ones(2), atol=1e-5)


def test_stage_pool_concatenates_gem_of_stages_and_the_final_map():
    from edgetl_builtins.timm.backbones import TimmBackbone

    from edgetl.training import StagePool, gem

    module = TimmBackbone("test_efficientnet").build(pretrained=False).eval()
    pool = StagePool(module, [0, 2])
    x = torch.randn(2, 3, 32, 32)
    final, maps = module.forward_intermediates(x)
    want = torch.cat([gem(maps[0]), gem(maps[2]), final.mean(dim=(2, 3)), gem(final)], dim=1)
    assert pool.feature_dim == want.shape[1]
    assert torch.allclose(pool(x), want)
    assert torch.allclose(final.mean(dim=(2, 3)), module(x), atol=1e-6)  # the backbone's own pooled vector
    with pytest.raises(ValueError, match="stages: 9 out of range"):
        StagePool(module, [9])


def test_linear_probe_bad_stages_is_a_config_error(tmp_path, data):
    from edgetl.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy.options.stages"):
        train(tmp_path, data, "linear-probe", {"stages": "deep"}, epochs=1)


def test_progressive_unfreezes_one_group_every_k_epochs(tmp_path, data, monkeypatch):
    trainable = []
    import edgetl.training

    original = loop.fit_epochs

    def spy(ctx, model, groups, **kw):
        start = kw["on_epoch_start"]

        def wrapped(epoch):
            extra = start(epoch)
            names = [n for n, p in model.features.named_parameters() if p.requires_grad]
            trainable.append((epoch, extra["unfrozen_groups"], names,
                              all(p.requires_grad for p in model.head.parameters())))
            return extra

        kw["on_epoch_start"] = wrapped
        return original(ctx, model, groups, **kw)

    monkeypatch.setattr(edgetl.training, "fit_epochs", spy)
    _, history = train(tmp_path, data, "progressive", {"every": 2}, epochs=6)
    assert [int(r["unfrozen_groups"]) for r in history] == [0, 0, 1, 1, 2, 2]
    # epochs 1-2: head only; 3-4: + the last group (conv_head/bn2); 5-6: + the last stage of blocks
    assert trainable[0][2] == [] and trainable[0][3]
    assert trainable[2][2] and all(n.startswith(("conv_head", "bn2")) for n in trainable[2][2])
    last_stage = max(int(n.split(".")[1]) for n, _ in _named(trainable[4][2]) if n.startswith("blocks."))
    assert {n for n in trainable[4][2] if not n.startswith(("conv_head", "bn2"))} and all(
        n.startswith(f"blocks.{last_stage}.") for n in trainable[4][2] if n.startswith("blocks."))
    counts = [int(r["trainable_params"]) for r in history]
    assert counts[0] < counts[2] < counts[4]


def _named(names):
    return [(n, None) for n in names]


@pytest.fixture(scope="module")
def finetune_all(tmp_path_factory, data):
    """One epoch of finetune with every group trainable (``unfreeze: all``) and ``lr_decay: 0.3``:
    the learning-rate ladder and the all-trainable parameter count come from the same run."""
    return train(tmp_path_factory.mktemp("all"), data, options={"unfreeze": "all", "lr_decay": 0.3}, epochs=1,
                 lr=0.01)


def test_discriminative_learning_rates_have_configured_ratio(finetune_all):
    _, history = finetune_all
    row = history[0]
    lrs = [float(row["lr_head"])] + [float(row[f"lr_group{i}"]) for i in range(6, -1, -1)]
    assert lrs[0] == pytest.approx(0.01)
    for upper, lower in zip(lrs, lrs[1:], strict=False):
        assert lower / upper == pytest.approx(0.3)


def test_finetune_top_n_freezes_the_rest(tmp_path, data, finetune_all):
    _, history = train(tmp_path, data, options={"unfreeze": 1}, epochs=1)
    _, all_history = finetune_all
    assert 0 < int(history[0]["trainable_params"]) < int(all_history[0]["trainable_params"])


def test_early_stopping_restores_best_weights(tmp_path, data, monkeypatch):
    script = iter([0.6, 0.9, 0.7, 0.65, 0.95])  # best at epoch 2, patience 2 stops after epoch 4
    real = loop.val_row

    def scripted(ctx, probs, prefix="val_"):
        row = real(ctx, probs, prefix)
        row["val_balanced_accuracy"] = next(script)
        return row

    states = {}

    real_save = loop.save_checkpoint

    def keep(ctx, state):
        real_save(ctx, state)
        ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
        states[state["epoch"] + 1] = ck["model"]

    monkeypatch.setattr(loop, "val_row", scripted)
    monkeypatch.setattr(loop, "save_checkpoint", keep)
    summary, history = train(tmp_path, data, epochs=5, lr=0.01,
                             overrides=["train.early_stopping.patience=2"])
    assert len(history) == 4 and summary["best_epoch"] == 2
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)["state_dict"]
    for k, v in states[2].items():
        assert torch.equal(saved[k], v), k
    assert any(not torch.equal(saved[k], v) for k, v in states[4].items())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best"] == {"epoch": 2, "metric": "val_balanced_accuracy", "value": 0.9}


def test_cosine_warmup_schedule_shapes_the_lr(tmp_path, data):
    _, history = train(tmp_path, data, epochs=4, overrides=[
        "train.schedule.kind=cosine", "train.schedule.warmup_epochs=1"])
    lrs = [float(r["lr_head"]) for r in history]
    # per-step LambdaLR: after epoch 1 warmup is done (factor ~1), then cosine decays to 0
    assert lrs[0] == pytest.approx(3e-3 * 0.5 * (1 + math.cos(0)), rel=0.05) or lrs[0] <= 3e-3
    assert lrs[1] > lrs[2] > lrs[3] >= 0
    assert lrs[3] == pytest.approx(0, abs=1e-9)


def test_standardised_head_keeps_its_weights_and_floors_dead_channels():
    from edgetl_builtins.strategies.linear_probe import standardizer, std_floor

    x = torch.randn(500, 6) * torch.tensor([1.0, 10.0, 0.1, 1.0, 1.0, 1.0])
    x[:, 5] = 0.3 + 1e-7 * torch.randn(500)  # a dead channel: constant up to float noise
    std = std_floor(x.std(dim=0))
    assert std[5] == pytest.approx(0.01 * float(x.std(dim=0).median()), rel=1e-6)
    assert torch.equal(std[:5], x.std(dim=0)[:5])  # real features keep their own std
    head = torch.nn.Sequential(torch.nn.Dropout(0.0), torch.nn.Linear(6, 3)).eval()
    weights = head[1].weight.clone()
    mean = x.mean(dim=0)
    expected = head((x - mean) / std)
    full = standardizer(head, mean, std).eval()
    assert torch.allclose(full(x), expected, atol=1e-5)
    # the linear layer keeps the well-conditioned weights it was trained with (no 1/std folded in),
    # so per-channel INT8 does not zero most of them
    assert torch.equal(full[2].weight, weights)


def test_fit_epochs_takes_groups_as_torch_does_named_or_not():
    """A plain parameter list or unnamed dicts (torch's own forms) train; names feed the lr_<name> columns."""
    head, stem = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    plain = loop.named_groups(head.parameters())
    assert [g["name"] for g in plain] == ["head"] and len(plain[0]["params"]) == 2
    mixed = loop.named_groups([{"params": head.parameters(), "lr": 1e-3},
                               {"params": stem.parameters(), "name": "stem"}])
    assert [g["name"] for g in mixed] == ["group0", "stem"] and mixed[0]["lr"] == 1e-3
    torch.optim.AdamW(mixed, lr=1e-3)  # still groups torch accepts
