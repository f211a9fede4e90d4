"""Nearest-neighbour search and greedy coreset selection as plain matrix operations.

Distances are computed as ``||a||² - 2·a·bᵀ + ||b||²`` (one ``matmul``), never
with ``torch.cdist``: that form exports to ONNX (MatMul, ReduceMin, ArgMin) and
runs on ONNX Runtime and OpenVINO. The search walks the memory bank in chunks
of ``chunk`` rows, so peak memory is ``queries x chunk`` floats whatever the
bank size; the chunk loop is a Python loop, unrolled into a fixed graph at
export time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CHUNK = 4096


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Q, D), (M, D) -> (Q, M) squared Euclidean distances, clamped at 0 (rounding can go below)."""
    a2 = (a * a).sum(dim=1, keepdim=True)
    b2 = (b * b).sum(dim=1).unsqueeze(0)
    return (a2 - 2.0 * (a @ b.transpose(0, 1)) + b2).clamp_min(0.0)


def nearest(queries: torch.Tensor, bank: torch.Tensor, chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row its nearest bank row: (squared distance (Q,), index (Q,) int64).

    Args:
        queries: (Q, D) float32.
        bank: (M, D) float32, M >= 1.
        chunk: bank rows per matrix product; bounds peak memory to Q x chunk.
    """
    best_d: torch.Tensor | None = None
    best_i: torch.Tensor | None = None
    for start in range(0, bank.shape[0], chunk):
        part = bank[start:start + chunk]
        d, i = squared_distances(queries, part).min(dim=1)
        i = i + start
        if best_d is None or best_i is None:
            best_d, best_i = d, i
        else:
            closer = d < best_d
            best_d = torch.where(closer, d, best_d)
            best_i = torch.where(closer, i, best_i)
    assert best_d is not None and best_i is not None, "empty memory bank"
    return best_d, best_i


def k_nearest(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = CHUNK) -> torch.Tensor:
    """(Q, k) indices of the ``k`` nearest bank rows of each query, nearest first (fit time only)."""
    k = min(k, bank.shape[0])
    out = []
    for start in range(0, queries.shape[0], chunk):
        d = squared_distances(queries[start:start + chunk], bank)
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def greedy_coreset(features: torch.Tensor, size: int, seed: int = 0, projection_dim: int = 128,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Indices of ``size`` rows chosen by greedy k-center selection (PatchCore, Roth et al. 2022, Alg. 1).

    Each step adds the row farthest from everything chosen so far, so the
    subset covers the feature space with the smallest radius greedy search
    finds. As in the paper, distances are measured after a Johnson-Lindenstrauss
    random projection to ``projection_dim`` dimensions (drawn from ``seed``),
    which keeps selection cheap without changing which rows cover the space
    much. The first row is drawn from ``seed`` too: same input, same subset.

    Args:
        features: (M, D) float32.
        size: rows to keep, 1..M.
        progress: ``progress(done, size)`` after the first row and about every 10 % of the rows chosen
            (selection is one pass of ``size`` steps: minutes for a large bank on a CPU).
    Returns:
        (size,) int64 indices into ``features``.
    """
    m, d = features.shape
    size = max(1, min(size, m))
    gen = torch.Generator().manual_seed(seed)
    x = features.float()
    if projection_dim and projection_dim < d:
        proj = torch.randn(d, projection_dim, generator=gen) / projection_dim ** 0.5
        x = x @ proj.to(x.device)
    chosen = torch.empty(size, dtype=torch.long)
    first = int(torch.randint(0, m, (1,), generator=gen).item())
    chosen[0] = first
    norms = (x * x).sum(dim=1)  # ||x||², once: each step is then one matrix-vector product
    min_d = (norms - 2.0 * torch.mv(x, x[first]) + norms[first]).clamp_min_(0.0)
    d = torch.empty_like(min_d)
    every = max(1, size // 10)
    if progress is not None:
        progress(1, size)
    for step in range(1, size):
        nxt = int(torch.argmax(min_d).item())
        chosen[step] = nxt
        torch.mv(x, x[nxt], out=d)
        d.mul_(-2.0).add_(norms).add_(norms[nxt])
        torch.minimum(min_d, d, out=min_d)
        if progress is not None and ((step + 1) % every == 0 or step + 1 == size):
            progress(step + 1, size)
    return chosen
