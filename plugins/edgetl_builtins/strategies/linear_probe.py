"""``linear-probe``: a frozen backbone, features computed once, a head trained on the cache.

The backbone runs once per image and view (train: the identity plus the
flip/rotation views asked for in ``augment``; val: the identity), so
``train.epochs`` epochs of the head take seconds. Colour and crop
augmentations cannot be cached and are ignored (said in the log).
With ``cache_dir`` set, features are also kept on disk, keyed by backbone,
weights, preprocessing, view, the ``stages`` pooling and the SHA-256 of every
file, so a rerun skips the backbone pass entirely.

options:
    views: list of views to cache for training (default: derived from
        ``augment``: hflip, vflip, both → rot180; rot90 → rot90 and rot270).
    hidden: width of an MLP head's hidden layer, or null for a linear head.
    cache_dir: a folder for the on-disk feature cache, or null (memory only).
    batch_size: images per backbone forward pass while caching (default 64).
    standardize: train the head on features standardised with the training
        mean and std (better conditioned: one learning rate fits any backbone);
        the saved head starts with that fixed ``(x - mean) / std`` step
        (:func:`standardizer`) rather than folding it into the first linear
        layer: folded, features of very different scales give that layer
        weights whose per-channel INT8 scale zeroes most of them (ELPV recipe:
        agreement 0.66 with FP32). Default false: on the texture set raw lite0
        features generalised better, 90 % vs 80 % test.
    stages: null (the backbone's own pooled features), or a list of stage
        indices: the features become GeM of those stages' maps plus the
        average and GeM of the final map (:class:`edgetl.training.StagePool`,
        one forward pass; part of the saved module). ELPV recipe: [2, 3, 4].

The head trains with :func:`edgetl.training.fit_epochs` on the cached
features (``train=`` / ``val_inputs=``), so early stopping, the schedule,
class weights, history rows and ``--resume`` checkpoints are the same as for
the gradient strategies. The returned module is backbone + head as one :class:`edgetl.training.Classifier`.
"""

from __future__ import annotations

import time
from typing import Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError
from edgetl.training import VIEWS, DefaultOptions, resolve_options
from edgetl_builtins.strategies.finetune import build_model


def views_from_augment(augment: list[str]) -> list[str]:
    """The cacheable views implied by the run's geometric augmentations."""
    views = ["identity"]
    if "hflip" in augment:
        views.append("hflip")
    if "vflip" in augment:
        views.append("vflip")
    if "hflip" in augment and "vflip" in augment:
        views.append("rot180")
    if "rot90" in augment:
        views += ["rot90", "rot270"]
    return views


def cached_views(given: Any, augment: list[str]) -> list[str]:
    """The ``views`` option (or the views implied by ``augment``), identity first; unknown names: a ConfigError."""
    views = list(given) if given is not None else views_from_augment(augment)
    if "identity" not in views:
        views.insert(0, "identity")
    for v in views:
        if v not in VIEWS:
            raise ConfigError(f"strategy.options.views: unknown view {v!r} (known: {', '.join(VIEWS)})")
    return views


def probe(head: Any) -> Any:
    """``head`` as a module whose ``logits`` train and whose ``forward`` gives probabilities."""
    import torch

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def logits(self, x):
            return self.head(x)

        def forward(self, x):
            return torch.softmax(self.head(x), dim=1)

    return Probe()


def stage_pooled(ctx: FitContext, model: Any, stages: Any, hidden: Any) -> Any:
    """``model`` rebuilt on :class:`edgetl.training.StagePool` features of ``stages``."""
    from edgetl.training import Classifier, StagePool

    if not isinstance(stages, list) or not stages or not all(isinstance(s, int) for s in stages):
        raise ConfigError(f"strategy.options.stages: expected a list of stage indices or null, got {stages!r}")
    try:
        pool = StagePool(model.features, stages)
    except ValueError as exc:
        raise ConfigError(f"strategy.options.{exc}") from None
    return Classifier(pool, pool.feature_dim, len(ctx.labels), dropout=float(ctx.config.train.dropout),
                      hidden=hidden)


def std_floor(std: Any) -> Any:
    """Per-feature std with a floor of 1 % of the median std (and 1e-6).

    A near-constant feature (a dead channel's pooled value: std ~1e-6) would
    otherwise be scaled up a million times: noise on val/test, and, once the
    scaling is folded into the first linear layer, weights 400,000x the
    median of their row, which per-channel INT8 turns into zeros for every
    other weight (measured on the ELPV recipe: agreement 0.66 with FP32).
    """
    return std.clamp_min(max(1e-6, 0.01 * float(std.median())))


