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

    ``dropout`` defaults to the run's ``train.dropout``; ``hidden`` must be a
    positive integer or None (a ValueError otherwise, for the strategy to
    turn into a ConfigError naming its option).
    """
    if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
        raise ValueError(f"hidden: expected a positive integer or null, got {hidden!r}")
    rate: Any = ctx.config.train.dropout if dropout is None else dropout
    return Classifier(ctx.module, ctx.backbone.feature_dim, len(ctx.labels), dropout=float(rate), hidden=hidden)
