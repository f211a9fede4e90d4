"""Patch features shared by PatchCore and PaDiM: mid-level maps of the frozen backbone.

A patch feature is the concatenation, at one position, of the chosen stages'
feature maps (``Backbone.feature_maps``, shallow to deep), each first averaged
over its 3x3 neighbourhood (PatchCore's local aggregation: a patch sees a
little context without losing resolution) and the deeper ones upsampled to the
shallowest chosen stage's grid. The output is (N, D, h, w) with ``h, w`` the
grid of the first chosen stage (stride 8 for stage 2 of an EfficientNet).

The smoothing kernel of the anomaly map is a buffer here too, so the whole
model is one exportable module of tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from edgetl.errors import ConfigError


class PatchFeatures(nn.Module):
    """(N, 3, H, W) normalised images -> (N, D, h, w) aggregated patch features.

    Args:
        backbone: the :class:`edgetl.api.Backbone` component (its ``feature_maps``).
        module: the backbone's built network (frozen, eval mode).
        stages: indices into ``feature_maps``' list, shallow to deep.
    """

    def __init__(self, backbone: Any, module: nn.Module, stages: Sequence[int]):
        super().__init__()
        self.backbone_component = backbone
        self.module = module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.stages = tuple(int(s) for s in stages)
        self.aggregate = nn.AvgPool2d(3, stride=1, padding=1)  # zeros count: edge patches are damped, not noisier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.backbone_component.feature_maps(self.module, x)
        chosen = [maps[i] for i in self.stages]
        size = chosen[0].shape[-2:]
        out = []
        for fmap in chosen:
            fmap = self.aggregate(fmap)
            if fmap.shape[-2:] != size:
                fmap = F.interpolate(fmap, size=size, mode="bilinear", align_corners=False)
            out.append(fmap)
        return torch.cat(out, dim=1)


def check_stages(backbone: Any, module: nn.Module, stages: Any, size: tuple[int, int]) -> list[int]:
    """Validate ``options.stages`` against the backbone's maps; return them sorted."""
    if (not isinstance(stages, (list, tuple)) or not stages
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in stages)):
        raise ConfigError(f"strategy.options.stages: expected a list of feature-map indices, got {stages!r}")
    with torch.no_grad():
        n = len(backbone.feature_maps(module.eval(), torch.zeros(1, 3, *size)))
    bad = [s for s in stages if not 0 <= s < n]
    if bad:
        raise ConfigError(f"strategy.options.stages: {bad} out of range: backbone {backbone.name} "
                          f"has {n} feature maps (0..{n - 1})")
    return sorted(set(stages))


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """1-D Gaussian (K,) with K = 2·round(4σ)+1, summing to 1."""
    radius = max(1, int(4.0 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t * t) / (2.0 * sigma * sigma))
    return k / k.sum()


class MapHead(nn.Module):
    """Patch scores (N, h, w) -> anomaly map (N, 1, H, W): bilinear upsampling, then a Gaussian blur.

    The blur is separable (two 1-D convolutions with reflect padding), so it
    costs 2K multiply-adds per pixel instead of K².
    """

    def __init__(self, size: tuple[int, int], sigma: float):
        super().__init__()
        self.size = (int(size[0]), int(size[1]))
        kernel = gaussian_kernel(sigma) if sigma > 0 else torch.ones(1)
        radius = min(len(kernel) // 2, min(self.size) - 1)  # reflect padding needs radius < side
        kernel = kernel[len(kernel) // 2 - radius: len(kernel) // 2 + radius + 1]
        kernel = kernel / kernel.sum()
        self.register_buffer("kernel_h", kernel.view(1, 1, 1, -1).clone())
        self.register_buffer("kernel_v", kernel.view(1, 1, -1, 1).clone())
        self.pad = radius

    def forward(self, patch_scores: torch.Tensor) -> torch.Tensor:
        m = F.interpolate(patch_scores.unsqueeze(1), size=self.size, mode="bilinear", align_corners=False)
        if self.pad:
            m = F.conv2d(F.pad(m, (self.pad, self.pad, 0, 0), mode="reflect"), self.kernel_h)
            m = F.conv2d(F.pad(m, (0, 0, self.pad, self.pad), mode="reflect"), self.kernel_v)
        return m


class Normalise(nn.Module):
    """Raw score -> ``sigmoid((raw - threshold) / scale)``: 0.5 is the threshold, order is kept.

    A sigmoid rather than a clipped min-max keeps every score distinct, so
    AUROC computed on normalised scores equals AUROC on raw ones.
    """

    def __init__(self, threshold: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.register_buffer("threshold", torch.tensor(float(threshold)))
        self.register_buffer("scale", torch.tensor(float(scale) if scale > 0 else 1.0))

    def set(self, threshold: float, scale: float) -> None:
        self.threshold.fill_(float(threshold))
        self.scale.fill_(float(scale) if scale > 0 and math.isfinite(scale) else 1.0)

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((raw - self.threshold) / self.scale)
