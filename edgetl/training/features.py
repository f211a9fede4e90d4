"""Frozen features: one backbone pass per image and view, optionally cached on disk.

With a cache folder, features are kept as ``<key>.npy`` keyed by backbone,
weights, preprocessing, view and the SHA-256 of every image file, so a rerun
skips the backbone pass entirely. The disk cache is used only when the module
is ``ctx.module`` (the backbone as the engine built it): features of any other
module are computed in memory every time, since nothing here can tell whether
its weights changed.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgetl.api import FitContext
from edgetl.training import dist
from edgetl.training.data import autocast, loader, to_device
from edgetl.training.views import VIEWS, apply_view


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_key(ctx: FitContext, paths: list[Path], view: str, tag: object = None) -> str:
    """Backbone + weights + preprocessing + view (+ ``tag``: anything with a stable ``repr``, e.g.
    (cache tag, dtype name)) + file contents -> a hex key.

    A ``--from`` run's backbone holds the previous run's weights, not the pretrained ones:
    that run's ``model.pt`` is part of the key, so its features never collide with these."""
    cfg = ctx.config.backbone
    h = hashlib.sha256()
    what = (ctx.backbone.name, cfg.pretrained, cfg.weights, ctx.input.to_dict() if ctx.input else None, view)
    h.update(repr(what if tag is None else (*what, tag)).encode())
    if cfg.weights:
        h.update(_file_digest(Path(cfg.weights)).encode())
    previous = getattr(ctx, "previous", None)
    if previous is not None:
        h.update(_file_digest(Path(previous.run_dir) / "model.pt").encode())
    for p in paths:
        h.update(_file_digest(p).encode())
    return h.hexdigest()[:32]


def extract_features(ctx: FitContext, module: torch.nn.Module, dataset: Any,
                     views: tuple[str, ...] | list[str] = ("identity",), *, batch_size: int = 64,
                     cache_dir: str | Path | None = None, cache_tag: str | None = None,
                     dtype: Any = np.float32) -> np.ndarray:
    """``module``'s outputs (e.g. pooled features (N, D)) for every image of ``dataset`` and view.

    Args:
        module: frozen (run in inference mode, eval mode).
        dataset: a Split (``ctx.train``, ``ctx.val``; its never-augmented
            ``.plain`` images are used, its ``.paths`` key the cache) or any
            dataset of ``(x, y)``.
        views: names from :data:`edgetl.training.VIEWS`; ``identity`` is the image as is.
        cache_dir: folder of the on-disk cache; default ``ctx.cache_dir``; None: memory only.
        cache_tag: names a module that is not ``ctx.module`` but a fixed function of
            its pretrained weights (e.g. ``"bottom:7"`` for the frozen stages below
            a partial fine-tune, :func:`split_backbone`), so its outputs may be
            disk-cached too: the tag is part of the key. The caller vouches that
            the same tag always means the same frozen weights.
        dtype: of the returned (and cached) array, e.g. ``np.float16`` to halve
            the memory of intermediate maps (N, C, H, W).

    Returns:
        ``dtype`` (len(views) * N, ...): the rows of ``views[0]`` first, in dataset order.
        Every process of a ``--nproc`` run gets the whole array.
    """
    for view in views:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r} (known: {', '.join(VIEWS)})")
    plain, paths = getattr(dataset, "plain", dataset), getattr(dataset, "paths", None)
    folder = cache_dir if cache_dir is not None else ctx.cache_dir
    dtype = np.dtype(dtype)
    tag = None if cache_tag is None and dtype == np.float32 else (cache_tag, dtype.name)
    files: dict[str, Path | None] = dict.fromkeys(views)
    if folder is not None and paths is not None and (module is ctx.module or cache_tag is not None):
        files = {v: Path(folder) / f"{cache_key(ctx, paths, v, tag)}.npy" for v in views}
    out = {v: np.load(f) for v, f in files.items() if f is not None and f.is_file()}
    todo = [v for v in views if v not in out]
    if todo:
        out.update(_compute(ctx, module, plain, todo, batch_size, getattr(dataset, "name", "data"), dtype))
        for view in todo:
            file = files[view]
            if file is not None and ctx.dist.is_main:
                file.parent.mkdir(parents=True, exist_ok=True)
                np.save(file, out[view])
    return np.concatenate([out[v] for v in views])


