"""THE epoch loop of every gradient-based strategy, early stopping, history rows, checkpoints.

One epoch of :func:`fit_epochs`: this process's slice of every global batch
(:mod:`edgetl.training.dist`), the loss (soft-target cross-entropy with label
smoothing, class weights and mixup/cutmix unless the strategy passes its own
``loss_fn``) plus any per-step extra losses from callbacks, optional gradient
clipping, a scheduler step per batch; then validation on the whole val split
(sharded, gathered), early stopping on ``train.early_stopping.metric`` with
the best weights restored at the end, a row of ``history.csv`` and a
checkpoint for ``--resume``. On CUDA: autocast (bf16 when supported, else fp16
with a gradient scaler), channels_last and pinned memory.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from edgetl.api import FitContext
from edgetl.metrics import evaluate
from edgetl.training import dist
from edgetl.training.data import autocast, predict, progress_bar, to_device, use_channels_last
from edgetl.training.optim import Schedule, class_weights, make_optimizer, prior_shift, soft_targets

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.training.datasets import Mix

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits (N, K), soft_targets (N, K)) -> (N,)`` per-sample losses."""

HIGHER_IS_BETTER = {"balanced_accuracy": True, "accuracy": True, "roc_auc": True, "loss": False}
"""Selection metrics (``train.early_stopping.metric``) and whether higher is better."""


@dataclass
class HistoryRow:
    """One row of ``history.csv``; every field but ``strategy`` and ``epoch`` is optional.

    Attributes:
        strategy: the strategy's tag (e.g. ``finetune``, ``baseline-scratch``).
        epoch: 1-based.
        train_loss: mean training loss of the epoch.
        val_loss: mean cross-entropy (nats) on val.
        val_accuracy, val_balanced_accuracy, val_roc_auc: selection metrics on val.
        lrs: learning rate per parameter group name (columns ``lr_<name>``).
        trainable_params: parameters with ``requires_grad``.
        epoch_time_s: wall-clock seconds of the epoch, validation included.
        train_images_per_s: training throughput.
        best: whether this epoch is the best so far (its weights are kept).
        extra: more columns, e.g. ``{"unfrozen_groups": 2}``.
    """

    strategy: str
    epoch: int
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    val_balanced_accuracy: float | None = None
    val_roc_auc: float | None = None
    lrs: dict[str, float] = field(default_factory=dict)
    trainable_params: int | None = None
    epoch_time_s: float | None = None
    train_images_per_s: float | None = None
    best: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The flat ``history.csv`` row (``lr_<group>`` columns, extra columns last); None fields dropped."""
        row = {k: v for k, v in asdict(self).items() if k not in ("lrs", "extra") and v is not None}
        row.update({f"lr_{name}": lr for name, lr in self.lrs.items()})
        row.update(self.extra)
        return row


@dataclass
class EarlyStopping:
    """Tracks the best validation metric; ``stop`` after ``patience`` epochs without improvement.

    Attributes:
        metric: a key of :data:`HIGHER_IS_BETTER`.
        patience: epochs without improvement before stopping (None: never stop).
        best, best_epoch: the best value and its 1-based epoch (-1 before any).
        best_state: a CPU copy of the best weights.
    """

    metric: str
    patience: int | None
    best: float | None = None
    best_epoch: int = -1
    bad: int = 0
    best_state: dict[str, Any] | None = field(default=None, repr=False)

    def update(self, value: float | None, epoch: int, model: torch.nn.Module) -> bool:
        """Record the epoch; True when it is a new best (weights copied). NaN/None counts as worst."""
        higher = HIGHER_IS_BETTER[self.metric]
        if value is None or not np.isfinite(value):
            value = -np.inf if higher else np.inf
        if self.best is None or (value > self.best if higher else value < self.best):
            self.best, self.best_epoch, self.bad = float(value), epoch, 0
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return True
        self.bad += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience is not None and self.bad >= self.patience

    def restore(self, model: torch.nn.Module) -> None:
        """Load the best weights back into ``model``."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


