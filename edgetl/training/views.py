"""Flip/rotation views of a batch, and test-time views inside a module.

Flips, rotations and transposes only move pixels, so they are exact on
normalised tensors: a view computed on the device equals the view computed
here. :class:`WithTTA` wraps any classifier module so that test-time
augmentation is part of the module a strategy returns (and therefore of the
exported graph), not a run setting applied elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl.training.view_names import SQUARE_TTA_VIEWS, TTA_VIEWS, VIEWS, check_tta_views

__all__ = ["SQUARE_TTA_VIEWS", "TTA_VIEWS", "VIEWS", "WithTTA", "apply_view"]


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    """One view of a (N, 3, H, W) batch; an unknown name is a ValueError listing the known ones."""
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
    if view == "transpose":
        return x.transpose(2, 3)
    if view == "antitranspose":
        return torch.flip(x.transpose(2, 3), dims=(2, 3))
    raise ValueError(f"unknown view {view!r} (known: {', '.join(VIEWS)})")


class WithTTA(nn.Module):
    """``module``'s probabilities averaged over the identity and ``views`` (test-time augmentation).

    Args:
        module: (N, 3, H, W) -> (N, K) probabilities.
        views: names from :data:`TTA_VIEWS` (any input) and :data:`SQUARE_TTA_VIEWS` (square
            inputs only: a non-square batch is a ValueError at forward).

    Raises:
        ValueError: an unknown view name.
    """

    def __init__(self, module: nn.Module, views: tuple[str, ...] | list[str]):
        super().__init__()
        check_tta_views(views)
        self.module = module
        self.views = tuple(views)
        self.needs_square = any(view in SQUARE_TTA_VIEWS for view in self.views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.needs_square:  # H, W are static in every export we make, so this check leaves no trace in a graph
            check_tta_views(self.views, (x.shape[2], x.shape[3]))
        # every view in one batch: one pass through the network (and through an exported graph), so a
        # runtime or a quantizer's validation pays one call per image, not one per view
        views = torch.cat([x] + [apply_view(x, view) for view in self.views], dim=0)
        probs = self.module(views)
        return probs.reshape(1 + len(self.views), x.shape[0], *probs.shape[1:]).mean(dim=0)
