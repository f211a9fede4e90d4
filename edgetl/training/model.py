"""A backbone with a classification head: the module the built-in classify strategies return.

Strategies are free to return any module (see ``docs/plugins.md``); this one
is offered because most transfer-learning methods need exactly it: pooled
features, dropout, an optional hidden layer, a linear layer, softmax.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgetl.api import FitContext


class Classifier(nn.Module):
    """(N, 3, H, W) normalised -> (N, K) probabilities; :meth:`logits` is what training optimises.

    Args:
        features: the backbone, (N, 3, H, W) -> (N, feature_dim).
        feature_dim: D.
        num_classes: K.
        dropout: before each linear layer of the head.
        hidden: width of one hidden layer (ReLU), or None for a linear head.

    Attributes:
        features: the backbone module.
        head: ``nn.Sequential`` from features to logits.
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, dropout: float = 0.2,
                 hidden: int | None = None):
        super().__init__()
        self.features = features
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            feature_dim = hidden
        layers.append(nn.Linear(feature_dim, num_classes))
        self.head = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, K) unnormalised scores."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def build_classifier(ctx: FitContext, dropout: float | None = None, hidden: int | None = None) -> Classifier:
    """``ctx.module`` (the built backbone) with a fresh head for ``ctx.labels``.

    In a ``--from`` run (``ctx.previous``) it is the previous run's classifier
    instead: ``ctx.module`` holds the previous backbone weights and the head is
    the previous head expanded to ``ctx.labels`` (old rows copied, new rows
    fresh), so a plain fine-tune continues from the old model; ``hidden`` may
    then be None (the previous head's shape) or equal to it.

    ``dropout`` defaults to the run's ``train.dropout``; ``hidden`` must be a
    positive integer or None (a ValueError otherwise, for the strategy to
    turn into a ConfigError naming its option).
    """
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"hidden: expected a positive integer or null, got {hidden!r}")
    rate: Any = ctx.config.train.dropout if dropout is None else dropout
    previous = getattr(ctx, "previous", None)
    if previous is not None and previous.classifier is not None:
        return _continued(previous.classifier, float(rate), hidden)
    return Classifier(ctx.module, ctx.backbone.feature_dim, len(ctx.labels), dropout=float(rate), hidden=hidden)


def head_hidden(model: Classifier) -> int | None:
    """The width of ``model``'s hidden head layer, or None for a linear head."""
    linears = [m for m in model.head if isinstance(m, nn.Linear)]
    return linears[0].out_features if len(linears) > 1 else None


def _continued(model: Classifier, dropout: float, hidden: int | None) -> Classifier:
    """A ``--from`` run's classifier (previous weights, expanded head) with this run's dropout."""
    old = head_hidden(model)
    if hidden is not None and hidden != old:
        raise ValueError(f"hidden: {hidden} differs from the previous run's head "
                         f"({'a linear head' if old is None else f'hidden {old}'}); leave it unset with --from")
    for m in model.head:
        if isinstance(m, nn.Dropout):
            m.p = dropout
    return model


def expand_classifier(features: nn.Module, feature_dim: int, head_state: dict[str, torch.Tensor],
                      num_classes: int, rows: list[int | None] | None = None) -> Classifier | None:
    """A :class:`Classifier` whose head starts from ``head_state`` (a previous Classifier's ``head.*``).

    ``rows[i]``: the previous row (class) that new class ``i`` starts from, or
    None for a fresh (seeded) row; default: the previous rows first, in order.
    A previous row copied to ``m`` new rows gets ``bias - log m`` in each, so
    their softmax mass together equals the previous class's probability (a
    split class starts out predicting its parent, spread evenly over its
    children). A hidden layer is copied whole. Returns None when
    ``head_state`` is not a Classifier head (a linear-probe head with
    standardisation, a custom module).
    """
    import math

    if set(head_state) == {"1.weight", "1.bias"}:
        hidden, last = None, "1"
    elif set(head_state) == {"1.weight", "1.bias", "4.weight", "4.bias"}:
        hidden, last = int(head_state["1.weight"].shape[0]), "4"
    else:
        return None
    k_old = head_state[f"{last}.weight"].shape[0]
    rows = list(range(k_old)) + [None] * (num_classes - k_old) if rows is None else list(rows)
    if head_state["1.weight"].shape[1] != feature_dim or len(rows) != num_classes or any(
            r is not None and not 0 <= r < k_old for r in rows):
        return None
    model = Classifier(features, feature_dim, num_classes, hidden=hidden)
    layer = model.head[int(last)]
    with torch.no_grad():
        if hidden is not None:
            model.head[1].weight.copy_(head_state["1.weight"])
            model.head[1].bias.copy_(head_state["1.bias"])
        for i, r in enumerate(rows):
            if r is not None:
                layer.weight[i].copy_(head_state[f"{last}.weight"][r])
                layer.bias[i] = head_state[f"{last}.bias"][r] - math.log(rows.count(r))
    return model


class PriorAdjusted(nn.Module):
    """``module``'s probabilities times ``exp(offsets)`` per class, renormalised (class-prior adjustment).

    The run's operating point ``train.threshold.policy: balanced`` as a fixed
    last step of the model, so the saved module, every exported bundle and the
    device output the adjusted probabilities and the one decision rule
    (:func:`edgetl.metrics.decide`, argmax) applies to them;
    :func:`edgetl.metrics.adjust` is the same computation in numpy.

    Args:
        module: (N, 3, H, W) -> (N, K) probabilities.
        offsets: (K,) log offsets, :func:`edgetl.metrics.adjustment_offsets`.
    """

    def __init__(self, module: nn.Module, offsets: Any):
        super().__init__()
        self.module = module
        w = torch.as_tensor(offsets, dtype=torch.float64)
        self.register_buffer("weights", torch.exp(w - w.max()).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.module(x) * self.weights
        return q / q.sum(dim=1, keepdim=True).clamp_min(1e-30)
