"""``intermediate-pretrain``: self-supervised rotation prediction on the unlabelled target images, then finetune.

Stage 1 (Gidaris, Singh and Komodakis 2018, "Unsupervised representation
learning by predicting image rotations"): every image of ``ctx.unlabeled`` is
rotated by 0°, 90°, 180° and 270° and the whole backbone, with a 4-way
rotation head on its pooled features, learns which rotation it sees. This
adapts the features to the target domain's textures without a label. Stage 2
is the built-in ``finetune`` on ``ctx.train`` starting from the adapted
backbone. The rotation head is dropped: the returned module is finetune's.

options:
    pretrain_epochs: epochs of stage 1 over the unlabelled images (default 3).
    pretrain_lr: its AdamW learning rate (default ``train.lr``).
    pretrain_images: use at most this many unlabelled images (a seeded sample; null = all).
    finetune: options of the finetune stage (``unfreeze``, ``lr_decay``, ``freeze_bn``, ``hidden``).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError
from edgetl.training import DefaultOptions, positive_float, resolve_options
from edgetl_builtins.transfer.dann import needs_unlabeled


def rotations(x: Any) -> tuple[Any, Any]:
    """(N, 3, H, W) square -> (4N, 3, H, W) rotated by 0/90/180/270° and their (4N,) rotation labels."""
    import torch

    views = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    labels = torch.arange(4, device=x.device).repeat_interleave(len(x))
    return torch.cat(views), labels


def pretrain_rotation(ctx: FitContext, epochs: int, lr: float, limit: int | None = None) -> list[dict[str, Any]]:
    """Stage 1 on ``ctx.module`` (in place); one dict per epoch (loss, rotation accuracy, seconds)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgetl.training import to_device

    backbone = ctx.module.to(ctx.device)
    head = nn.Linear(ctx.backbone.feature_dim, 4).to(ctx.device)
    params = [p for p in backbone.parameters()] + list(head.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=ctx.config.train.weight_decay)
    gen = torch.Generator().manual_seed(ctx.config.train.seed)
    per_batch = max(1, ctx.config.train.batch_size // 4)  # each image becomes four
    images = ctx.unlabeled.dataset
    if limit is not None and limit < len(images):
        images = torch.utils.data.Subset(images, torch.randperm(len(images), generator=gen)[:limit].tolist())
    loader = torch.utils.data.DataLoader(images, batch_size=per_batch, shuffle=True, generator=gen)
    rows = []
    for epoch in range(epochs):
        backbone.train()
        t0, total, correct, seen = time.perf_counter(), 0.0, 0, 0
        for x, _ in loader:
            x, y = rotations(to_device(x, ctx.device))
            logits = head(backbone(x))
            loss = F.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
        row = {"strategy": "rotation-pretrain", "epoch": epoch + 1, "train_loss": total / max(seen, 1),
               "rotation_accuracy": correct / max(seen, 1), "epoch_time_s": time.perf_counter() - t0}
        ctx.log_epoch(row)
        rows.append(row)
    backbone.eval()
    return rows


class IntermediatePretrain(DefaultOptions, Strategy):
    name = "intermediate-pretrain"
    description = "self-supervised rotation prediction on data.target_unlabeled, then finetune on the labels"
    requires = ("torch",)
    extra = "train"
    DEFAULTS = {"pretrain_epochs": 3, "pretrain_lr": None, "pretrain_images": None, "finetune": {}}

    def fit(self, ctx: FitContext) -> TrainedModel:
        from edgetl.training import PeakMemory
        from edgetl_builtins.strategies import Finetune

        needs_unlabeled(ctx, self.name)
        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        epochs = opts["pretrain_epochs"]
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ConfigError(f"strategy.options.pretrain_epochs: expected a number of epochs >= 0, got {epochs!r} "
                              f"({self.name})")
        limit = opts["pretrain_images"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"strategy.options.pretrain_images: expected a positive number or null, got {limit!r} "
                              f"({self.name})")
        lr = positive_float(self.name, "pretrain_lr", opts["pretrain_lr"] or ctx.config.train.lr)
        if not isinstance(opts["finetune"], dict):
            raise ConfigError(f"strategy.options.finetune: expected a mapping of finetune options, "
                              f"got {opts['finetune']!r} ({self.name})")
        side = ctx.input.size if ctx.input is not None else (0, 0)
        if side[0] != side[1]:
            raise ConfigError(f"strategy {self.name}: rotation prediction needs square inputs, got {side[0]}x{side[1]}")
        used = len(ctx.unlabeled) if limit is None else min(limit, len(ctx.unlabeled))
        ctx.progress(f"{self.name}: rotation prediction on {used} unlabelled images for {epochs} "
                     f"epochs (lr {lr:g}), then finetune", 0, epochs)
        t0 = time.perf_counter()
        with PeakMemory(ctx.device) as memory:
            rows = pretrain_rotation(ctx, epochs, lr, limit)
            pretrain_s = time.perf_counter() - t0
            stage = Finetune()
            stage.name = self.name  # the finetune rows and checkpoint carry this run's strategy name
            trained = stage.fit(dataclasses.replace(ctx, options=dict(opts["finetune"])))
        trained.extra.update({"target_images": len(ctx.unlabeled), "pretrain_epochs": epochs,
                              "rotation_accuracy": rows[-1]["rotation_accuracy"] if rows else None,
                              **memory.facts()})
        trained.timings["pretrain_seconds"] = pretrain_s
        return trained
