"""A backbone cut in two: a frozen bottom whose output maps can be cached, and a top that trains on them.

Partial fine-tuning at full resolution on a CPU: the stem and lower stages
hold most of the compute (large maps) and change least in transfer, so they
run once per image (:func:`edgetl.training.extract_features` with a
``cache_tag``), and only the upper stages (small maps) train, for many
epochs, on the cached maps. ``nn.Sequential(bottom, top)`` is the backbone
again, with the same modules: the model a strategy returns is a plain module
that exports like any other.
"""

from __future__ import annotations

import torch
from torch import nn


def split_backbone(module: nn.Module, n_top: int) -> tuple[nn.Sequential, nn.Sequential]:
    """``(bottom, top)`` with ``top(bottom(x)) == module(x)``; ``top`` holds the top ``n_top`` layer groups.

    The layer groups are the backbone's ``layer_groups`` for the
    EfficientNet/MobileNet layout (``conv_stem``, ``bn1``, ``blocks``,
    ``conv_head``, ``bn2``, ``global_pool``): the stem, each stage of
    ``blocks``, the head convolution. ``n_top = 2`` is the last stage and the
    head convolution. Both halves share ``module``'s submodules (no copies).

    Raises:
        ValueError: another layout (checked by running both halves on a small
            input against ``module`` itself), or ``n_top`` outside
            ``1 .. len(blocks) + 1`` (at least the head trains, at least the stem is frozen).
    """
    parts = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")
    if not all(hasattr(module, a) for a in parts) or not isinstance(module.blocks, nn.Sequential):
        raise ValueError(f"{type(module).__name__} has no {', '.join(parts)} layout (EfficientNet-style) to split")
    stages = len(module.blocks)
    if isinstance(n_top, bool) or not isinstance(n_top, int) or not 1 <= n_top <= stages + 1:
        raise ValueError(f"expected a number of top layer groups in 1..{stages + 1}, got {n_top!r}")
    cut = stages + 1 - n_top
    bottom = nn.Sequential(module.conv_stem, module.bn1, *module.blocks[:cut])
    top = nn.Sequential(*module.blocks[cut:], module.conv_head, module.bn2, module.global_pool)
    _check_same(module, bottom, top)
    return bottom, top


def _check_same(module: nn.Module, bottom: nn.Module, top: nn.Module) -> None:
    """The two halves must compute what ``module`` computes (a forward with extra steps would differ)."""
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
            whole, halves = module(x), top(bottom(x))
    finally:
        module.train(was)
    if whole.shape != halves.shape or not torch.allclose(whole, halves, rtol=1e-4, atol=1e-5):
        raise ValueError(f"{type(module).__name__}: its forward is not conv_stem, bn1, blocks, conv_head, bn2, "
                         "global_pool in order; it cannot be split")


class OnMaps(nn.Module):
    """``head(top(maps))`` for training on cached maps (float16 on disk: cast here).

    ``logits`` is what :func:`edgetl.training.fit_epochs` optimises; ``forward``
    gives probabilities, as every classifier module here does.
    """

    def __init__(self, top: nn.Module, head: nn.Module):
        super().__init__()
        self.top, self.head = top, head

    def logits(self, maps: torch.Tensor) -> torch.Tensor:
        return self.head(self.top(maps.float()))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(maps), dim=1)
