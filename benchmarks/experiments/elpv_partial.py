"""ELPV four-class: partial fine-tuning of EfficientNet on cached intermediate activations, three seeds.

The stem and the lower stages stay frozen: they run ONCE per cell at the
cells' native 300 px (``cache``) and their output maps are kept on disk in
float16 (``--levels``: after ``blocks.1``, 24 x 75 x 75, up to ``blocks.5``, 192 x 10 x 10;
default blocks.2 to blocks.5), plus the GeM of ``blocks.2`` and ``blocks.4``, the recipe's frozen multi-stage
features). Maps are per cell, so one cache serves every seed. ``train`` then
fine-tunes the upper stages (``blocks[k:]``), ``conv_head`` and an MLP head on
those small maps for many epochs: first the head alone on the frozen pooled
features (a linear probe, seconds), then everything above the cache together
(LP-FT), the epoch kept by val loss, test evaluated once. The deployable
model is the backbone with its upper stages updated plus the head.

    nice -n 5 python benchmarks/experiments/elpv_partial.py cache                 # the frozen pass, once
    nice -n 5 python benchmarks/experiments/elpv_partial.py cache --views identity,hflip,... --levels b1 --no-gem   # ft2's maps
    nice -n 5 python benchmarks/experiments/elpv_partial.py train --only NAME --seeds 0,1,2
    python benchmarks/experiments/elpv_partial.py table                           # + the frozen recipe row

Per-seed JSON: benchmarks/results/elpv/partial-<experiment>-s<seed>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks" / "experiments"))
from elpv_features import DIHEDRAL, dihedral, load_cells  # noqa: E402
from elpv_heads import FOUR, fmt, scores, split_of, summary  # noqa: E402

# overridable for a smoke test (``cache --limit``) that must not touch the real cache and results
WORK = Path(os.environ.get("ELPV_PARTIAL_WORK", ROOT / "benchmarks" / "results" / "work" / "elpv-partial"))
RESULTS = Path(os.environ.get("ELPV_PARTIAL_RESULTS", ROOT / "benchmarks" / "results" / "elpv"))
GEM_P = 3.0
# the cached maps, by the first trained block k (``blocks[k:]`` train): the output of blocks[k - 1]
LEVELS = {2: "b1", 3: "b2", 4: "b3", 5: "b4", 6: "b5"}


def gem(x, p: float = GEM_P):
    return x.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)


def build(backbone: str):
    import torch

    from edgetl.plugins import get_manager

    spec = get_manager().get("backbone", backbone)
    model = spec.build(pretrained=True).to(memory_format=torch.channels_last)
    return spec, model


def cache(args) -> None:
    """Stem + the blocks below the deepest ``--levels`` map once per cell and view; those maps (default: after
    blocks 2..5) and the frozen GeM vectors saved."""
    import torch

    torch.set_num_threads(args.threads)
    spec, model = build(args.backbone)
    model.eval()
    stem = WORK / f"{args.backbone}-{args.size}"
    WORK.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    imgs, prob, kind = load_cells(args.size, replace(spec.input, size=(args.size, args.size)))
    read_s = time.perf_counter() - t0
    if args.limit:
        imgs, prob, kind = imgs[:args.limit], prob[:args.limit], kind[:args.limit]
    mean, std = float(spec.input.mean[0]), float(spec.input.std[0])
    levels = args.levels.split(",")
    unknown = [lv for lv in levels if lv not in LEVELS.values()]
    if unknown:
        raise SystemExit(f"--levels: unknown {unknown} (known: {', '.join(LEVELS.values())})")
    keep = {k - 1: lv for k, lv in LEVELS.items() if lv in levels}  # block index -> level kept after it
    depth = max(max(keep) + 1, 5 if args.gem else 0)  # blocks that must run (GeM needs blocks 0..4)
    for view in args.views.split(","):
        files = [stem.with_name(f"{stem.name}.{view}.{lv}.npy") for lv in keep.values()]
        if all(f.is_file() for f in files) and (not args.gem or stem.with_name(f"{stem.name}.{view}.gem.npy").is_file()):
            continue
        t0 = time.perf_counter()
        kept, g2, g4 = {lv: [] for lv in keep.values()}, [], []
        with torch.inference_mode():
            for i in range(0, len(imgs), args.batch):
                x = torch.from_numpy(imgs[i:i + args.batch]).float().div_(255).sub_(mean).div_(std)
                x = dihedral(x[:, None].expand(-1, 3, -1, -1), view).contiguous(memory_format=torch.channels_last)
                h = model.bn1(model.conv_stem(x))
                for j in range(depth):
                    h = model.blocks[j](h)
                    if j == 2:
                        g2.append(gem(h).numpy())
                    if j == 4:
                        g4.append(gem(h).numpy())
                    if (lv := keep.get(j)) is not None:  # the input of blocks[j + 1]
                        kept[lv].append(h.half().numpy())
                if (i // args.batch) % 20 == 0:
                    print(f"{view}: {i + len(x)}/{len(imgs)} {time.perf_counter() - t0:.0f}s", flush=True)
        for lv, parts in kept.items():
            np.save(stem.with_name(f"{stem.name}.{view}.{lv}.npy"), np.concatenate(parts))
        if args.gem:
            np.save(stem.with_name(f"{stem.name}.{view}.gem.npy"), np.concatenate([np.concatenate(g2),
                                                                                np.concatenate(g4)], 1))
        meta = stem.with_name(f"{stem.name}.json")
        doc = json.loads(meta.read_text()) if meta.is_file() else {"seconds": {}}
        doc.update({"backbone": args.backbone, "size": args.size, "threads": args.threads, "read_seconds": read_s,
                    "probability": prob.tolist(), "cell_type": kind.tolist()})
        key = "seconds" if args.levels == "b2,b3,b4,b5" else f"seconds {args.levels}"  # the pass's cost
        doc.setdefault(key, {})[view] = time.perf_counter() - t0
        meta.write_text(json.dumps(doc))
        print(f"{view}: done in {doc[key][view]:.0f}s", flush=True)


class Upper:
    """Factory for the trainable top: ``blocks[k:]`` + conv_head + bn2, average-pooled, optional frozen GeM extras, MLP."""

    @staticmethod
    def make(model, k: int, n_extra: int, hidden: int, dropout: float):
        import torch
        from torch import nn

        class Top(nn.Module):
            def __init__(self):
                super().__init__()
                self.blocks = nn.Sequential(*model.blocks[k:])
                self.conv_head, self.bn2 = model.conv_head, model.bn2
                d = model.num_features + n_extra
                self.register_buffer("mean", torch.zeros(n_extra))
                self.register_buffer("inv_std", torch.ones(n_extra))
                self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(d, hidden), nn.ReLU(),
                                          nn.Dropout(dropout), nn.Linear(hidden, 4))

            def pooled(self, h, extra):
                f = self.bn2(self.conv_head(self.blocks(h)))
                parts = [f.mean(dim=(2, 3))]  # the backbone's own pooling: top(bottom(x)) == backbone(x)
                if extra is not None and extra.shape[1]:
                    parts.append((extra - self.mean) * self.inv_std)
                return torch.cat(parts, 1)

            def forward(self, h, extra=None):
                return self.head(self.pooled(h, extra))

        return Top()


def augment_maps(h, gen):
    """Random horizontal / vertical flips of each cached map (the maps' own symmetry, not the input's)."""
    import torch

    n = len(h)
    fh = torch.rand(n, generator=gen) < 0.5
    fv = torch.rand(n, generator=gen) < 0.5
    h = h.clone()
    h[fh] = torch.flip(h[fh], dims=(3,))
    h[fv] = torch.flip(h[fv], dims=(2,))
    return h


def logits_of(top, maps, extra, idx, views, bs: int = 128):
    """Mean softmax over the cached views for the cells ``idx`` (eval mode)."""
    import torch

    top.eval()
    out = []
    with torch.inference_mode():
        for v in views:
            probs = []
            for i in range(0, len(idx), bs):
                b = idx[i:i + bs]
                h = torch.from_numpy(maps[v][b]).float().contiguous(memory_format=torch.channels_last)
                probs.append(torch.softmax(top(h, torch.from_numpy(extra[v][b])), 1).numpy())
            out.append(np.concatenate(probs))
    return np.mean(out, 0)


def nll(probs, y) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1)).mean())


def fit_seed(exp: dict, data: dict, seed: int) -> dict:
    """LP then FT of ``blocks[k:]`` + head on one seed's split; the epoch of lowest val NLL is kept."""
    import torch

    torch.manual_seed(seed)
    maps, extra, y, split = data["maps"], data["extra"], data["y"], split_of(data["y"], data["kind"], seed)
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    train_views, test_views = exp.get("train_views", ["identity"]), exp.get("test_views", ["identity"])
    _, model = build(exp["backbone"])
    top = Upper.make(model, exp["k"], extra["identity"].shape[1] if exp.get("extras", False) else 0,
                     exp.get("hidden", 256), exp.get("dropout", 0.2))
    if not exp.get("extras", False):
        extra = {v: np.zeros((len(y), 0), np.float32) for v in extra}
    ex_tr = np.concatenate([extra[v][tr] for v in train_views])
    if ex_tr.shape[1]:
        top.mean.copy_(torch.from_numpy(ex_tr.mean(0)))
        top.inv_std.copy_(1 / torch.from_numpy(ex_tr.std(0)).clamp_min(1e-3))
    counts = np.bincount(y[tr], minlength=4)
    w = torch.tensor((counts.sum() / (4 * counts)) ** exp.get("balance", 0.0), dtype=torch.float32)
    t0 = time.perf_counter()
    lp_epochs = linear_probe(top, maps, extra, y, tr, va, train_views, w, exp, seed)
    lp_seconds = time.perf_counter() - t0
    lp_scores = scores(y[te], logits_of(top, maps, extra, te, test_views))  # the head alone: the LP-only row
    best = finetune(top, maps, extra, y, tr, va, te, train_views, test_views, w, exp, seed)
    train_seconds = time.perf_counter() - t0
    top.load_state_dict(best["state"])
    test_probs = logits_of(top, maps, extra, te, test_views)
    result = scores(y[te], test_probs)
    # the kept model's test probabilities (cells in split order): ensembles of runs are scored from these
    result["test_probs"] = np.round(test_probs, 5).tolist()
    if tta := exp.get("report_tta"):  # the kept model with test-time views averaged: reported, never selected on
        tta_probs = logits_of(top, maps, extra, te, tta)
        result["tta"] = {"views": tta, **scores(y[te], tta_probs), "test_probs": np.round(tta_probs, 5).tolist()}
    result.update({"seed": seed, "best_epoch": best["epoch"], "val_nll": best["nll"], "lp_best_epoch": lp_epochs,
                   "lp_seconds": lp_seconds, "lp_only": lp_scores, "train_seconds": train_seconds, "history": best["history"]})
    return result


