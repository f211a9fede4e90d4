"""``partial-finetune``: the top layer groups fine-tune on cached activations of the frozen rest.

Full fine-tuning at the cells' native resolution is slow on a CPU, and most
of its cost is the stem and lower stages (the large maps). Here they stay
frozen and run ONCE per image and view
(:func:`edgetl.training.split_backbone`, :func:`edgetl.training.extract_features`
with a ``cache_tag``, float16 maps, optionally on disk); the top ``unfreeze``
layer groups and the head then train for ``train.epochs`` epochs on those
small maps, which costs a fraction of a full pass per image. First the head
alone trains on the frozen top's pooled features (``head_epochs``, a linear
probe: seconds), then the top groups and the head together (LP-FT), both
with :func:`edgetl.training.fit_epochs` (early stopping on
``train.early_stopping.metric``, the schedule, class weights, history rows).
The returned module is the backbone (its top groups updated) and the head:
a plain :class:`edgetl.training.Classifier` that exports like any other.

options:
    unfreeze: layer groups that train, counted from the top (``finetune``'s
        groups: stem, each stage, head convolution); default 2 (EfficientNet:
        the last stage and the head convolution). Needs the EfficientNet/MobileNet
        layout (``conv_stem``, ``blocks``, ``conv_head``), a ConfigError otherwise.
    views: cached training views (default from ``augment``, as ``linear-probe``):
        each is another frozen pass; train-time flips/rotations of the image
        are these views, nothing else applies (said in the log).
    view_sampling: ``all`` (default): every (view, image) pair is a sample, so
        an epoch costs one top pass per view; ``random``: each epoch shows every
        image once, in one of its cached views drawn at random (an epoch costs
        one top pass whatever the number of views: the views are augmentation,
        not more data per epoch).
    hidden: width of an MLP head's hidden layer, or null for a linear head.
    map_flips: random horizontal / vertical flips of each cached map while the
        top trains (free: no frozen pass; the maps' own symmetry, not the
        image's, so a regulariser rather than a view); default false.
    freeze_bn: keep the top groups' BatchNorm running statistics as pretrained
        while they train (affine weights still train); default true. The head
        of the first stage was fitted on features normalised by those
        statistics: re-estimated on the new data they move every feature
        under it (ELPV: val loss 0.58 -> 4.7 after the first joint epoch).
    head_epochs: epochs of the head-only stage (0 skips it); default 40.
    head_lr: its learning rate; default 1e-3.
    cache_dir: a folder for the on-disk activation cache, or null (memory only).
    batch_size: images per frozen forward pass while caching (default 32).
"""

from __future__ import annotations

import time
from typing import Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError
from edgetl.training import DefaultOptions, positive_float, resolve_options
from edgetl_builtins.strategies.finetune import build_model
from edgetl_builtins.strategies.linear_probe import cached_views, probe


