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

from edgetl.api import FitContext
from edgetl.training import dist
from edgetl.training.data import loader, to_device
from edgetl.training.views import VIEWS, apply_view


def _file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cache_key(ctx: FitContext, paths: list[Path], view: str) -> str:
    """Backbone + weights + preprocessing + view + file contents -> a hex key."""
    cfg = ctx.config.backbone
    h = hashlib.sha256()
    h.update(repr((ctx.backbone.name, cfg.pretrained, cfg.weights, ctx.input.to_dict() if ctx.input else None,
                   view)).encode())
    if cfg.weights:
        h.update(_file_digest(Path(cfg.weights)).encode())
    for p in paths:
        h.update(_file_digest(p).encode())
    return h.hexdigest()[:32]


def extract_features(ctx: FitContext, module: torch.nn.Module, dataset: Any,
                     views: tuple[str, ...] | list[str] = ("identity",), *, batch_size: int = 64,
                     cache_dir: str | Path | None = None) -> np.ndarray:
    """``module``'s outputs (e.g. pooled features (N, D)) for every image of ``dataset`` and view.

    Args:
        module: frozen (run in inference mode, eval mode).
        dataset: a Split (``ctx.train``, ``ctx.val``; its never-augmented
            ``.plain`` images are used, its ``.paths`` key the cache) or any
            dataset of ``(x, y)``.
        views: names from :data:`edgetl.training.VIEWS`; ``identity`` is the image as is.
        cache_dir: folder of the on-disk cache; default ``ctx.cache_dir``; None: memory only.

    Returns:
        float32 (len(views) * N, D): the rows of ``views[0]`` first, in dataset order.
        Every process of a ``--nproc`` run gets the whole array.
    """
    for view in views:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r} (known: {', '.join(VIEWS)})")
    plain, paths = getattr(dataset, "plain", dataset), getattr(dataset, "paths", None)
    folder = cache_dir if cache_dir is not None else ctx.cache_dir
    cacheable = folder is not None and paths is not None and module is ctx.module
    files = {v: Path(folder) / f"{cache_key(ctx, paths, v)}.npy" if cacheable else None for v in views}
    out = {v: np.load(f) for v, f in files.items() if f is not None and f.is_file()}
    todo = [v for v in views if v not in out]
    if todo:
        out.update(_compute(ctx, module, plain, todo, batch_size, getattr(dataset, "name", "data")))
        for view in todo:
            if files[view] is not None and ctx.dist.is_main:
                files[view].parent.mkdir(parents=True, exist_ok=True)
                np.save(files[view], out[view])
    return np.concatenate([out[v] for v in views])


def _compute(ctx: FitContext, module: torch.nn.Module, plain: Any, views: list[str], batch_size: int,
             name: str) -> dict[str, np.ndarray]:
    """One pass over this process's shard, every view per batch; gathered over processes."""
    idx = dist.shard(len(plain), ctx.dist)
    was_training = module.training
    module.to(ctx.device).eval()
    parts: dict[str, list[np.ndarray]] = {v: [] for v in views}
    done, start = 0, time.perf_counter()
    with torch.inference_mode():
        for x, _ in loader(plain, batch_size, ctx.device, indices=idx):
            x = to_device(x, ctx.device)
            for view in views:
                parts[view].append(module(apply_view(x, view)).float().cpu().numpy())
            done += len(x)
            ctx.progress(f"features {name}", done, len(idx))
    module.train(was_training)
    ctx.feature_passes.append({"split": name, "images": len(plain), "views": len(views),
                               "seconds": time.perf_counter() - start})
    result = {}
    for view in views:
        mine = np.concatenate(parts[view]) if parts[view] else np.zeros((0, 0), np.float32)
        gathered = [p for p in dist.all_gather(ctx.dist, mine) if len(p)]
        result[view] = np.concatenate(gathered) if gathered else mine
    return result
