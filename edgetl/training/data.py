"""Plain iteration and prediction: batches on the right device, outputs gathered over processes.

:func:`batches` is for statistics over a split (feature means, memory banks):
no augmentation, no shuffling unless asked, this process's shard only when
``shard=True``. :func:`predict` runs a module over a whole dataset and, in a
``--nproc`` run, returns every process the full result.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from edgetl.api import DistInfo, FitContext
from edgetl.training import dist


def num_workers(device_type: str) -> int:
    """DataLoader workers sized to the machine; ``EDGETL_WORKERS`` overrides.

    On a small CPU (≤ 2 cores) decoding in the main process is cheaper than a
    worker competing with the model's compute threads.
    """
    if os.environ.get("EDGETL_WORKERS"):
        return int(os.environ["EDGETL_WORKERS"])
    cpus = os.cpu_count() or 1
    if device_type == "cuda":
        return min(8, max(1, cpus - 1))
    return 0 if cpus <= 2 else min(4, cpus - 1)


def use_channels_last() -> bool:
    """channels_last memory format (measured faster for depthwise convs on CPU and CUDA);
    ``EDGETL_CHANNELS_LAST=0`` turns it off."""
    return os.environ.get("EDGETL_CHANNELS_LAST", "1") != "0"


def to_device(x: Any, device: torch.device) -> torch.Tensor:
    """A batch on ``device`` (channels_last for 4-D image batches)."""
    x = torch.as_tensor(x).to(device, non_blocking=True)
    if use_channels_last() and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device) -> Any:
    """Mixed precision on CUDA (bf16 when supported, else fp16); nothing on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (hidden when stderr is not a terminal, or when ``enabled`` is False).

    Its position also goes to the running :class:`edgetl.progress.Heartbeat`, which
    prints it every few seconds when the bar is hidden (a log file, CI).
    """
    from tqdm.auto import tqdm

    from edgetl import progress, quiet

    done = 0

    class Bar(tqdm):  # a disabled tqdm keeps no desc/n: count here
        def update(self, n: float = 1) -> bool | None:
            nonlocal done
            done += int(n)
            progress.note(f"{desc}: batch {done}/{total}", shown=not self.disable)
            shown: bool | None = super().update(n)
            return shown

    return Bar(total=total, desc=desc, file=quiet.progress_stream(), leave=False, dynamic_ncols=True,
               disable=None if enabled else True)


def loader(dataset: Any, batch_size: int, device: torch.device, *, shuffle: bool = False,
           indices: list[int] | None = None, seed: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` (or its ``indices``) with workers and pinning sized to ``device``."""
    data = dataset if indices is None else torch.utils.data.Subset(dataset, indices)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen,
                                       num_workers=num_workers(device.type), pin_memory=device.type == "cuda")


def batches(ctx: FitContext, dataset: Any, batch_size: int = 64, shuffle: bool = False, *,
            shard: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``dataset`` on ``ctx.device``, as stored (pass ``split.plain`` for no augmentation).

    Args:
        shuffle: a seeded (``train.seed``) random order.
        shard: only this process's contiguous share (see :func:`edgetl.training.dist.shard`);
            gather your results with :func:`edgetl.training.dist.all_gather`.
    """
    idx = dist.shard(len(dataset), ctx.dist) if shard else None
    for x, y in loader(dataset, batch_size, ctx.device, shuffle=shuffle, indices=idx,
                       seed=ctx.config.train.seed):
        yield to_device(x, ctx.device), torch.as_tensor(y).to(ctx.device)


def predict(module: torch.nn.Module, dataset: Any, device: torch.device, batch_size: int = 64,
            info: DistInfo | None = None, progress: Callable[[int, int], None] | None = None) -> Any:
    """``module``'s outputs on every item of ``dataset`` as float32 numpy, batch first.

    A module returning a tuple (anomaly: score, map) gives a tuple of arrays.
    With ``info`` of a distributed run, each process computes its shard and
    every process gets the whole result, in dataset order. ``progress(done,
    total)`` is called after each batch (images of this process's shard), so a
    minute-long evaluation says how far it got.
    """
    info = info or DistInfo()
    idx = dist.shard(len(dataset), info)
    was_training = module.training
    module.eval()
    parts: list[Any] = []
    done = 0
    with torch.inference_mode(), autocast(device):
        for x, _ in loader(dataset, batch_size, device, indices=idx):
            out = module(to_device(x, device))
            parts.append(tuple(o.float().cpu().numpy() for o in out) if isinstance(out, (tuple, list))
                         else out.float().cpu().numpy())
            done += len(x)
            if progress is not None:
                progress(done, len(idx))
    module.train(was_training)
    gathered = [p for rank in dist.all_gather(info, parts) for p in rank]
    if not gathered:
        return np.zeros((0,), dtype=np.float32)
    if isinstance(gathered[0], tuple):
        return tuple(np.concatenate([p[i] for p in gathered]) for i in range(len(gathered[0])))
    return np.concatenate(gathered)
