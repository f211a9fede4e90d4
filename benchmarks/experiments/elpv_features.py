"""ELPV: frozen multi-stage features of every cell, in the 8 dihedral views, computed once and cached.

The heads explored in benchmarks/experiments/elpv_heads.py train in seconds on these
arrays, so every lever (loss, sampling, standardisation, TTA, which stages)
is measured on three seeded splits without a backbone pass per try.

For each of the 2,624 cells (the package's order, independent of the split
seed) and each view of the dihedral group (identity, the three rotations,
and the four reflections), the backbone runs once at ``--size`` (the cells are
300 px) and each stage's map is pooled by average, max and GeM (p = 3, on
the map clamped at a small positive floor), plus the network's own pooled
head features. Output: ``<out>/<backbone>-<size>.npz`` with ``features``
(V, N, D) float16, ``views``, ``blocks`` (name, start, end per pooled part),
``probability`` and ``cell_type`` per cell. Each view is saved as soon as it
is done, so a stopped run resumes.

    nice -n 10 python benchmarks/experiments/elpv_features.py --backbone efficientnet_lite0 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DIHEDRAL = ("identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose")
GEM_P = 3.0


def dihedral(x, view: str):
    """One of the 8 symmetries of the square on a (N, C, H, W) batch."""
    import torch

    ops = {"identity": lambda t: t, "hflip": lambda t: torch.flip(t, dims=(3,)),
           "vflip": lambda t: torch.flip(t, dims=(2,)), "rot180": lambda t: torch.flip(t, dims=(2, 3)),
           "rot90": lambda t: torch.rot90(t, 1, dims=(2, 3)), "rot270": lambda t: torch.rot90(t, 3, dims=(2, 3)),
           "transpose": lambda t: t.transpose(2, 3),
           "antitranspose": lambda t: torch.flip(t.transpose(2, 3), dims=(2, 3))}
    return ops[view](x)


def pooled(maps, head) -> tuple[list, list[tuple[str, int]]]:
    """avg, max and GeM of every stage map, then avg of the head map: a list of (N, C) parts and their names."""
    import torch

    parts, names = [], []
    for i, m in enumerate(maps):
        g = m.clamp_min(1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1 / GEM_P)
        for kind, t in (("avg", m.mean(dim=(2, 3))), ("max", m.amax(dim=(2, 3))), ("gem", g)):
            parts.append(t)
            names.append((f"s{i}_{kind}", t.shape[1]))
    for kind, t in (("avg", head.mean(dim=(2, 3))), ("gem", head.clamp_min(1e-6).pow(GEM_P).mean(dim=(2, 3))
                                                   .pow(1 / GEM_P))):
        parts.append(t)
        names.append((f"head_{kind}", t.shape[1]))
    return [torch.cat(parts, dim=1)], names


def load_cells(size: int, spec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cell as (N, size, size) uint8 grey, its defect probability and cell type."""
    from edgetl.data.elpv import read_cells
    from edgetl.preprocess import prepare, read_image

    cells = read_cells()
    imgs = np.empty((len(cells), size, size), np.uint8)
    for i, c in enumerate(cells):
        rgb = prepare(read_image(c.source), spec)[0]
        imgs[i] = rgb[..., 0]
    return imgs, np.array([c.probability for c in cells], np.float32), np.array([c.cell_type for c in cells])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--views", default=",".join(DIHEDRAL))
    ap.add_argument("--out", default="benchmarks/results/work/elpv-features")
    args = ap.parse_args()
    import torch

    from edgetl.plugins import get_manager

    torch.set_num_threads(args.threads)
    backbone = get_manager().get("backbone", args.backbone)
    spec = replace(backbone.input, size=(args.size, args.size))
    # channels_last: measured ~1.4x faster for EfficientNet's depthwise convolutions on this CPU
    model = backbone.build(pretrained=True).eval().to(memory_format=torch.channels_last)
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"{args.backbone}-{args.size}"
    t0 = time.perf_counter()
    imgs, prob, kind = load_cells(args.size, spec)
    print(f"read {len(imgs)} cells in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    mean, std = float(spec.mean[0]), float(spec.std[0])
    timing = {}
    for view in args.views.split(","):
        part = stem.with_name(f"{stem.name}.{view}.npy")
        if part.is_file():
            continue
        t0 = time.perf_counter()
        chunks, names = [], None
        with torch.inference_mode():
            for i in range(0, len(imgs), args.batch):
                x = torch.from_numpy(imgs[i:i + args.batch]).float().div_(255).sub_(mean).div_(std)
                x = dihedral(x[:, None].expand(-1, 3, -1, -1), view).contiguous(memory_format=torch.channels_last)
                head, maps = model.forward_intermediates(x)
                feats, names = pooled(maps, head)
                chunks.append(feats[0].half().numpy())
                if (i // args.batch) % 20 == 0:
                    print(f"{view}: {i + len(x)}/{len(imgs)} {time.perf_counter() - t0:.0f}s",
                          file=sys.stderr, flush=True)
        np.save(part, np.concatenate(chunks))
        timing[view] = time.perf_counter() - t0
        meta = stem.with_name(f"{stem.name}.json")
        doc = json.loads(meta.read_text()) if meta.is_file() else {"seconds": {}}
        doc.update({"backbone": args.backbone, "size": args.size, "threads": args.threads, "batch": args.batch,
                    "blocks": names, "probability": prob.tolist(), "cell_type": kind.tolist()})
        doc["seconds"][view] = timing[view]
        meta.write_text(json.dumps(doc))
        print(f"{view}: done in {timing[view]:.0f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