class Callback:
    """Hooks into :func:`fit_epochs`; override what you need.

    ``extra_loss`` is how a strategy adds a term per training step, e.g. a
    domain-adversarial loss on a batch drawn from ``ctx.unlabeled``.
    """

    def on_epoch_start(self, epoch: int) -> dict[str, Any]:
        """Before epoch ``epoch`` (0-based); may change ``requires_grad``; returns extra history columns."""
        return {}

    def extra_loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor | None:
        """A scalar added to this step's loss (already a mean over this process's batch), or None.

        ``model`` is the unwrapped module. Under ``--nproc`` every process adds its own term and DDP
        averages the gradients: a penalty on the parameters alone acts exactly as in one process
        (tests/test_strategy_docs.py), a per-batch mean acts as the mean over the processes' batches."""
        return None

    def on_epoch_end(self, row: HistoryRow) -> None:
        """After the epoch's validation, before its row is logged (may add ``row.extra`` columns)."""


@dataclass
class TrainStep:
    """One training step of :func:`fit_epochs`, handed to its ``step`` hook: the batch and two actions.

    The default step is ``step.closure(); step.optimizer_step()``. A hook calls
    them as its method needs: SAM (two closures around a weight perturbation,
    then one update), gradient accumulation (``closure(zero_grad=False,
    scale=1/n)`` on every batch, ``optimizer_step()`` on every n-th), lookahead
    (the update, then its slow-weight interpolation). Whatever the hook does,
    the loop keeps the rest: mixup/cutmix have already mixed ``x``/``y``, the
    closure runs under autocast with the gradient scaler, callbacks' extra
    losses are in it, DDP averages its gradients, and ``--resume`` checkpoints
    the model and optimizer after each epoch (state a hook keeps elsewhere is
    not checkpointed: keep it in the optimizer's ``state`` to survive a resume).

    Attributes:
        model: the unwrapped module being trained.
        optimizer: the torch optimizer (``train.optimizer`` over ``groups``).
        x: this process's batch (N, 3, H, W) on the device (mixed when mixup/cutmix apply); the
            closure reads it when called, so a hook may replace it first (an augmentation of its own).
        y: (N,) class indices, or (N, K) soft targets after mixing (label smoothing applies in the closure).
        epoch: 0-based epoch.
        batch: 0-based index of the batch in the epoch.
        batches: batches in the epoch.
        losses: the loss of every closure call of this step (the first is the epoch's ``train_loss``).
    """

    model: Any
    optimizer: Any
    x: Any
    y: Any
    epoch: int
    batch: int
    batches: int
    _closure: Callable[[bool, float], torch.Tensor] = field(repr=False)
    _update: Callable[[], None] = field(repr=False)
    losses: list[float] = field(default_factory=list)

    def closure(self, zero_grad: bool = True, scale: float = 1.0) -> torch.Tensor:
        """Forward and backward at the current weights: gradients of the step's loss (times ``scale``)
        land in ``.grad`` (cleared first unless ``zero_grad`` is False); returns the loss (detached)."""
        loss = self._closure(zero_grad, scale)
        self.losses.append(float(loss))
        return loss

    def optimizer_step(self) -> None:
        """The update: gradient clipping (``train.grad_clip``), the optimizer's step through the gradient
        scaler. The learning-rate schedule steps once per batch whatever the hook does."""
        self._update()


def default_step(step: TrainStep) -> None:
    """What :func:`fit_epochs` does with each batch unless given a ``step`` hook."""
    step.closure()
    step.optimizer_step()


class _Start(Callback):
    def __init__(self, start: Callable[[int], dict[str, Any]]):
        self.start = start

    def on_epoch_start(self, epoch: int) -> dict[str, Any]:
        return self.start(epoch)


def val_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy (nats) of validation probabilities."""
    if not len(y):
        return 0.0
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())


def val_row(ctx: FitContext, probs: np.ndarray, prefix: str = "val_") -> dict[str, Any]:
    """Selection metrics of one epoch from (N, K) validation probabilities."""
    doc = evaluate(ctx.val.labels, probs, ctx.labels)
    return {f"{prefix}loss": val_loss(ctx.val.labels, probs), f"{prefix}accuracy": doc["accuracy"],
            f"{prefix}balanced_accuracy": doc["balanced_accuracy"], f"{prefix}roc_auc": doc["roc_auc"]}


def selection_value(row: HistoryRow, metric: str) -> float:
    """The row's ``val_<metric>`` (NaN when missing)."""
    value = getattr(row, f"val_{metric}", None)
    return float("nan") if value is None else float(value)


def set_bn_eval(modules: list[torch.nn.Module]) -> None:
    """Freeze BatchNorm running statistics inside ``modules`` (eval mode, affine still trainable)."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy (N,) against soft targets (N, K): the default ``loss_fn``."""
    return -(target * torch.log_softmax(logits.float(), dim=1)).sum(dim=1)


