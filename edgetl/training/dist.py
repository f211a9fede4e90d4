"""DDP helpers a strategy may need: where this process stands, sharding, gathering.

``edgetl train --nproc N`` runs N processes under torchrun (the engine joins
the process group; see ``docs/training.md``). A strategy's ``fit`` runs in
every process: ``ctx.dist`` says which one this is. :func:`edgetl.training.fit_epochs`
and :func:`edgetl.training.extract_features` already shard and gather; use these
helpers only for work of your own (e.g. statistics over the training set).

Batches are identical to single-process training: every rank draws the same
permutation of the training set per epoch (seeded), cuts it into *global*
batches of ``train.batch_size`` and takes its contiguous slice
(:class:`GlobalBatchSampler`). Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from edgetl.api import DistInfo, FitContext

__all__ = ["DistInfo", "GlobalBatchSampler", "all_gather", "all_reduce_sum", "barrier", "broadcast",
           "dist_info", "env_info", "is_main", "shard"]


def dist_info(ctx: FitContext) -> DistInfo:
    """This process's :class:`DistInfo` (``ctx.dist``)."""
    return ctx.dist


def is_main(ctx: FitContext) -> bool:
    """Whether this process is rank 0 (the one that writes files and prints)."""
    return ctx.dist.is_main


def env_info() -> DistInfo:
    """The DistInfo torchrun put in the environment (world 1 when not launched by it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_gather(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks."""
    if not info.enabled:
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return [float(v) for v in t.tolist()]


class GlobalBatchSampler:
    """Yields this rank's slice of each global batch; same global batches for any world size.

    Attributes:
        global_sizes: the size of every global batch of the current epoch, so the
            loss can be normalised by it.
    """

    def __init__(self, n: int, batch_size: int, seed: int, info: DistInfo, shuffle: bool = True):
        self.n, self.batch_size, self.seed, self.info, self.shuffle = n, batch_size, seed, info, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self) -> list[list[int]]:
        import torch

        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        batches = [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        # a last batch smaller than the world would leave a rank without data
        return [b for b in batches if len(b) >= self.info.world]

    @property
    def global_sizes(self) -> list[int]:
        return [len(b) for b in self._global_batches()]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            per = len(batch) / self.info.world
            yield batch[round(self.info.rank * per):round((self.info.rank + 1) * per)]

    def __len__(self) -> int:
        return len(self._global_batches())


def shard(n: int, info: DistInfo) -> list[int]:
    """This rank's indices of an evaluation set of ``n`` items (contiguous, all covered once)."""
    per = n / info.world
    return list(range(round(info.rank * per), round((info.rank + 1) * per)))
