"""Training throughput: edgetl's finetune epoch vs a plain hand-written PyTorch loop, side by side.

Same model (EfficientNet-Lite0, ImageNet weights), same images, same batch
size, same optimiser, in one process, alternating (hand, edgetl, hand, edgetl)
after a warm-up so neither side profits from the other's caches. The plain loop
is measured twice: NCHW as most code is written, and channels_last (what edgetl
uses by default). Then the linear probe: its first epoch (backbone feature pass
included) vs an epoch on the cached features.

    python benchmarks/train_throughput.py [--data data/elpv-four/train] [--images 256] [--size 160]

Prints a table and writes benchmarks/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def subset(data: Path, n: int, seed: int = 0):
    from edgetl.data.folder import Samples, load_split

    samples = load_split(data)
    rng = np.random.default_rng(seed)
    keep = sorted(rng.choice(len(samples.items), size=min(n, len(samples.items)), replace=False))
    return Samples([samples.items[i] for i in keep], samples.classes)


def hand_loop(model, dataset, batch: int, lr: float, channels_last: bool) -> float:
    """The loop everyone writes: DataLoader, forward, cross-entropy, backward, AdamW. Returns img/s."""
    import torch

    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0,
                                         generator=torch.Generator().manual_seed(0))
    model.train()
    seen, start = 0, time.perf_counter()
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(model.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(x)
    return seen / (time.perf_counter() - start)


def context(cfg, backbone, module, train, val, labels, spec):
    from edgetl.api import FitContext

    return FitContext(backbone=backbone, module=module, train=train, val=val, labels=labels, options={},
                      config=cfg, device=__import__("torch").device("cpu"), input=spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/elpv-four/train")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/train_throughput.json")
    args = ap.parse_args()

    import torch

    from edgetl.config import RunConfig
    from edgetl.host.splits import _split
    from edgetl.plugins import get_manager
    from edgetl.training import Classifier, fit_epochs, param_groups

    data = ROOT / args.data
    if not data.is_dir():
        sys.exit(f"{data}: not found; materialise it first: edgetl data elpv data/elpv-four --classes four")
    backbone = get_manager().get("backbone", "efficientnet_lite0")
    spec = replace(backbone.input, size=(args.size, args.size))
    samples = subset(data, args.images)
    labels = list(samples.classes)
    train = _split("train", samples.items, labels, spec, [], True, 0)
    val = _split("val", samples.items[:16], labels, spec, [], False, 0)
    cfg = RunConfig.model_validate({
        "name": "throughput", "data": {"train": str(data)}, "augment": [],
        "train": {"epochs": 1, "batch_size": args.batch, "lr": 1e-3, "dropout": 0.0,
                  "schedule": {"kind": "constant", "warmup_epochs": 0},
                  "early_stopping": {"metric": "balanced_accuracy", "patience": None}}})
    base_state = backbone.build(pretrained=True).state_dict()

    def fresh():
        torch.manual_seed(0)
        features = backbone.build(pretrained=False)
        features.load_state_dict(base_state)
        return Classifier(features, backbone.feature_dim, len(labels), dropout=0.0)

    def edgetl_epoch() -> float:
        model = fresh()
        ctx = context(cfg, backbone, model.features, train, val, labels, spec)
        rows = []
        ctx.log_epoch = rows.append
        groups = param_groups(model, backbone.layer_groups(model.features), 1e-3, 1.0, 0.01)
        fit_epochs(ctx, model, groups, tag="finetune")
        return rows[0].train_images_per_s

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LD_PRELOAD="
          f"{os.environ.get('LD_PRELOAD', '')!r}; {len(samples)} images at {args.size}px, batch {args.batch}",
          file=sys.stderr)
    hand_loop(fresh(), train.plain, args.batch, 1e-3, True)  # warm-up (allocator, oneDNN kernels)
    results = {"hand_nchw": [], "hand_channels_last": [], "edgetl_finetune": []}
    for r in range(args.rounds):
        results["hand_nchw"].append(hand_loop(fresh(), train.plain, args.batch, 1e-3, False))
        results["hand_channels_last"].append(hand_loop(fresh(), train.plain, args.batch, 1e-3, True))
        results["edgetl_finetune"].append(edgetl_epoch())
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} img/s" for k, v in results.items()), file=sys.stderr)
    best = {k: max(v) for k, v in results.items()}

    # linear probe: first (uncached) epoch vs an epoch on the cache
    from edgetl_builtins.strategies.linear_probe import LinearProbe

    probe_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 5})})
    ctx = context(probe_cfg, backbone, backbone.build(pretrained=True), train, val, labels, spec)
    rows = []
    ctx.log_epoch = rows.append
    trained = LinearProbe().fit(ctx)
    first = trained.timings["feature_seconds"] + rows[0].epoch_time_s
    cached = float(np.mean([r.epoch_time_s for r in rows[1:]]))
    doc = {"images": len(samples), "size": args.size, "batch": args.batch, "threads": torch.get_num_threads(),
           "ld_preload": os.environ.get("LD_PRELOAD", ""), "runs_img_per_s": results, "best_img_per_s": best,
           "edgetl_vs_hand_channels_last": best["edgetl_finetune"] / best["hand_channels_last"],
           "edgetl_vs_hand_nchw": best["edgetl_finetune"] / best["hand_nchw"],
           "linear_probe_first_epoch_s": first, "linear_probe_cached_epoch_s": cached}
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2))
    print(f"{'loop':<28} {'img/s (best of ' + str(args.rounds) + ')':>20}")
    for k, v in best.items():
        print(f"{k:<28} {v:>20.1f}")
    print(f"edgetl / hand (channels_last): {doc['edgetl_vs_hand_channels_last']:.3f}   "
          f"edgetl / hand (NCHW): {doc['edgetl_vs_hand_nchw']:.3f}")
    print(f"linear probe: first epoch {first:.1f} s (feature pass), cached epoch {cached * 1000:.1f} ms")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
