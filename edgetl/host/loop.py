"""The training loop shared by the gradient-based strategies (finetune, progressive, scratch).

One epoch: the rank's slice of every global batch (see :mod:`edgetl.host.ddp`),
soft-target cross-entropy (label smoothing, class weights, mixup/cutmix),
optional gradient clipping, a scheduler step per batch; then validation on
the whole val split (sharded, gathered), early stopping on
``train.early_stopping.metric`` with the best weights restored at the end, and
a checkpoint for ``--resume``. On CUDA: autocast (bf16 when supported, else
fp16 with a gradient scaler), channels_last and pinned memory.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.api import FitContext
from edgetl.host import ddp
from edgetl.host.optim import Schedule, class_weights, loss_sum, make_optimizer, soft_targets
from edgetl.metrics import evaluate

HIGHER_IS_BETTER = {"balanced_accuracy": True, "accuracy": True, "roc_auc": True, "loss": False}


def after_epoch(epoch: int, tag: str) -> None:
    """Called after each epoch's checkpoint is written (a seam for tests that interrupt a run)."""


def num_workers(device_type: str) -> int:
    """DataLoader workers sized to the machine; ``EDGETL_WORKERS`` overrides.

    On a small CPU (≤ 2 cores) decoding in the main process is cheaper than a
    worker competing with the model's compute threads.
    """
    if os.environ.get("EDGETL_WORKERS"):
        return int(os.environ["EDGETL_WORKERS"])
    cpus = os.cpu_count() or 1
    if device_type == "cuda":
        return min(8, max(1, cpus - 1))
    return 0 if cpus <= 2 else min(4, cpus - 1)


def use_channels_last(device_type: str) -> bool:
    """channels_last on CUDA always; on CPU too (measured faster for depthwise convs), unless
    ``EDGETL_CHANNELS_LAST=0``."""
    return os.environ.get("EDGETL_CHANNELS_LAST", "1") != "0"


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (hidden when stderr is not a terminal or on non-zero ranks).

    Its position also goes to the running :class:`edgetl.progress.Heartbeat`, which
    prints it every few seconds when the bar is hidden (a log file, CI).
    """
    from tqdm.auto import tqdm

    from edgetl import progress, quiet

    done = 0

    class Bar(tqdm):  # a disabled tqdm keeps no desc/n: count here
        def update(self, n: float = 1) -> bool | None:
            nonlocal done
            done += int(n)
            progress.note(f"{desc}: batch {done}/{total}", shown=not self.disable)
            return super().update(n)

    return Bar(total=total, desc=desc, file=quiet.progress_stream(), leave=False, dynamic_ncols=True,
               disable=None if enabled else True)


class _Logits:
    """Wraps a ClassifierModel so DDP sees ``logits`` as ``forward``."""

    @staticmethod
    def wrap(model: Any) -> Any:
        from torch import nn

        class Logits(nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, x):
                return self.inner.logits(x)

        return Logits(model)


def predict_probs(model: Any, dataset: Any, device: Any, info: ddp.DistInfo, batch_size: int = 64,
                  full: bool = False) -> np.ndarray:
    """Probabilities (N, K) of ``model`` on every item of ``dataset``, gathered over ranks.

    ``full=False`` uses the single-view softmax of ``logits`` (selection during
    training); ``full=True`` the module's own forward (test-time views included).
    """
    import torch

    idx = ddp.shard(len(dataset), info)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=batch_size,
                                         shuffle=False, num_workers=num_workers(device.type),
                                         pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    with torch.inference_mode(), _autocast(device):
        for x, _ in loader:
            x = _to(x, device)
            p = model(x) if full else torch.softmax(model.logits(x).float(), dim=1)
            out.append(p.float().cpu().numpy())
    model.train(was_training)
    k = len(out[0][0]) if out else 0
    mine = np.concatenate(out) if out else np.zeros((0, k), dtype=np.float32)
    parts = ddp.all_gather_object(info, mine)
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else mine


def _to(x: Any, device: Any) -> Any:
    import torch

    x = torch.as_tensor(x).to(device, non_blocking=True)
    if use_channels_last(device.type) and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def _autocast(device: Any) -> Any:
    import contextlib

    import torch

    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def val_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy (nats) of validation probabilities."""
    if not len(y):
        return 0.0
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0)).mean())


