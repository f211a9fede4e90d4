"""``dann``: domain-adversarial training (Ganin et al. 2016) toward unlabelled target images.

A domain classifier on the backbone's pooled features learns to tell source
(``ctx.train``) from target (``ctx.unlabeled``, from ``data.target_unlabeled``)
images; a gradient-reversal layer between them makes the backbone learn
features the domain classifier cannot separate, while the label head learns
the source labels. The reversal strength follows the paper's schedule
λ(p) = 2 / (1 + exp(-γ·p)) − 1 over training progress p ∈ [0, 1]. Only the
classifier (backbone + label head) is returned: the domain head is training
machinery and is not part of the exported module.

options (plus finetune's lr_decay, freeze_bn, hidden):
    weight: factor of the domain loss (default 1.0).
    gamma: steepness of the λ schedule (default 10).
    domain_hidden: width of the domain classifier's hidden layer (default 256).
"""

from __future__ import annotations

import math
from typing import Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError
from edgetl.training import DefaultOptions, positive_float, resolve_freeze_bn, resolve_options
from edgetl_builtins.strategies import COMMON_OPTIONS as COMMON
from edgetl_builtins.strategies import build_model


def lambda_schedule(progress: float, gamma: float = 10.0) -> float:
    """λ(p) = 2 / (1 + exp(-γ p)) − 1: 0 at the start, → 1 at the end (Ganin et al. 2016, eq. 14)."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def grad_reverse(x: Any, scale: float) -> Any:
    """Identity forward; the gradient is multiplied by ``-scale`` on the way back."""
    import torch

    class _Reverse(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, t: Any) -> Any:
            return t.view_as(t)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            return -scale * grad

    return _Reverse.apply(x)


def domain_head(feature_dim: int, hidden: int) -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))


def make_callback(ctx: FitContext, model: Any, head: Any, weight: float, gamma: float, total_steps: int) -> Any:
    """The :class:`edgetl.training.Callback` adding the domain loss to each step.

    The source batch's pooled features are captured by a forward hook on
    ``model.features`` during the step's own forward pass; a target batch is
    drawn (reshuffled, endlessly) from ``ctx.unlabeled``.
    """
    import torch
    import torch.nn.functional as F

    from edgetl.training import Callback, to_device

    class DomainLoss(Callback):
        def __init__(self) -> None:
            self.step, self.last = 0, None
            self.sums = {"domain_loss": 0.0, "domain_accuracy": 0.0, "n": 0}
            self.hook = model.features.register_forward_hook(self._keep)
            gen = torch.Generator().manual_seed(ctx.config.train.seed)
            self.loader = torch.utils.data.DataLoader(ctx.unlabeled.dataset, batch_size=ctx.config.train.batch_size,
                                                      shuffle=True, drop_last=False, generator=gen)
            self.it = iter(self.loader)

        def _keep(self, module: Any, inputs: Any, output: Any) -> None:
            self.last = output

        def _target(self) -> Any:
            try:
                x, _ = next(self.it)
            except StopIteration:
                self.it = iter(self.loader)
                x, _ = next(self.it)
            return to_device(x, ctx.device)

        def extra_loss(self, net: Any, x: Any, y: Any, logits: Any) -> Any:
            if not model.training:
                return None
            source = self.last
            target = model.features(self._target())
            lam = lambda_schedule(min(1.0, self.step / max(1, total_steps)), gamma)
            self.step += 1
            feats = torch.cat([source, target]).float()
            domains = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).to(feats.device)
            out = head(grad_reverse(feats, lam)).squeeze(1)
            loss = F.binary_cross_entropy_with_logits(out, domains)
            self.sums["domain_loss"] += float(loss.detach())
            self.sums["domain_accuracy"] += float(((out > 0).float() == domains).float().mean())
            self.sums["n"] += 1
            return weight * loss

        def on_epoch_end(self, row: Any) -> None:
            n = max(1, self.sums.pop("n"))
            row.extra.update({k: v / n for k, v in self.sums.items()})
            row.extra["grl_lambda"] = lambda_schedule(min(1.0, self.step / max(1, total_steps)), gamma)
            self.sums = {"domain_loss": 0.0, "domain_accuracy": 0.0, "n": 0}

    return DomainLoss()


def needs_unlabeled(ctx: FitContext, name: str) -> None:
    if ctx.unlabeled is None or not len(ctx.unlabeled):
        raise ConfigError(f"data.target_unlabeled: strategy '{name}' needs a folder of unlabelled target-domain "
                          "images (none given)")


class Dann(DefaultOptions, Strategy):
    name = "dann"
    description = "domain-adversarial fine-tune toward data.target_unlabeled (gradient reversal, domain head dropped)"
    requires = ("torch",)
    extra = "train"
    DEFAULTS = {"weight": 1.0, "gamma": 10.0, "domain_hidden": 256, **COMMON}

    def fit(self, ctx: FitContext) -> TrainedModel:
        from edgetl.training import PeakMemory, fit_epochs, param_groups

        needs_unlabeled(ctx, self.name)
        if ctx.dist.enabled:
            raise ConfigError("strategy dann: runs in one process (the domain head is not DDP-synchronised); "
                              "drop --nproc")
        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        weight = positive_float(self.name, "weight", opts["weight"])
        gamma = positive_float(self.name, "gamma", opts["gamma"])
        decay = positive_float(self.name, "lr_decay", opts["lr_decay"], upper=1.0)
        hidden = opts["domain_hidden"]
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ConfigError(f"strategy.options.domain_hidden: expected a positive integer, got {hidden!r} (dann)")
        model = build_model(ctx, opts["hidden"])
        head = domain_head(ctx.backbone.feature_dim, hidden).to(ctx.device)
        groups = ctx.backbone.layer_groups(model.features)
        cfg = ctx.config.train
        bn = resolve_freeze_bn(self.name, opts["freeze_bn"], cfg.batch_size)
        steps = cfg.epochs * math.ceil(len(ctx.train) / cfg.batch_size)
        callback = make_callback(ctx, model, head, weight, gamma, steps)
        opt_groups = param_groups(model, groups, cfg.lr, decay, cfg.weight_decay)
        opt_groups.append({"name": "domain", "depth": 0, "params": list(head.parameters()), "lr": cfg.lr,
                           "initial_lr": cfg.lr, "weight_decay": cfg.weight_decay})
        ctx.progress(f"dann: {len(ctx.train)} source / {len(ctx.unlabeled)} unlabelled target images, domain loss "
                     f"x {weight:g}, lambda 2/(1+exp(-{gamma:g} p))-1 over {steps} steps", 0, cfg.epochs)
        with PeakMemory(ctx.device) as memory:
            try:
                stopper = fit_epochs(ctx, model, opt_groups, tag=self.name, callbacks=[callback],
                                     eval_modules=lambda: [model.features] if bn else [])
            finally:
                callback.hook.remove()  # the returned module carries no training hook
        return TrainedModel(module=model, task="classify", labels=list(ctx.labels), best_epoch=stopper.best_epoch,
                            extra={"target_images": len(ctx.unlabeled), **memory.facts()})