def _compute(ctx: FitContext, module: torch.nn.Module, plain: Any, views: list[str], batch_size: int,
             name: str, dtype: np.dtype) -> dict[str, np.ndarray]:
    """One pass over this process's shard, every view per batch; gathered over processes."""
    idx = dist.shard(len(plain), ctx.dist)
    was_training = module.training
    module.to(ctx.device).eval()
    parts: dict[str, list[np.ndarray]] = {v: [] for v in views}
    done, start = 0, time.perf_counter()
    with torch.inference_mode(), autocast(ctx.device):  # CUDA: bf16/fp16 autocast; CPU: float32 as is
        for x, _ in loader(plain, batch_size, ctx.device, indices=idx):
            x = to_device(x, ctx.device)
            for view in views:
                parts[view].append(module(apply_view(x, view)).float().cpu().numpy().astype(dtype))
            done += len(x)
            ctx.progress(f"features {name}", done, len(idx))
    module.train(was_training)
    ctx.feature_passes.append({"split": name, "images": len(plain), "views": len(views),
                               "seconds": time.perf_counter() - start})
    result = {}
    for view in views:
        mine = np.concatenate(parts[view]) if parts[view] else np.zeros((0, 0), dtype)
        gathered = [p for p in dist.all_gather(ctx.dist, mine) if len(p)]
        result[view] = np.concatenate(gathered) if gathered else mine
    return result


def gem(x: torch.Tensor, p: float = 3.0) -> torch.Tensor:
    """Generalised-mean pooling of (N, C, H, W) to (N, C): (mean x^p)^(1/p) over positive values.

    p = 1 is average pooling, p -> inf max pooling; p = 3 keeps small strong
    responses (a crack in one corner) that an average dilutes.
    """
    return x.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class StagePool(nn.Module):
    """Pooled features from several backbone stages, in one forward pass: (N, 3, H, W) -> (N, D).

    GeM of each chosen stage map (timm's ``forward_intermediates`` levels,
    shallow to deep), then the average and GeM of the network's final map.
    Shallow stages see fine detail at high resolution; a probe on the last
    pooled vector alone misses it.

    Args:
        module: a timm model built with ``num_classes=0`` (it must have ``forward_intermediates``).
        stages: indices into the intermediate levels (e.g. ``(2, 3, 4)``).
        p: the GeM exponent.

    Attributes:
        feature_dim: D, found by one small forward pass.
    """

    def __init__(self, module: nn.Module, stages: tuple[int, ...] | list[int], p: float = 3.0):
        super().__init__()
        if not hasattr(module, "forward_intermediates"):
            raise ValueError(f"stages: {type(module).__name__} has no forward_intermediates "
                             "(multi-stage pooling needs a timm backbone)")
        self.module, self.stages, self.p = module, tuple(int(s) for s in stages), float(p)
        with torch.no_grad():
            was = module.training
            module.eval()
            _, maps = module.forward_intermediates(torch.zeros(1, 3, 64, 64))
            module.train(was)
        for s in self.stages:
            if not -len(maps) <= s < len(maps):
                raise ValueError(f"stages: {s} out of range (the backbone has {len(maps)} levels: 0..{len(maps) - 1})")
        final = self.module.num_features
        self.feature_dim = sum(maps[s].shape[1] for s in self.stages) + 2 * int(final)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        final, maps = self.module.forward_intermediates(x)
        parts = [gem(maps[s], self.p) for s in self.stages]
        return torch.cat(parts + [final.mean(dim=(2, 3)), gem(final, self.p)], dim=1)
