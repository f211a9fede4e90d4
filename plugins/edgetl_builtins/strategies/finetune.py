"""``finetune`` and ``progressive``: gradient training of the head and (some of) the backbone.

finetune options:
    unfreeze: ``all`` or N — the top N backbone layer groups train (0 = head only).
    lr_decay: learning-rate factor per layer group toward the stem (head at
        ``train.lr``, the group below at ``lr * lr_decay``, …); 1.0 = one rate.
    freeze_bn: ``auto`` (freeze BatchNorm statistics when a rank's batch < 16),
        true or false.
    hidden: width of an MLP head's hidden layer, or null for a linear head.

progressive options (plus lr_decay, freeze_bn, hidden):
    every: K — unfreeze one more layer group (top down) every K epochs,
    trigger: ``epochs`` (every K epochs) or ``plateau`` (after K epochs without a
        better validation metric);
    max_groups: stop unfreezing after this many groups (null = all).
Each newly unfrozen group trains at its own, lower, learning rate (the
discriminative rates above). The schedule is printed and the number of
unfrozen groups is a column of history.csv.
"""

from __future__ import annotations

from typing import Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError
from edgetl.training import DefaultOptions, positive_float, resolve_freeze_bn, resolve_options

COMMON = {"lr_decay": 0.5, "freeze_bn": "auto", "hidden": None}


def build_model(ctx: FitContext, hidden: Any) -> Any:
    """``edgetl.training.build_classifier``, its error turned into one naming the option."""
    from edgetl.training import build_classifier

    try:
        return build_classifier(ctx, hidden=hidden)
    except ValueError as exc:
        raise ConfigError(f"strategy.options.{exc}") from None


def set_trainable(model: Any, groups: list[Any], n_top: int) -> list[Any]:
    """Head trainable; the top ``n_top`` backbone groups trainable, the rest frozen.

    Returns:
        The frozen groups (kept in eval mode so their BatchNorm statistics stay).
    """
    for p in model.features.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    n_top = max(0, min(n_top, len(groups)))
    for g in groups[len(groups) - n_top:]:
        for p in g.parameters():
            p.requires_grad_(True)
    if n_top == len(groups):  # parameters outside every group train with the stem
        for p in model.features.parameters():
            p.requires_grad_(True)
        return []
    return [model.features] if n_top == 0 else list(groups[:len(groups) - n_top])


