"""The module every classification strategy returns: backbone + head + softmax.

Keeping one composition means a saved run can be rebuilt from its metadata
(backbone name, head spec) plus a state dict, without pickling classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

VIEWS = ("identity", "hflip", "vflip", "rot180", "rot90", "rot270")
TTA_VIEWS = ("hflip", "vflip", "rot180")  # shape-preserving for any H, W


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One view of a (N, 3, H, W) batch; flips are exact on normalised tensors (rot90/rot270 need H == W)."""
    if view == "identity":
        return x
    if view == "hflip":
        return torch.flip(x, dims=(3,))
    if view == "vflip":
        return torch.flip(x, dims=(2,))
    if view == "rot180":
        return torch.flip(x, dims=(2, 3))
    if view == "rot90":
        return torch.rot90(x, 1, dims=(2, 3))
    if view == "rot270":
        return torch.rot90(x, 3, dims=(2, 3))
    raise ValueError(f"unknown view {view!r} (known: {', '.join(VIEWS)})")


class ClassifierModel(nn.Module):
    """(N, 3, H, W) normalised -> (N, K) probabilities (softmax of ``logits``).

    ``tta`` (e.g. ``("hflip", "vflip")``) makes ``forward`` average the
    probabilities of the identity view and those flips, inside the module, so
    the exported graph and the device compute exactly what was evaluated.
    ``logits`` (training) always uses the single identity view.
    """

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int,
                 dropout: float = 0.2, hidden: int | None = None, tta: tuple[str, ...] | list[str] = ()):
        super().__init__()
        for view in tta:
            if view not in TTA_VIEWS:
                raise ValueError(f"unknown test-time view {view!r} (known: {', '.join(TTA_VIEWS)})")
        self.tta = tuple(tta)
        self.features = features
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(feature_dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            feature_dim = hidden
        layers.append(nn.Linear(feature_dim, num_classes))
        self.head = nn.Sequential(*layers)
        self.head_spec = {"feature_dim": int(feature_dim if not hidden else self.head[1].in_features),
                          "num_classes": num_classes, "dropout": dropout, "hidden": hidden,
                          "tta": list(self.tta)}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(self.logits(x), dim=1)
        if not self.tta:
            return probs
        for view in self.tta:
            probs = probs + torch.softmax(self.logits(apply_view(x, view)), dim=1)
        return probs / (1 + len(self.tta))


def build_classifier(backbone: Any, num_classes: int, *, pretrained: bool = True,
                     weights: str | None = None, dropout: float = 0.2,
                     hidden: int | None = None, tta: tuple[str, ...] = ()) -> ClassifierModel:
    """Build backbone ``backbone`` (a :class:`edgetl.api.Backbone`) with a fresh head."""
    features = backbone.build(pretrained=pretrained, weights=weights)
    return ClassifierModel(features, backbone.feature_dim, num_classes, dropout=dropout, hidden=hidden,
                           tta=tta)
