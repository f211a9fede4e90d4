"""Distributed training on PyTorch's own engine: torchrun, DistributedDataParallel, gloo/NCCL.

``edgetl train --nproc N`` re-launches itself through ``torch.distributed.run``
(torchrun); a process started by torchrun (``WORLD_SIZE`` > 1 in its
environment) joins the process group here. Only rank 0 writes the run
directory and prints; metrics are gathered across ranks.

Batches are identical to single-process training: every rank draws the same
permutation of the training set per epoch (seeded), cuts it into *global*
batches of ``train.batch_size`` and takes its contiguous slice. The loss is
normalised by the global batch size, so DDP's gradient average equals the
single-process gradient (up to BatchNorm statistics, which are per rank).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgetl.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_info() -> DistInfo:
    """The DistInfo torchrun put in the environment (world 1 when not launched by it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(rank=int(os.environ.get("RANK", "0")), world=world,
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun: gloo on CPU, NCCL on CUDA."""
    info = env_info()
    if not info.enabled:
        return info
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            import torch

            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def all_gather_object(info: DistInfo, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(info: DistInfo, obj: Any) -> Any:
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
    return t.tolist()


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


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``edgetl <argv>`` under torchrun with ``nproc`` processes on this node; its exit status.

    ``argv`` must not contain ``--nproc`` (the children are the workers).
    """
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: expected a positive number of processes")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "edgetl", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