class _TrainForward(torch.nn.Module):
    """``model.logits`` (when it has one) as ``forward``, so DDP wraps what training optimises."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(x) if hasattr(self.model, "logits") else self.model(x)


def save_checkpoint(ctx: FitContext, state: dict[str, Any]) -> None:
    """Write ``ctx.checkpoint`` atomically (rank 0 only) so ``--resume`` continues after this epoch."""
    if ctx.checkpoint is None or not ctx.dist.is_main:
        return
    tmp = str(ctx.checkpoint) + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, ctx.checkpoint)


@dataclass
class _Setup:
    """What one :func:`fit_epochs` call trains with."""

    optimizer: Any
    schedule: Schedule
    sampler: dist.GlobalBatchSampler
    loader: Any
    weights: torch.Tensor | None
    shift: torch.Tensor | None
    mix: Mix | None
    scaler: Any
    stopper: EarlyStopping
    epochs: int


def named_groups(groups: Any) -> list[dict[str, Any]]:
    """``groups`` as a list of dicts, each with a ``name``: a plain iterable of parameters becomes one
    ``head`` group, an unnamed dict ``group<i>`` (its position)."""
    groups = list(groups)
    if groups and not isinstance(groups[0], dict):
        return [{"name": "head", "params": groups}]
    return [g if "name" in g else {**g, "name": f"group{i}"} for i, g in enumerate(groups)]


def _setup(ctx: FitContext, model: torch.nn.Module, groups: list[dict[str, Any]], epochs: int,
           train: Any) -> _Setup:
    cfg = ctx.config.train
    device = ctx.device
    model.to(device)
    if use_channels_last():
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.weight_decay)
    sampler = dist.GlobalBatchSampler(len(train), cfg.batch_size, cfg.seed, ctx.dist)
    from edgetl.training.data import num_workers

    loader = torch.utils.data.DataLoader(train.dataset, batch_sampler=sampler,
                                         num_workers=num_workers(device.type), pin_memory=device.type == "cuda")
    schedule = Schedule(optimizer, cfg.schedule.kind, cfg.schedule.warmup_epochs, epochs, max(1, len(sampler)),
                        cfg.schedule.patience)
    k = len(ctx.labels)
    w = class_weights(train.labels, k, cfg.class_weights)
    weights = None if w is None else torch.tensor(w, dtype=torch.float32, device=device)
    b = prior_shift(train.labels, k, cfg.logit_adjustment)
    shift = None if b is None else torch.tensor(b, dtype=torch.float32, device=device)
    images = train is ctx.train  # batch mixing is for image batches
    names = [a for a in ctx.config.augment if a in ("mixup", "cutmix") and images]
    from edgetl.training.datasets import batch_mix

    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    return _Setup(optimizer, schedule, sampler, loader, weights, shift, batch_mix(names, k) if names else None, scaler,
                  EarlyStopping(cfg.early_stopping.metric, cfg.early_stopping.patience), epochs)


def _resume(ctx: FitContext, tag: str, model: torch.nn.Module, s: _Setup) -> int:
    """Restore a ``--resume`` checkpoint of this ``tag``; the first epoch still to train."""
    state = ctx.resume_state
    if not state or state.get("tag") != tag:
        return 0
    model.load_state_dict(state["model"])
    s.optimizer.load_state_dict(state["optimizer"])
    s.schedule.load_state_dict(state["schedule"])
    s.stopper.best, s.stopper.best_epoch, s.stopper.bad = state["best"], state["best_epoch"], state["bad"]
    s.stopper.best_state = state["best_state"]
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]) + 1


def _wrap(model: torch.nn.Module, ctx: FitContext) -> torch.nn.Module:
    forward = _TrainForward(model)
    if not ctx.dist.enabled:
        return forward
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(forward, device_ids=ids, broadcast_buffers=False)


def _train_epoch(ctx: FitContext, model: torch.nn.Module, wrapped: torch.nn.Module, s: _Setup, epoch: int,
                 tag: str, loss_fn: LossFn, callbacks: list[Callback],
                 step_fn: Callable[[TrainStep], None]) -> tuple[float, int]:
    """One pass over the training set; (summed loss over all processes' images, images seen here)."""
    cfg, device, k, world = ctx.config.train, ctx.device, len(ctx.labels), ctx.dist.world
    total, seen = 0.0, 0
    bar = progress_bar(len(s.sampler), f"{tag} {epoch + 1}/{s.epochs}", ctx.dist.is_main)

    def update() -> None:
        if cfg.grad_clip:
            s.scaler.unscale_(s.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()

    for i, ((x, y), global_n) in enumerate(zip(s.loader, s.sampler.global_sizes, strict=True)):
        x, y = to_device(x, device), torch.as_tensor(y).to(device, non_blocking=True)
        if s.mix is not None:
            x, y = s.mix(x, y)
        holder: list[TrainStep] = []

        def closure(zero_grad: bool, scale: float, global_n: int = global_n,
                    holder: list[TrainStep] = holder) -> torch.Tensor:
            x, y = holder[0].x, holder[0].y  # the hook may have changed the batch (its own augmentation)
            target = soft_targets(y, k, cfg.label_smoothing)
            if zero_grad:
                s.optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                logits = wrapped(x)
            per = loss_fn(logits if s.shift is None else logits.float() + s.shift, target)
            if s.weights is not None:
                per = per * (target @ s.weights)
            loss = per.sum() * (world / global_n)
            for cb in callbacks:
                more = cb.extra_loss(model, x, y, logits)
                if more is not None:
                    loss = loss + more
            s.scaler.scale(loss * scale if scale != 1.0 else loss).backward()
            return loss.detach()

        step = TrainStep(model, s.optimizer, x, y, epoch, i, len(s.sampler), closure, update)
        holder.append(step)
        step_fn(step)
        s.schedule.step()
        total += (step.losses[0] if step.losses else 0.0) * global_n / world
        seen += len(x)
        bar.update(1)
    bar.close()
    return total, seen


def fit_epochs(ctx: FitContext, model: torch.nn.Module, groups: list[dict[str, Any]], *, tag: str,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
               callbacks: list[Callback] | tuple[Callback, ...] = (),
               on_epoch_start: Callable[[int], dict[str, Any]] | None = None,
               eval_modules: Callable[[], list[torch.nn.Module]] | None = None,
               epochs: int | None = None, time_budget_s: float | None = None,
               train: Any = None, val_inputs: Any = None,
               step: Callable[[TrainStep], None] | None = None) -> EarlyStopping:
    """Train ``model`` for ``train.epochs`` epochs; on return it holds the best weights, in eval mode.

    Args:
        ctx: the fit context (``ctx.train`` batches, ``ctx.val`` selection,
            ``ctx.checkpoint``/``ctx.resume_state`` for ``--resume``, ``ctx.dist``).
        model: trained through ``model.logits(x)`` when it has that method,
            else ``model(x)`` must return logits (N, K); validated through
            ``model(x)``, which must return (N, K) probabilities.
        groups: optimiser parameter groups as torch takes them (dicts with ``params``,
            optionally ``lr``, ``weight_decay`` and a ``name`` for the history's
            ``lr_<name>`` column), or a plain iterable of parameters (one group);
            :func:`param_groups` builds discriminative ones.
        tag: the strategy's name, recorded in history and the checkpoint.
        loss_fn: ``(logits (N, K), soft targets (N, K)) -> per-sample loss (N,)``;
            default :func:`soft_cross_entropy`. Class weights apply on top;
            ``train.logit_adjustment`` adds ``tau * log(prior)`` to the logits it gets.
        callbacks: :class:`Callback` objects (extra columns, extra losses).
        on_epoch_start: shorthand for a callback with only ``on_epoch_start``
            (0-based epoch -> extra history columns; may change ``requires_grad``).
        eval_modules: modules kept in eval mode while training (frozen groups,
            frozen BatchNorm); re-read every epoch.
        epochs: overrides ``train.epochs``.
        time_budget_s: stop after the epoch that passes this wall-clock;
            default ``ctx.time_budget_s``.
        train: what to train on instead of ``ctx.train``: a :class:`Split`
            (or anything with ``dataset`` of ``(x, y)`` and ``labels``), e.g.
            cached features (mixup/cutmix then do not apply: they mix images).
        val_inputs: what to validate on instead of ``ctx.val.plain``: a dataset
            of ``(x, y)`` in ``ctx.val``'s order (e.g. its cached features).
        step: what to do with each batch, given a :class:`TrainStep`; default
            :func:`default_step` (one closure, one optimizer step). SAM,
            gradient accumulation, lookahead or any two-pass method is a step
            hook, and keeps ``--resume``, ``--nproc``, AMP and mixup.

    Returns:
        The :class:`EarlyStopping` (``best_epoch``, ``best``).
    """
    train = train if train is not None else ctx.train
    s = _setup(ctx, model, named_groups(groups), epochs or ctx.config.train.epochs, train)
    val = val_inputs if val_inputs is not None else ctx.val.plain
    loss_fn = loss_fn or soft_cross_entropy
    callbacks = list(callbacks) + ([_Start(on_epoch_start)] if on_epoch_start else [])
    budget = time_budget_s if time_budget_s is not None else ctx.time_budget_s
    wrapped: list[Any] = [None, None]  # the DDP-wrapped forward and the trainable set it was built for
    started = time.perf_counter()
    for epoch in range(_resume(ctx, tag, model, s), s.epochs):
        _one_epoch(ctx, model, s, tag, epoch, train, val, loss_fn, callbacks, eval_modules, wrapped,
                   step or default_step)
        if s.stopper.stop:
            ctx.progress(f"early stop: no better val {s.stopper.metric} for {s.stopper.patience} epochs", 0, 0)
            break
        if budget is not None and time.perf_counter() - started >= budget:
            ctx.progress(f"{tag}: time budget of {budget:.0f} s reached after epoch {epoch + 1}/{s.epochs}", 0, 0)
            break
    s.stopper.restore(model)
    model.eval()
    return s.stopper


def _one_epoch(ctx: FitContext, model: torch.nn.Module, s: _Setup, tag: str, epoch: int, train: Any, val: Any,
               loss_fn: LossFn, callbacks: list[Callback], eval_modules: Callable[[], list[torch.nn.Module]] | None,
               wrapped: list[Any], step_fn: Callable[[TrainStep], None]) -> None:
    """Train, validate, log and checkpoint epoch ``epoch`` (0-based)."""
    extra: dict[str, Any] = {}
    for cb in callbacks:
        extra.update(cb.on_epoch_start(epoch))
    ids = tuple(id(p) for p in model.parameters() if p.requires_grad)
    if wrapped[0] is None or ids != wrapped[1]:  # DDP must be rebuilt when the trainable set changes
        wrapped[:] = [_wrap(model, ctx), ids]
    s.sampler.set_epoch(epoch)
    if hasattr(train.dataset, "set_epoch"):
        train.dataset.set_epoch(epoch)
    model.train()
    set_bn_eval(eval_modules() if eval_modules else [])
    t0 = time.perf_counter()
    here_total, here_seen = _train_epoch(ctx, model, wrapped[0], s, epoch, tag, loss_fn, callbacks, step_fn)
    total, seen = dist.all_reduce_sum(ctx.dist, [here_total, float(here_seen)])
    train_s = time.perf_counter() - t0
    row = _epoch_row(ctx, model, s, tag, epoch, total / max(seen, 1), extra, val)
    row.epoch_time_s, row.train_images_per_s = time.perf_counter() - t0, seen / max(train_s, 1e-9)
    for cb in callbacks:
        cb.on_epoch_end(row)
    ctx.log_epoch(row)
    save_checkpoint(ctx, _checkpoint_state(ctx, tag, epoch, model, s))


def _epoch_row(ctx: FitContext, model: torch.nn.Module, s: _Setup, tag: str, epoch: int, train_loss: float,
               extra: dict[str, Any], val: Any) -> HistoryRow:
    """Validate, update early stopping and the plateau schedule; the epoch's history row."""
    batch = max(ctx.config.train.batch_size, 64)
    probs = predict(model, val, ctx.device, batch, ctx.dist)
    metrics = val_row(ctx, probs)
    row = HistoryRow(strategy=tag, epoch=epoch + 1, train_loss=train_loss, **metrics,
                     lrs={g["name"]: g["lr"] for g in s.optimizer.param_groups},
                     trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad), extra=extra)
    value = selection_value(row, s.stopper.metric)
    row.best = s.stopper.update(value, epoch + 1, model)
    s.schedule.epoch_end(value, HIGHER_IS_BETTER[s.stopper.metric])
    return row


def _checkpoint_state(ctx: FitContext, tag: str, epoch: int, model: torch.nn.Module, s: _Setup) -> dict[str, Any]:
    return {"tag": tag, "epoch": epoch, "model": copy.deepcopy(model.state_dict()),
            "optimizer": s.optimizer.state_dict(), "schedule": s.schedule.state_dict(),
            "best": s.stopper.best, "best_epoch": s.stopper.best_epoch, "bad": s.stopper.bad,
            "best_state": s.stopper.best_state, "rng": torch.get_rng_state(), "history": list(ctx.history)}