def standardizer(head: Any, mean: Any, std: Any) -> Any:
    """``head`` preceded by a fixed ``(x - mean) / std`` (buffers, saved and exported with the model)."""
    import torch

    class Standardize(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", mean.detach().clone().float())
            self.register_buffer("inv_std", 1.0 / std.detach().clone().float())

        def forward(self, x):
            return (x - self.mean) * self.inv_std

    return torch.nn.Sequential(Standardize(), *head)


def fold_standardisation(head: Any, mean: Any, std: Any) -> None:
    """Make ``head`` take raw features: W' = W / std, b' = b - W' @ mean in its first Linear."""
    import torch

    linear = next(m for m in head.modules() if isinstance(m, torch.nn.Linear))
    with torch.no_grad():
        linear.weight.div_(std[None, :])
        linear.bias.sub_(linear.weight @ mean)


class LinearProbe(DefaultOptions, Strategy):
    name = "linear-probe"
    description = "frozen backbone, features cached once (flip views), linear or MLP head trained on the cache"
    requires = ("torch",)
    extra = "train"
    DEFAULTS = {"views": None, "hidden": None, "cache_dir": None, "batch_size": 64, "standardize": False,
                "stages": None}

    def baseline_options(self, kind: str) -> dict[str, Any] | None:
        """The ``linear-probe`` baseline: this strategy with its defaults."""
        return {} if kind == "linear-probe" else None

    def fit(self, ctx: FitContext) -> TrainedModel:
        import torch

        from edgetl.training import extract_features

        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        views = cached_views(opts["views"], ctx.config.augment)
        ignored = [a for a in ctx.config.augment if a not in ("hflip", "vflip", "rot90")]
        model = build_model(ctx, opts["hidden"])
        if opts["stages"] is not None:
            model = stage_pooled(ctx, model, opts["stages"], opts["hidden"])
        model.features.requires_grad_(False)
        model.to(ctx.device).eval()
        ctx.progress(f"linear-probe: caching features for views {views}"
                     + (f" (not cacheable, ignored: {', '.join(ignored)})" if ignored else ""), 0, 1)
        t0 = time.perf_counter()
        cache = opts["cache_dir"]
        # StagePool is a fixed function of the frozen backbone: its features may be disk-cached under a tag
        tag = None if opts["stages"] is None else f"stage-pool:{opts['stages']}"
        x_train = torch.from_numpy(extract_features(ctx, model.features, ctx.train, views,
                                                    batch_size=opts["batch_size"], cache_dir=cache, cache_tag=tag))
        x_val = torch.from_numpy(extract_features(ctx, model.features, ctx.val, ["identity"],
                                                  batch_size=opts["batch_size"], cache_dir=cache, cache_tag=tag))
        feature_seconds = time.perf_counter() - t0
        y_train = torch.as_tensor(ctx.train.labels).repeat(len(views))  # np.tile: numpy is not imported at registration
        stopper = train_head(ctx, model, x_train, y_train, x_val, opts, self.name)
        return TrainedModel(module=model, task="classify", labels=list(ctx.labels), best_epoch=stopper.best_epoch,
                            timings={"feature_seconds": feature_seconds})


def train_head(ctx: FitContext, model: Any, x_train: Any, y_train: Any, x_val: Any, opts: dict[str, Any],
               tag: str = "linear-probe") -> Any:
    """Train ``model.head`` on cached features (x_train (N, D), y_train (N,); x_val in ``ctx.val``'s order).

    The second half of :meth:`LinearProbe.fit`, a function of its own so that
    benchmarks/experiments/elpv_folds.py trains each fold's head with exactly this code on
    features computed once for every image. On return ``model.head`` is the
    trained head (preceded by the standardisation when ``opts["standardize"]``),
    frozen, in eval mode. Returns the :class:`edgetl.training.EarlyStopping`.
    """
    import torch
    from torch.utils.data import TensorDataset

    from edgetl.training import Split, fit_epochs

    cfg = ctx.config.train
    mean = x_train.mean(dim=0) if opts["standardize"] else torch.zeros(x_train.shape[1])
    std = std_floor(x_train.std(dim=0)) if opts["standardize"] else torch.ones(x_train.shape[1])
    x_train, x_val = (x_train - mean) / std, (x_val - mean) / std
    head = model.head.cpu()
    head.requires_grad_(True)
    # a --from run's head (old rows + fresh new rows) is the start when it reads the same features
    continued = (ctx.previous is not None and ctx.previous.classifier is not None and opts["stages"] is None
                 and not opts["standardize"])
    torch.manual_seed(cfg.seed)
    for m in head.modules():
        if hasattr(m, "reset_parameters") and not continued:
            m.reset_parameters()
    threads = torch.get_num_threads()
    # tiny matmuls: one thread; several spin-wait on a busy CPU (measured 10-25 s per epoch
    # instead of well under one on a loaded 2-core machine)
    torch.set_num_threads(1)
    try:
        stopper = fit_epochs(ctx, probe(head), [{"name": "head", "params": list(head.parameters())}],
                             tag=tag, train=Split("train-features", TensorDataset(x_train, y_train),
                                                  None, y_train.numpy(), []),
                             val_inputs=TensorDataset(x_val, torch.from_numpy(ctx.val.labels)),
                             on_epoch_start=lambda epoch: {"unfrozen_groups": 0})
    finally:
        torch.set_num_threads(threads)
    head.cpu()
    if opts["standardize"]:
        head = standardizer(head, mean, std)
    head.requires_grad_(False)
    model.head = head.to(ctx.device)
    model.eval()
    return stopper
