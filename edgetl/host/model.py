"""The module every classification strategy returns: backbone + head + softmax.

Keeping one composition means a saved run can be rebuilt from its metadata
(backbone name, head spec) plus a state dict, without pickling classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ClassifierModel(nn.Module):
    """(N, 3, H, W) normalised -> (N, K) probabilities (softmax of ``logits``)."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int,
                 dropout: float = 0.2, hidden: int | None = None):
        super().__init__()
        self.features = features
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            feature_dim = hidden
        layers.append(nn.Linear(feature_dim, num_classes))
        self.head = nn.Sequential(*layers)
        self.head_spec = {"feature_dim": int(feature_dim if not hidden else self.head[1].in_features),
                          "num_classes": num_classes, "dropout": dropout, "hidden": hidden}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x), dim=1)


def build_classifier(backbone: Any, num_classes: int, *, pretrained: bool = True,
                     weights: str | None = None, dropout: float = 0.2,
                     hidden: int | None = None) -> ClassifierModel:
    """Build backbone ``backbone`` (a :class:`edgetl.api.Backbone`) with a fresh head."""
    features = backbone.build(pretrained=pretrained, weights=weights)
    return ClassifierModel(features, backbone.feature_dim, num_classes, dropout=dropout, hidden=hidden)