def _per_rank_batch(ctx: FitContext) -> int:
    return max(1, ctx.config.train.batch_size // ctx.dist.world)



class Finetune(DefaultOptions, Strategy):
    name = "finetune"
    description = "train the head and the top N (or all) backbone layer groups, discriminative learning rates"
    requires = ("torch",)
    extra = "train"
    DEFAULTS = {"unfreeze": "all", **COMMON}

    def baseline_options(self, kind: str) -> dict[str, Any] | None:
        """``scratch``: every layer trains, one learning rate, BatchNorm statistics training;
        ``finetune``: this strategy with its defaults (the source-only baseline of ``dann`` and
        ``intermediate-pretrain``, which learn from unlabelled target images too)."""
        if kind == "finetune":
            return {}
        return {"unfreeze": "all", "lr_decay": 1.0, "freeze_bn": False} if kind == "scratch" else None

    def fit(self, ctx: FitContext) -> TrainedModel:
        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        model, stopper = train_finetune(ctx, self.name, opts)
        return TrainedModel(module=model, task="classify", labels=list(ctx.labels), best_epoch=stopper.best_epoch)


def train_finetune(ctx: FitContext, name: str, opts: dict[str, Any], train: Any = None,
                   callbacks: tuple[Any, ...] = ()) -> tuple[Any, Any]:
    """``finetune``'s training (``unfreeze``, ``lr_decay``, ``freeze_bn``, ``hidden`` in ``opts``).

    ``train``/``callbacks`` go to ``fit_epochs`` (a split with extra images, an
    extra loss): ``rehearsal`` is this plus a buffer and distillation.
    Returns the model and the EarlyStopping.
    """
    from edgetl.training import fit_epochs, param_groups

    decay = positive_float(name, "lr_decay", opts["lr_decay"], upper=1.0)
    model = build_model(ctx, opts["hidden"])
    groups = ctx.backbone.layer_groups(model.features)
    unfreeze = opts["unfreeze"]
    if unfreeze == "all":
        n_top = len(groups)
    elif isinstance(unfreeze, int) and not isinstance(unfreeze, bool) and unfreeze >= 0:
        n_top = unfreeze
    else:
        raise ConfigError(f"strategy.options.unfreeze: expected 'all' or a number of layer groups "
                          f"(0..{len(groups)}), got {unfreeze!r}")
    frozen = set_trainable(model, groups, n_top)
    bn = resolve_freeze_bn(name, opts["freeze_bn"], _per_rank_batch(ctx))
    ctx.progress(f"{name}: head + top {min(n_top, len(groups))}/{len(groups)} layer groups, "
                 f"lr {ctx.config.train.lr:g} x {decay:g} per group, BatchNorm "
                 f"{'frozen' if bn else 'training'}", 0, ctx.config.train.epochs)
    opt_groups = param_groups(model, groups, ctx.config.train.lr, decay, ctx.config.train.weight_decay)
    stopper = fit_epochs(
        ctx, model, opt_groups, tag=name, train=train, callbacks=callbacks,
        eval_modules=lambda: frozen + ([model.features] if bn else []),
        on_epoch_start=lambda e: {"unfrozen_groups": min(n_top, len(groups))})
    return model, stopper


class Progressive(DefaultOptions, Strategy):
    name = "progressive"
    description = "head first, then unfreeze one more layer group every K epochs (or on plateau), lower lr deeper"
    requires = ("torch",)
    extra = "train"
    DEFAULTS = {"every": 2, "trigger": "epochs", "max_groups": None, **COMMON}

    def plan(self, every: int, n_groups: int, epochs: int, max_groups: int | None) -> list[int]:
        """Unfrozen backbone groups at each epoch (index = epoch - 1) for ``trigger: epochs``."""
        cap = n_groups if max_groups is None else min(max_groups, n_groups)
        return [min(cap, e // every) for e in range(epochs)]

    def fit(self, ctx: FitContext) -> TrainedModel:
        from edgetl.training import HIGHER_IS_BETTER, fit_epochs, param_groups

        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        decay = positive_float(self.name, "lr_decay", opts["lr_decay"], upper=1.0)
        every = opts["every"]
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise ConfigError(f"strategy.options.every: expected a positive number of epochs, got {every!r}")
        if opts["trigger"] not in ("epochs", "plateau"):
            raise ConfigError(f"strategy.options.trigger: expected epochs or plateau, got {opts['trigger']!r}")
        model = build_model(ctx, opts["hidden"])
        groups = ctx.backbone.layer_groups(model.features)
        cap = len(groups) if opts["max_groups"] is None else min(int(opts["max_groups"]), len(groups))
        epochs = ctx.config.train.epochs
        lr = ctx.config.train.lr
        bn = resolve_freeze_bn(self.name, opts["freeze_bn"], _per_rank_batch(ctx))
        if opts["trigger"] == "epochs":
            plan = self.plan(every, len(groups), epochs, cap)
            steps = [f"epoch {plan.index(n) + 1}: +group{len(groups) - n} (lr {lr * decay ** n:.2g})"
                     for n in sorted(set(plan)) if n > 0]
            ctx.progress(f"progressive schedule: epoch 1: head (lr {lr:.2g}); " + "; ".join(steps), 0, epochs)
        else:
            ctx.progress(f"progressive schedule: head first, then one more group after {every} epochs "
                         f"without a better val {ctx.config.train.early_stopping.metric}", 0, epochs)
        state = {"n": 0, "frozen": [model.features], "since": 0, "best": None}
        metric = ctx.config.train.early_stopping.metric
        higher = HIGHER_IS_BETTER[metric]

        def on_epoch_start(epoch: int) -> dict[str, Any]:
            if opts["trigger"] == "epochs":
                n = plan[epoch]
            else:
                n = self._plateau_step(ctx, state, every, metric, higher, cap)
            state["n"] = n
            state["frozen"] = set_trainable(model, groups, n)
            return {"unfrozen_groups": n}

        opt_groups = param_groups(model, groups, lr, decay, ctx.config.train.weight_decay)
        stopper = fit_epochs(ctx, model, opt_groups, tag=self.name, on_epoch_start=on_epoch_start,
                             eval_modules=lambda: state["frozen"] + ([model.features] if bn else []))
        return TrainedModel(module=model, task="classify", labels=list(ctx.labels), best_epoch=stopper.best_epoch)

    @staticmethod
    def _plateau_step(ctx: FitContext, state: dict[str, Any], every: int, metric: str, higher: bool,
                      cap: int) -> int:
        """Unfreeze one more group after ``every`` epochs without a better val metric (from history)."""
        rows = [r for r in ctx.history if r.get("strategy") == "progressive"]
        n = rows[-1]["unfrozen_groups"] if rows else 0
        if not rows:
            return n
        value = rows[-1].get(f"val_{metric}")
        if value is not None and (state["best"] is None or (value > state["best"] if higher else value < state["best"])):
            state["best"], state["since"] = value, 0
        else:
            state["since"] += 1
        if state["since"] >= every and n < cap:
            state["since"] = 0
            return n + 1
        return n
