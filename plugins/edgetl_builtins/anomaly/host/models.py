"""The modules ``patchcore`` and ``padim`` return: image -> (score (N,), map (N, 1, H, W)).

Both outputs are normalised so 0.5 is the threshold chosen on validation data
(:class:`~edgetl_builtins.anomaly.host.features.Normalise`). Everything learned — the memory
bank, its neighbour table, the Gaussians, the thresholds — is a buffer, so the
exported graph carries it as constants and needs nothing beside the image.
"""

from __future__ import annotations

import torch
from torch import nn

from edgetl_builtins.anomaly.host.features import MapHead, Normalise, PatchFeatures
from edgetl_builtins.anomaly.host.search import CHUNK, nearest


class AnomalyModel(nn.Module):
    """Shared forward: raw patch scores -> smoothed map -> normalised (score, map)."""

    def __init__(self, features: PatchFeatures, size: tuple[int, int], sigma: float, border: int = 0):
        super().__init__()
        self.features = features
        self.border = int(border)  # input pixels along each edge left out of the image score (not the map)
        self.map_head = MapHead(size, sigma)
        self.image_norm = Normalise()
        self.pixel_norm = Normalise()

    def patch_scores(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D, h, w) features -> (patch scores (N, h, w), raw image score (N,))."""
        raise NotImplementedError

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised (image score (N,), smoothed map (N, 1, H, W)): what thresholds are chosen on."""
        patches, score = self.patch_scores(self.features(x))
        return score, self.map_head(patches)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        score, amap = self.raw(x)
        return self.image_norm(score), self.pixel_norm(amap)


class PatchCoreModel(AnomalyModel):
    """PatchCore (Roth et al. 2022): distance of each patch to its nearest good patch in the memory bank.

    Image score: the largest patch distance ``s*``, reweighted as in the
    paper (eq. 7) by ``1 - softmax(d(m_test*, N_b(m*)))[m*]``, where ``m*`` is
    the bank patch nearest the worst test patch and ``N_b(m*)`` its ``b``
    nearest bank neighbours (``support``, precomputed at fit time, ``m*``
    first): a worst patch whose nearest good patch sits in a sparse part of
    the bank scores higher than one in a dense part.

    Buffers: ``bank`` (M, D) float32, ``support`` (M, b) int64.
    """

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, support: torch.Tensor,
                 size: tuple[int, int], sigma: float = 4.0, chunk: int = CHUNK, border: int = 0):
        super().__init__(features, size, sigma, border)
        self.register_buffer("bank", bank.contiguous())
        self.register_buffer("support", support.contiguous())
        self.chunk = int(chunk)

    def patch_scores(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, d, h, w = f.shape
        q = f.permute(0, 2, 3, 1).reshape(n * h * w, d)
        d2, idx = nearest(q, self.bank, self.chunk)
        dist = d2.sqrt().reshape(n, h * w)
        b = min(round(self.border * h / self.map_head.size[0]), (min(h, w) - 1) // 2)  # border in patches
        inner = dist.reshape(n, h, w)[:, b:h - b, b:w - b].reshape(n, -1)
        worst, where = inner.max(dim=1)
        where = (where // (w - 2 * b) + b) * w + where % (w - 2 * b) + b  # back to the full grid
        nn_index = idx.reshape(n, h * w).gather(1, where.unsqueeze(1)).squeeze(1)       # (N,)
        worst_patch = q.reshape(n, h * w, d).gather(1, where.view(n, 1, 1).expand(n, 1, d))  # (N, 1, D)
        b = self.support.shape[1]
        neighbours = self.bank.index_select(0, self.support.index_select(0, nn_index).reshape(-1)).reshape(n, b, d)
        dists = ((neighbours - worst_patch) ** 2).sum(dim=2).sqrt()                      # (N, b)
        weight = 1.0 - torch.softmax(dists, dim=1)[:, 0]
        return dist.reshape(n, h, w), weight * worst


class PadimModel(AnomalyModel):
    """PaDiM (Defard et al. 2021): Mahalanobis distance of each patch to the Gaussian of good patches there.

    A random subset of ``channels`` of the patch features is kept (seeded);
    each grid position has its own mean and inverse covariance. The image
    score is the largest value of the smoothed map.

    Buffers: ``channels`` (d,) int64, ``mean`` (P, d), ``inv_cov`` (P, d, d), P = h·w.
    """

    def __init__(self, features: PatchFeatures, channels: torch.Tensor, mean: torch.Tensor,
                 inv_cov: torch.Tensor, size: tuple[int, int], sigma: float = 4.0, border: int = 0):
        super().__init__(features, size, sigma, border)
        self.register_buffer("channels", channels)
        self.register_buffer("mean", mean.contiguous())
        self.register_buffer("inv_cov", inv_cov.contiguous())

    def patch_scores(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, _, h, w = f.shape
        f = f.index_select(1, self.channels)
        diff = f.flatten(2).permute(2, 0, 1) - self.mean.unsqueeze(1)                    # (P, N, d)
        m2 = (torch.bmm(diff, self.inv_cov) * diff).sum(dim=2).clamp_min(0.0)          # (P, N)
        patches = m2.sqrt().transpose(0, 1).reshape(n, h, w)
        return patches, patches.flatten(1).max(dim=1).values

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        patches, _ = self.patch_scores(self.features(x))
        amap = self.map_head(patches)
        b = min(self.border, (min(self.map_head.size) - 1) // 2)
        inner = amap[..., b:amap.shape[-2] - b, b:amap.shape[-1] - b]
        return inner.flatten(1).max(dim=1).values, amap