def linear_probe(top, maps, extra, y, tr, va, views, w, exp: dict, seed: int) -> int:
    """The head alone on the frozen pooled features (computed once): a good start for joint training."""
    import torch

    top.eval()
    with torch.inference_mode():
        def feats(idx, v):
            return torch.cat([top.pooled(torch.from_numpy(maps[v][idx[i:i + 128]]).float()
                                         .contiguous(memory_format=torch.channels_last),
                                         torch.from_numpy(extra[v][idx[i:i + 128]]))
                              for i in range(0, len(idx), 128)])
        x_tr = torch.cat([feats(tr, v) for v in views])
        x_va = feats(va, "identity")
    y_tr, y_va = torch.from_numpy(np.tile(y[tr], len(views))), y[va]
    head = top.head
    opt = torch.optim.AdamW(head.parameters(), lr=exp.get("lp_lr", 1e-3), weight_decay=0.05)
    gen = torch.Generator().manual_seed(seed)
    best = (float("inf"), 0, None)
    for epoch in range(exp.get("lp_epochs", 40)):
        head.train()
        for b in torch.randperm(len(x_tr), generator=gen).split(64):
            loss = torch.nn.functional.cross_entropy(head(x_tr[b]), y_tr[b], weight=w)
            opt.zero_grad()
            loss.backward()
            opt.step()
        head.eval()
        with torch.no_grad():
            v = nll(torch.softmax(head(x_va), 1).numpy(), y_va)
        if v < best[0]:
            best = (v, epoch + 1, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    return best[1]


def finetune(top, maps, extra, y, tr, va, te, train_views, test_views, w, exp: dict, seed: int) -> dict:
    """Everything above the cache trains (AdamW, cosine), random map flips; val NLL each epoch."""
    import torch

    body = [p for n, p in top.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.AdamW([{"params": body, "lr": exp.get("lr", 3e-4), "weight_decay": 0.05},
                             {"params": list(top.head.parameters()), "lr": exp.get("head_lr", 3e-4),
                              "weight_decay": 0.05}])
    epochs, bs = exp.get("epochs", 12), exp.get("batch", 32)
    # "random": each epoch shows every cell once, in one of the cached views drawn at random (an epoch costs
    # one pass whatever the number of views); otherwise every (view, cell) pair is a sample
    sampled = exp.get("view_sampling") == "random"
    pairs = [(train_views[0], i) for i in tr] if sampled else [(v, i) for v in train_views for i in tr]
    steps = epochs * -(-len(pairs) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    # weight averaging (SWA): the weights at the end of every epoch from ``swa_start`` on, averaged; a candidate
    # for selection like any epoch. BatchNorm statistics are frozen here, so the average needs no BN pass.
    swa = torch.optim.swa_utils.AveragedModel(top, use_buffers=True) if exp.get("swa_start") else None
    probs = logits_of(top, maps, extra, va, test_views)
    best = {"nll": nll(probs, y[va]), "epoch": 0, "state": copy.deepcopy(top.state_dict()), "history": []}
    for epoch in range(epochs):
        top.train()
        if exp.get("freeze_bn"):
            # the pretrained running statistics stay: the head was fitted on features normalised by them,
            # and new ELPV statistics would move every feature under it (val NLL 0.58 -> 4.7 in epoch 1)
            for m in top.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
        t0 = time.perf_counter()
        if sampled:
            draw = torch.randint(len(train_views), (len(tr),), generator=gen).tolist()
            pairs = [(train_views[d], i) for d, i in zip(draw, tr, strict=True)]
        for b in torch.randperm(len(pairs), generator=gen).split(bs):
            sel = [pairs[j] for j in b.tolist()]
            h = torch.from_numpy(np.stack([maps[v][i] for v, i in sel])).float()
            if exp.get("map_flips", False):
                h = augment_maps(h, gen)
            ex = torch.from_numpy(np.stack([extra[v][i] for v, i in sel]))
            yb = torch.from_numpy(np.array([y[i] for _, i in sel]))
            loss = torch.nn.functional.cross_entropy(top(h.contiguous(memory_format=torch.channels_last), ex), yb,
                                                     weight=w, label_smoothing=exp.get("smoothing", 0.0))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        seconds = time.perf_counter() - t0
        probs = logits_of(top, maps, extra, va, test_views)
        # test accuracy per epoch: a diagnostic only (does training past the val-NLL optimum help?); the
        # reported figure is the val-NLL-selected epoch's
        test_acc = float((logits_of(top, maps, extra, te, test_views).argmax(1) == y[te]).mean())
        row = {"epoch": epoch + 1, "val_nll": nll(probs, y[va]), "val_acc": float((probs.argmax(1) == y[va]).mean()),
               "test_acc_diagnostic": test_acc, "seconds": seconds}
        best["history"].append(row)
        print(f"  epoch {row['epoch']}: val nll {row['val_nll']:.3f} acc {row['val_acc']:.3f} "
              f"(test {test_acc:.3f}) {row['seconds']:.0f}s", flush=True)
        if row["val_nll"] < best["nll"]:
            best.update(nll=row["val_nll"], epoch=epoch + 1, state=copy.deepcopy(top.state_dict()))
        if swa is not None and epoch + 1 >= exp["swa_start"]:
            swa.update_parameters(top)
    if swa is not None:
        probs = logits_of(swa.module, maps, extra, va, test_views)
        test_acc = float((logits_of(swa.module, maps, extra, te, test_views).argmax(1) == y[te]).mean())
        row = {"epoch": "swa", "val_nll": nll(probs, y[va]), "val_acc": float((probs.argmax(1) == y[va]).mean()),
               "test_acc_diagnostic": test_acc, "averaged_epochs": int(swa.n_averaged)}
        best["history"].append(row)
        print(f"  swa of epochs {exp['swa_start']}-{epochs}: val nll {row['val_nll']:.3f} acc {row['val_acc']:.3f} "
              f"(test {test_acc:.3f})", flush=True)
        if row["val_nll"] < best["nll"]:
            best.update(nll=row["val_nll"], epoch="swa", state=copy.deepcopy(swa.module.state_dict()))
    return best


def experiments() -> dict[str, dict]:
    """The levers (the names are the JSON files' and the table's).

    ``ft6``: blocks.6 + conv_head + head train on the cached blocks.5 maps;
    ``ft5``: blocks.5 and up on the blocks.4 maps. "BN stats frozen": the top's
    BatchNorm layers stay in eval mode (pretrained running statistics) while
    it trains. The flip-view lever needs those views cached first
    (``cache --views identity,hflip,vflip,rot180``: one frozen pass each); it
    was not run.
    """
    base = {"backbone": "efficientnet_lite0", "size": 300, "k": 6, "epochs": 12, "lr": 3e-4, "head_lr": 3e-4,
            "hidden": 256, "balance": 0.0, "map_flips": True, "extras": False}
    low = {**base, "lr": 1e-4, "head_lr": 1e-4}
    frozen_bn = {**low, "freeze_bn": True}
    ft3 = {**frozen_bn, "k": 3, "lr": 2e-4, "head_lr": 2e-4, "map_flips": False, "train_views": list(DIHEDRAL),
           "view_sampling": "random", "report_tta": list(DIHEDRAL)}
    return {
        "ft6 + map flips": base,
        "ft6 lr 1e-4 + map flips": low,
        "ft6 lr 1e-4 + map flips, BN stats frozen": frozen_bn,
        "ft6 lr 3e-4 + map flips, BN stats frozen": {**frozen_bn, "lr": 3e-4, "head_lr": 3e-4},
        "ft5 lr 1e-4 + map flips, BN stats frozen": {**frozen_bn, "k": 5},
        "ft6 lr 1e-4 + map flips, BN stats frozen, balance sqrt": {**frozen_bn, "balance": 0.5},
        "ft3 lr 2e-4, BN stats frozen, dihedral views": ft3,
        # the 24-epoch run's weights averaged over its second half (its val loss rose after epoch 14 while
        # the accuracy still climbed: an over-confident single epoch, what an average of epochs smooths)
        "ft3 lr 2e-4, BN stats frozen, dihedral views, 24 epochs, SWA 13-24": {**ft3, "epochs": 24, "swa_start": 13},
        # blocks 2-6 on the 24 x 75 x 75 maps after blocks.1 (cache --levels b1 --no-gem first)
        "ft2 lr 2e-4, BN stats frozen, dihedral views": {**ft3, "k": 2},
        # seed 0's val loss (and the diagnostic test accuracy) still fell at epoch 12 of the 12-epoch run
        "ft3 lr 2e-4, BN stats frozen, dihedral views, 24 epochs": {**ft3, "epochs": 24},
        # the same ft3 on the larger EfficientNet-Lite1 / Lite2 (deeper; Lite2 also 1.1x wider), still at 300 px
        # (cache --backbone efficientnet_lite2 --views <8> --levels b2 --no-gem first)
        "ft3 Lite1, dihedral views": {**ft3, "backbone": "efficientnet_lite1"},
        "ft3 Lite2, dihedral views": {**ft3, "backbone": "efficientnet_lite2"},
        "ft6 BN stats frozen + flip views + flip TTA": {**frozen_bn, "map_flips": False,
                                                        "train_views": ["identity", "hflip", "vflip", "rot180"],
                                                        "test_views": ["identity", "hflip", "vflip", "rot180"]},
    }


def load(exp: dict) -> dict:
    """The cached maps for ``exp`` (blocks.4 for k = 5, blocks.5 for k = 6) per view, memory-mapped."""
    stem = WORK / f"{exp['backbone']}-{exp['size']}"
    meta = json.loads(stem.with_name(f"{stem.name}.json").read_text())
    level = LEVELS[exp["k"]]
    views = sorted(set(exp.get("train_views", ["identity"])) | set(exp.get("test_views", ["identity"])))
    y = np.rint(np.array(meta["probability"]) * 3).astype(int)
    if exp.get("extras", False):
        extra = {v: np.load(stem.with_name(f"{stem.name}.{v}.gem.npy")).astype(np.float32) for v in views}
    else:  # no frozen GeM input: a cache made with --no-gem serves
        extra = {v: np.zeros((len(y), 0), np.float32) for v in views}
    return {"maps": {v: np.load(stem.with_name(f"{stem.name}.{v}.{level}.npy"), mmap_mode="r") for v in views},
            "extra": extra,
            "y": y, "kind": np.array(meta["cell_type"]), "cache_seconds": meta.get(f"seconds {level}", meta["seconds"])}


def train(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    chosen = [n for n in experiments() if not args.only or n in args.only]
    if args.pick_best_on_seed is not None:  # the one of ``--only`` with the lowest val loss on that seed
        nlls = {n: json.loads(f.read_text())["val_nll"] for n in chosen
                if (f := RESULTS / f"partial-{slug(n)}-s{args.pick_best_on_seed}.json").is_file()}
        chosen = [min(nlls, key=nlls.get)]
        print(f"picked {chosen[0]!r} by seed-{args.pick_best_on_seed} val loss: {nlls}", flush=True)
    for name, exp in experiments().items():
        if name not in chosen:
            continue
        exp = {**exp, "epochs": args.epochs} if args.epochs else exp
        data = load(exp)
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"{name} seed {seed}", flush=True)
            r = fit_seed(exp, data, seed)
            r.update({"experiment": name, "config": exp, "cache_seconds": data["cache_seconds"],
                      "threads": args.threads})
            (RESULTS / f"partial-{slug(name)}-s{seed}.json").write_text(json.dumps(r, indent=1))
            print(f"{name} seed {seed}: acc {r['accuracy']:.3f} bal {r['balanced_accuracy']:.3f} "
                  f"recall {[round(r['recall'][c], 2) for c in FOUR]} best epoch {r['best_epoch']} "
                  f"train {r['train_seconds']:.0f}s", flush=True)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def table(_args) -> None:
    """Markdown: the frozen recipe (heads.json) then every partial experiment with its seeds."""
    print("| recipe | seeds | test acc. | balanced acc. | recall p000 | p033 | p067 | p100 | train min/run |")
    print("|---|---|---|---|---|---|---|---|---|")
    heads = RESULTS / "heads.json"
    if heads.is_file():
        r = json.loads(heads.read_text()).get("recipe: mlp 256, lr 3e-4, wd 0.05")
        if r:
            row("frozen recipe (multi-stage GeM + MLP 256)", r["seeds"], "feature pass ~22")
    groups: dict[str, list] = {}
    for f in sorted(RESULTS.glob("partial-*-s*.json")):
        doc = json.loads(f.read_text())
        groups.setdefault(doc["experiment"], []).append(doc)
    for name, runs in list(groups.items()):
        one_view = len(runs[0]["config"].get("train_views", ["identity"])) == 1
        if one_view and not runs[0]["config"].get("extras") and "lp_only" in runs[0] and "lp-only" not in groups:
            # the LP stage, scored on its own (the identity-view runs: they share it)
            groups["lp-only"] = []
            lp = [{**r["lp_only"], "seed": r["seed"]} for r in runs]
            row(f"head alone on the frozen top (the LP stage of {name!r})", lp,
                f"{np.median([r['lp_seconds'] for r in runs]) / 60:.1f}")
        minutes = np.median([r["train_seconds"] for r in runs]) / 60
        row(name, runs, f"{minutes:.1f}")
        if all("tta" in r for r in runs):  # the same kept models, test-time views averaged
            row(f"{name}, TTA over {len(runs[0]['tta']['views'])} views", [{**r["tta"], "seed": r["seed"]}
                                                                        for r in runs], f"{minutes:.1f}")


def row(name: str, runs: list[dict], minutes: str) -> None:
    s = summary(runs)
    cells = [fmt(s["accuracy"]), fmt(s["balanced_accuracy"])] + [fmt(s[f"recall_{c}"]) for c in FOUR]
    seeds = ",".join(str(r["seed"]) for r in runs)
    print(f"| {name} | {seeds} | " + " | ".join(c.strip() for c in cells) + f" | {minutes} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cache")
    c.add_argument("--backbone", default="efficientnet_lite0")
    c.add_argument("--size", type=int, default=300)
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--batch", type=int, default=16)
    c.add_argument("--limit", type=int, default=0, help="first N cells only (a smoke test)")
    c.add_argument("--views", default="identity", help=f"comma-separated, of {', '.join(DIHEDRAL)}")
    c.add_argument("--levels", default="b2,b3,b4,b5",
                   help="comma-separated maps to keep: bN is the output of blocks.N (b1: 24 x 75 x 75 at 300 px)")
    c.add_argument("--no-gem", dest="gem", action="store_false",
                   help="skip the frozen GeM vectors (kept by an earlier cache of the same views)")
    t = sub.add_parser("train")
    t.add_argument("--only", action="append")
    t.add_argument("--seeds", default="0,1,2")
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--pick-best-on-seed", type=int, help="run only the --only experiment of lowest val loss there")
    t.add_argument("--epochs", type=int, help="override every experiment's epochs (a smoke test)")
    sub.add_parser("table")
    args = ap.parse_args()
    {"cache": cache, "train": train, "table": table}[args.cmd](args)


if __name__ == "__main__":
    main()