class PartialFinetune(DefaultOptions, Strategy):
    name = "partial-finetune"
    description = "frozen lower stages run once (activations cached), the top layer groups + head fine-tune on them"
    requires = ("torch",)
    extra = "train"
    DEFAULTS = {"unfreeze": 2, "views": None, "view_sampling": "all", "hidden": None, "map_flips": False,
                "freeze_bn": True, "head_epochs": 40, "head_lr": 1e-3, "cache_dir": None, "batch_size": 32}
    VIEW_SAMPLING = ("all", "random")

    def fit(self, ctx: FitContext) -> TrainedModel:
        import torch

        from edgetl.training import split_backbone

        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        views = cached_views(opts["views"], ctx.config.augment)
        head_epochs = opts["head_epochs"]
        if isinstance(head_epochs, bool) or not isinstance(head_epochs, int) or head_epochs < 0:
            raise ConfigError(f"strategy.options.head_epochs: expected a number of epochs >= 0, got {head_epochs!r}")
        head_lr = positive_float(self.name, "head_lr", opts["head_lr"])
        for key in ("map_flips", "freeze_bn"):
            if not isinstance(opts[key], bool):
                raise ConfigError(f"strategy.options.{key}: expected true or false, got {opts[key]!r}")
        if opts["view_sampling"] not in self.VIEW_SAMPLING:
            raise ConfigError(f"strategy.options.view_sampling: expected one of {', '.join(self.VIEW_SAMPLING)}, "
                              f"got {opts['view_sampling']!r}")
        model = build_model(ctx, opts["hidden"])
        try:
            bottom, top = split_backbone(model.features, opts["unfreeze"])
        except ValueError as exc:
            raise ConfigError(f"strategy.options.unfreeze: {exc}") from None
        bottom.requires_grad_(False)
        t0 = time.perf_counter()
        maps, y_train, val_maps = self._cache(ctx, bottom, opts, views)
        feature_seconds = time.perf_counter() - t0
        torch.manual_seed(ctx.config.train.seed)
        head_best = self._head_first(ctx, model, top, maps, y_train, val_maps, head_epochs, head_lr)
        stopper = self._joint(ctx, model, top, maps, y_train, val_maps, opts)
        model.features = torch.nn.Sequential(bottom, top)
        model.requires_grad_(False)
        model.to(ctx.device).eval()
        return TrainedModel(module=model, task="classify", labels=list(ctx.labels), best_epoch=stopper.best_epoch,
                            timings={"feature_seconds": feature_seconds},
                            extra={"head_best_epoch": head_best, "cached_views": views})

    def _cache(self, ctx: FitContext, bottom: Any, opts: dict[str, Any], views: list[str]) -> tuple[Any, Any, Any]:
        """Frozen maps of train (every view) and val (identity), float16, keyed by where the cut is."""
        import numpy as np
        import torch

        from edgetl.training import extract_features

        ignored = [a for a in ctx.config.augment if a not in ("hflip", "vflip", "rot90")]
        ctx.progress(f"partial-finetune: caching frozen activations (top {opts['unfreeze']} groups train) "
                     f"for views {views}" + (f" (not cacheable, ignored: {', '.join(ignored)})" if ignored else ""),
                     0, 1)
        kw = {"batch_size": opts["batch_size"], "cache_dir": opts["cache_dir"], "dtype": np.float16,
              "cache_tag": f"bottom-of-top-{opts['unfreeze']}"}
        maps = torch.from_numpy(extract_features(ctx, bottom, ctx.train, views, **kw))
        val_maps = torch.from_numpy(extract_features(ctx, bottom, ctx.val, ["identity"], **kw))
        return maps, torch.from_numpy(np.tile(ctx.train.labels, len(views))), val_maps

    def _head_first(self, ctx: FitContext, model: Any, top: Any, maps: Any, y_train: Any, val_maps: Any,
                    epochs: int, lr: float) -> int:
        """The head alone on the frozen top's pooled features (a linear probe): a start that the joint stage
        does not have to recover from (a random head's gradients would first scramble the top)."""
        import torch
        from torch.utils.data import TensorDataset

        from edgetl.training import Split, fit_epochs

        if not epochs:
            return 0
        top.to(ctx.device).eval()

        def pooled(m, split: str):  # minutes for 8 views of a few thousand maps: counted like a feature pass
            out = []
            with torch.inference_mode():
                for i in range(0, len(m), 64):
                    out.append(top(m[i:i + 64].to(ctx.device).float()).cpu())
                    ctx.progress(f"features {split} pooled by the frozen top", min(i + 64, len(m)), len(m))
            return torch.cat(out)

        x_train, x_val = pooled(maps, "train"), pooled(val_maps, "val")
        head = model.head
        stopper = fit_epochs(ctx, probe(head), [{"name": "head", "params": list(head.parameters()), "lr": lr}],
                             tag=f"{self.name}-head", epochs=epochs,
                             train=Split("train-features", TensorDataset(x_train, y_train), None, y_train.numpy(), []),
                             val_inputs=TensorDataset(x_val, torch.from_numpy(ctx.val.labels)))
        return stopper.best_epoch

    def _joint(self, ctx: FitContext, model: Any, top: Any, maps: Any, y_train: Any, val_maps: Any,
               opts: dict[str, Any]) -> Any:
        """The top groups and the head together on the cached maps, at ``train.lr``."""
        import torch
        from torch.utils.data import TensorDataset

        from edgetl.training import OnMaps, Split, fit_epochs

        top.requires_grad_(True)
        model.head.requires_grad_(True)
        net = OnMaps(top, model.head)
        groups = [{"name": "top", "params": list(top.parameters())},
                  {"name": "head", "params": list(model.head.parameters())}]
        n_views = len(maps) // len(ctx.train.labels) if opts["view_sampling"] == "random" else 1
        samples = (CachedMaps(maps, y_train, ctx.config.train.seed, n_views=n_views, flips=opts["map_flips"])
                   if opts["map_flips"] or n_views > 1 else TensorDataset(maps, y_train))
        return fit_epochs(ctx, net, groups, tag=self.name,
                          train=Split("train-maps", samples, None, y_train[:len(samples)].numpy(), []),
                          val_inputs=TensorDataset(val_maps, torch.from_numpy(ctx.val.labels)),
                          eval_modules=lambda: [top] if opts["freeze_bn"] else [])


class CachedMaps:
    """(map, label) samples from the cached maps, drawn from seed, epoch and index (a rerun or a resumed run
    sees the same draws).

    With ``n_views > 1`` the maps hold ``n_views`` blocks of images (view-major, as cached) and sample ``i``
    is image ``i`` in one of its views, drawn at random: an epoch is one pass over the images. With
    ``flips``, each map is also flipped horizontally and/or vertically at random.
    """

    def __init__(self, maps: Any, labels: Any, seed: int, n_views: int = 1, flips: bool = True):
        if len(maps) % n_views:
            raise ValueError(f"{len(maps)} cached maps are not {n_views} views of the same images")
        self.maps, self.labels, self.seed, self.epoch = maps, labels, int(seed), 0
        self.n_views, self.flips, self.n = int(n_views), bool(flips), len(maps) // n_views

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import numpy as np
        import torch

        draw = np.random.default_rng((self.seed, self.epoch, int(i))).random(3)
        j = int(i) + self.n * min(int(draw[2] * self.n_views), self.n_views - 1)
        m = self.maps[j]
        dims = [d for d, r in zip((2, 1), draw[:2], strict=True) if r < 0.5] if self.flips else []  # (C, H, W)
        return (torch.flip(m, dims=dims) if dims else m), self.labels[j]