@dataclass
class EarlyStopper:
    """Tracks the best validation metric; ``stop`` after ``patience`` epochs without improvement."""

    metric: str
    patience: int | None
    best: float | None = None
    best_epoch: int = -1
    bad: int = 0
    best_state: dict[str, Any] | None = field(default=None, repr=False)

    def update(self, value: float, epoch: int, model: Any) -> bool:
        """Record the epoch; returns True when it is a new best (weights copied)."""
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

    def restore(self, model: Any) -> None:
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


def val_row(ctx: FitContext, probs: np.ndarray, prefix: str = "val_") -> dict[str, Any]:
    """Selection metrics of one epoch from validation probabilities."""
    doc = evaluate(ctx.val.labels, probs, ctx.labels)
    return {f"{prefix}loss": val_loss(ctx.val.labels, probs), f"{prefix}accuracy": doc["accuracy"],
            f"{prefix}balanced_accuracy": doc["balanced_accuracy"], f"{prefix}roc_auc": doc["roc_auc"]}


def selection_value(row: dict[str, Any], metric: str) -> float:
    value = row.get(f"val_{metric}")
    return float("nan") if value is None else float(value)


def set_bn_eval(modules: list[Any]) -> None:
    """Freeze BatchNorm running statistics inside ``modules`` (eval mode, affine still trainable)."""
    from torch import nn

    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train_epochs(ctx: FitContext, model: Any, groups: list[dict[str, Any]], *, tag: str,
                 on_epoch_start: Callable[[int], dict[str, Any]] | None = None,
                 eval_modules: Callable[[], list[Any]] | None = None,
                 epochs: int | None = None, time_budget_s: float | None = None) -> EarlyStopper:
    """Train ``model`` (a ClassifierModel) with ``groups`` for ``train.epochs`` epochs.

    Args:
        ctx: the fit context; ``ctx.train``/``ctx.val`` are :class:`edgetl.host.splits.Split`.
        groups: optimiser parameter groups (:func:`edgetl.host.optim.param_groups`).
        tag: the strategy's name, recorded in history and the checkpoint.
        on_epoch_start: called with the epoch index before training it, may change
            ``requires_grad``; returns extra history columns. The trainable set is
            re-read after it (DDP is re-wrapped when it changed).
        eval_modules: modules to keep in eval mode while training (frozen groups,
            frozen BatchNorm).
        epochs: overrides ``train.epochs``.
        time_budget_s: stop after the epoch that exceeds this wall-clock (baselines).

    Returns:
        The :class:`EarlyStopper`; the model holds the best weights on return.
    """
    import torch

    cfg = ctx.config.train
    info: ddp.DistInfo = ctx.state["dist"]
    device = ctx.device
    epochs = epochs or cfg.epochs
    k = len(ctx.labels)
    model.to(device)
    if use_channels_last(device.type):
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.weight_decay)
    sampler = ddp.GlobalBatchSampler(len(ctx.train), cfg.batch_size, cfg.seed, info)
    loader = torch.utils.data.DataLoader(ctx.train.dataset, batch_sampler=sampler,
                                         num_workers=num_workers(device.type),
                                         pin_memory=device.type == "cuda")
    schedule = Schedule(optimizer, cfg.schedule.kind, cfg.schedule.warmup_epochs, epochs,
                        max(1, len(sampler)), cfg.schedule.patience)
    weights = class_weights(ctx.train.labels, k, cfg.class_weights)
    weights_t = None if weights is None else torch.tensor(weights, dtype=torch.float32, device=device)
    mix = _batch_mix(ctx.config.augment, k)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    stopper = EarlyStopper(cfg.early_stopping.metric, cfg.early_stopping.patience)
    start_epoch = 0
    resume = ctx.state.get("resume_state")
    if resume and resume.get("tag") == tag:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        stopper.best, stopper.best_epoch, stopper.bad = resume["best"], resume["best_epoch"], resume["bad"]
        stopper.best_state = resume["best_state"]
        torch.set_rng_state(resume["rng"])
        start_epoch = resume["epoch"] + 1
    wrapped, trainable_ids = None, None
    started = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        extra = on_epoch_start(epoch) if on_epoch_start else {}
        ids = tuple(id(p) for p in model.parameters() if p.requires_grad)
        if wrapped is None or ids != trainable_ids:
            wrapped, trainable_ids = _wrap(model, info, device), ids
        sampler.set_epoch(epoch)
        if hasattr(ctx.train.dataset, "set_epoch"):
            ctx.train.dataset.set_epoch(epoch)
        model.train()
        set_bn_eval(eval_modules() if eval_modules else [])
        sizes = sampler.global_sizes
        t0 = time.perf_counter()
        total_loss, seen = 0.0, 0
        bar = progress_bar(len(sizes), f"{tag} {epoch + 1}/{epochs}", info.is_main)
        for (x, y), global_n in zip(loader, sizes, strict=True):
            x, y = _to(x, device), torch.as_tensor(y).to(device, non_blocking=True)
            if mix is not None:
                x, y = mix(x, y)
            target = soft_targets(y, k, cfg.label_smoothing)
            with _autocast(device):
                logits = wrapped(x)
            loss = loss_sum(logits, target, weights_t) * (info.world / global_n)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                               cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            total_loss += float(loss.detach()) * global_n / info.world
            seen += len(x)
            bar.update(1)
        bar.close()
        total_loss, seen = ddp.all_reduce_sum(info, [total_loss, float(seen)])
        train_s = time.perf_counter() - t0
        probs = predict_probs(model, ctx.val.plain, device, info, batch_size=max(cfg.batch_size, 64))
        row = {"strategy": tag, "epoch": epoch + 1, "train_loss": total_loss / max(seen, 1),
               **val_row(ctx, probs), **{f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups},
               "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "epoch_time_s": time.perf_counter() - t0, "train_images_per_s": seen / max(train_s, 1e-9),
               **extra}
        value = selection_value(row, stopper.metric)
        row["best"] = stopper.update(value, epoch + 1, model)
        schedule.epoch_end(value, HIGHER_IS_BETTER[stopper.metric])
        ctx.log_epoch(row)
        _checkpoint(ctx, tag, epoch, model, optimizer, schedule, stopper)
        after_epoch(epoch + 1, tag)
        if stopper.stop:
            ctx.progress(f"early stop: no better val {stopper.metric} for {stopper.patience} epochs", epoch + 1,
                         epochs)
            break
        if time_budget_s is not None and time.perf_counter() - started >= time_budget_s:
            ctx.progress(f"{tag}: time budget of {time_budget_s:.0f} s reached", epoch + 1, epochs)
            break
    stopper.restore(model)
    model.eval()
    return stopper


def _wrap(model: Any, info: ddp.DistInfo, device: Any) -> Any:
    logits = _Logits.wrap(model)
    if not info.enabled:
        return logits
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(logits, device_ids=ids, broadcast_buffers=False)


def _batch_mix(augment: list[str], k: int) -> Any:
    names = [a for a in augment if a in ("mixup", "cutmix")]
    if not names:
        return None
    from edgetl.host.data import batch_mix

    return batch_mix(names, k)


def _checkpoint(ctx: FitContext, tag: str, epoch: int, model: Any, optimizer: Any, schedule: Schedule,
                stopper: EarlyStopper) -> None:
    """Write ``checkpoint.pt`` (rank 0) so ``--resume`` continues after this epoch."""
    path = ctx.state.get("checkpoint")
    if not path or not ctx.state["dist"].is_main:
        return
    import torch

    state = {"tag": tag, "epoch": epoch, "model": copy.deepcopy(model.state_dict()),
             "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "best": stopper.best, "best_epoch": stopper.best_epoch, "bad": stopper.bad,
             "best_state": stopper.best_state, "rng": torch.get_rng_state(),
             "history": list(ctx.state.get("history", []))}
    tmp = str(path) + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)
