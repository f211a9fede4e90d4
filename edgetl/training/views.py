"""Flip/rotation views of a batch, and test-time views inside a module.

Flips and 180° rotations are exact on normalised tensors, so a view computed
on the device equals the view computed here. :class:`WithTTA` wraps any
classifier module so that test-time augmentation is part of the module a
strategy returns (and therefore of the exported graph), not a run setting
applied elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl.training.view_names import TTA_VIEWS, VIEWS

__all__ = ["TTA_VIEWS", "VIEWS", "WithTTA", "apply_view"]


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
        views: names from :data:`TTA_VIEWS`.
    """

    def __init__(self, module: nn.Module, views: tuple[str, ...] | list[str]):
        super().__init__()
        for view in views:
            if view not in TTA_VIEWS:
                raise ValueError(f"unknown test-time view {view!r} (known: {', '.join(TTA_VIEWS)})")
        self.module = module
        self.views = tuple(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # every view in one batch: one pass through the network (and through an exported graph), so a
        # runtime or a quantizer's validation pays one call per image, not one per view
        views = torch.cat([x] + [apply_view(x, view) for view in self.views], dim=0)
        probs = self.module(views)
        return probs.reshape(1 + len(self.views), x.shape[0], *probs.shape[1:]).mean(dim=0)
