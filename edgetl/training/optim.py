"""Optimiser, learning-rate schedule, parameter groups and class weights for strategies.

Learning rates per layer group: the head trains at ``train.lr``; each backbone
group below it at ``lr * decay**depth`` (depth 1 = the group next to the
head), the discriminative rates of ULMFiT. Frozen groups stay in the optimiser
with ``requires_grad = False`` (AdamW/SGD skip parameters without gradients),
so unfreezing later (progressive) never rebuilds the optimiser.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgetl.errors import ConfigError


def class_weights(labels: np.ndarray, num_classes: int, mode: str) -> np.ndarray | None:
    """Per-class loss weights (K,), normalised so the average weight over the training set is 1.

    ``balanced``: 1 / n_c; ``sqrt``: 1 / sqrt(n_c) (milder, often better on ELPV);
    ``none``: None.
    """
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(np.float64)
    safe = np.maximum(counts, 1)
    w: np.ndarray = 1.0 / safe if mode == "balanced" else 1.0 / np.sqrt(safe)
    weights: np.ndarray = w / (float((counts * w).sum()) / max(counts.sum(), 1))
    return weights


def prior_shift(labels: np.ndarray, num_classes: int, tau: float) -> np.ndarray | None:
    """``tau * log(prior)`` (K,) added to the logits inside the loss: the logit-adjusted loss.

    Menon et al., "Long-tail learning via logit adjustment" (ICLR 2021): training
    on ``logits + tau * log(pi)`` makes the raw logits fit ``p(y|x) / pi^tau``, so
    the model's own argmax already favours rare classes (tau 1: balanced
    softmax, the Bayes rule for balanced accuracy). Unlike class weights it
    does not scale any sample's gradient. A class absent from the training set
    gets the prior of one image. ``tau == 0``: None.
    """
    if tau == 0:
        return None
    counts = np.bincount(np.asarray(labels, dtype=int), minlength=num_classes).astype(np.float64)
    prior = np.maximum(counts, 1) / max(counts.sum(), 1)
    shift: np.ndarray = tau * np.log(prior)
    return shift


def soft_targets(y: Any, num_classes: int, smoothing: float) -> Any:
    """One-hot (or already soft, from mixup) targets (N, K), label-smoothed."""
    import torch

    if y.ndim == 1:
        y = torch.nn.functional.one_hot(y.long(), num_classes).float()
    if smoothing:
        y = y * (1 - smoothing) + smoothing / num_classes
    return y


def param_groups(model: Any, backbone_groups: list[Any], lr: float, decay: float = 1.0,
                 weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimiser groups with discriminative learning rates: ``head`` at ``lr``, backbone groups below.

    Args:
        model: the module being trained. Its parameters outside ``model.features``
            (when it has that attribute, as :class:`edgetl.training.Classifier`
            does) and outside every backbone group form the ``head`` group.
        backbone_groups: ``ctx.backbone.layer_groups(backbone)``, stem first.
        lr: the head's learning rate.
        decay: factor per group toward the stem (1.0 = one rate for all).
        weight_decay: for every group.

    Returns:
        ``[{"name": "head", ...}, {"name": "group{i}", "depth": d, ...}, ...]``,
        each with ``params``, ``lr``, ``initial_lr`` and ``weight_decay``; empty
        groups are dropped. Backbone parameters in no group (rare) join the stem
        group. Frozen parameters stay in their group, so unfreezing later never
        rebuilds the optimiser.
    """
    features = getattr(model, "features", None)
    seen: set[int] = set()
    n = len(backbone_groups)
    groups: list[dict[str, Any]] = []
    for i in reversed(range(n)):
        params = [p for p in backbone_groups[i].parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        groups.append({"name": f"group{i}", "depth": n - i, "index": i, "params": params})
    in_features = {id(p) for p in features.parameters()} if features is not None else set()
    head = [p for p in model.parameters() if id(p) not in seen and id(p) not in in_features]
    groups.insert(0, {"name": "head", "depth": 0, "index": n, "params": head})
    rest = [p for p in (features.parameters() if features is not None else ()) if id(p) not in seen]
    if rest and len(groups) > 1:
        groups[-1]["params"] = groups[-1]["params"] + rest
    elif rest:
        groups[0]["params"] = groups[0]["params"] + rest
    for g in groups:
        g["lr"] = g["initial_lr"] = lr * decay ** g["depth"]
        g["weight_decay"] = weight_decay
    return [g for g in groups if g["params"]]


def make_optimizer(name: str, groups: list[dict[str, Any]], lr: float, weight_decay: float) -> Any:
    """``adamw`` or ``sgd`` (Nesterov momentum 0.9) over ``groups`` (``train.optimizer``)."""
    import torch

    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ConfigError(f"train.optimizer: unknown optimiser '{name}' (expected adamw or sgd)")


class Schedule:
    """Learning-rate factor per step: linear warmup, then cosine to 0, constant, or plateau steps.

    Built on ``torch.optim.lr_scheduler.LambdaLR``; ``plateau`` multiplies the
    factor by 0.1 after ``patience`` epochs without a better validation metric
    (the same rule as ``ReduceLROnPlateau``, kept here so it composes with warmup).
    """

    def __init__(self, optimizer: Any, kind: str, warmup_epochs: float, epochs: int, steps_per_epoch: int,
                 patience: int = 3):
        import torch

        self.kind, self.patience = kind, patience
        self.warmup = max(0, int(round(warmup_epochs * steps_per_epoch)))
        self.total = max(1, epochs * steps_per_epoch)
        self.plateau_mult = 1.0
        self._best: float | None = None
        self._bad = 0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self.factor)

    def factor(self, step: int) -> float:
        warm = (step + 1) / self.warmup if self.warmup and step < self.warmup else 1.0
        if self.kind == "cosine":
            progress = min(1.0, max(0, step - self.warmup) / max(1, self.total - self.warmup))
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "plateau":
            return warm * self.plateau_mult
        return warm

    def step(self) -> None:
        self.scheduler.step()

    def epoch_end(self, value: float, higher_is_better: bool) -> None:
        """Plateau bookkeeping with the epoch's validation metric."""
        if self.kind != "plateau":
            return
        better = self._best is None or (value > self._best if higher_is_better else value < self._best)
        if better:
            self._best, self._bad = value, 0
            return
        self._bad += 1
        if self._bad >= self.patience:
            self.plateau_mult *= 0.1
            self._bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler.state_dict(), "plateau_mult": self.plateau_mult,
                "best": self._best, "bad": self._bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.plateau_mult, self._best, self._bad = state["plateau_mult"], state["best"], state["bad"]
