"""ELPV four-class: heads on cached frozen features (benchmarks/experiments/elpv_features.py), every lever on three seeds.

Each experiment is one head recipe (which pooled blocks, loss, class
weights, training views, test-time views, standardisation, hidden width)
trained on the seeded split the command line makes (``edgetl data elpv
--classes four --seed S``: same stratification, same cells), selected on val
only (val NLL of the test-time-view average, per epoch), then evaluated once
on test. Results (per seed, plus mean and spread) go to
``benchmarks/results/elpv/heads.json``; the table prints mean ± half the
range over the seeds.

    python benchmarks/experiments/elpv_heads.py                  # every experiment
    python benchmarks/experiments/elpv_heads.py --only recipe    # one (names below)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FEATS = ROOT / "benchmarks" / "results" / "work" / "elpv-features"
RESULTS = ROOT / "benchmarks" / "results" / "elpv" / "heads.json"
FOUR = ("p000", "p033", "p067", "p100")
SEEDS = (0, 1, 2)
ALL8 = ("identity", "rot90", "rot180", "rot270", "hflip", "vflip", "transpose", "antitranspose")
FLIPS = ("identity", "hflip", "vflip", "rot180")
HEAD_ONLY = ("head_avg",)
MULTI = ("s2_gem", "s3_gem", "s4_gem", "head_avg", "head_gem")


def load(backbone: str, views: tuple[str, ...]) -> tuple[dict, np.ndarray, np.ndarray, dict]:
    """Per-view (N, D) float32 features, labels (N,), cell types (N,), and the block table."""
    meta = json.loads((FEATS / f"{backbone}.json").read_text())
    feats = {v: np.load(FEATS / f"{backbone}.{v}.npy").astype(np.float32) for v in views}
    prob = np.array(meta["probability"])
    y = np.rint(prob * 3).astype(int)
    blocks, start = {}, 0
    for name, width in meta["blocks"]:
        blocks[name] = (start, start + width)
        start += width
    return feats, y, np.array(meta["cell_type"]), blocks


def split_of(y: np.ndarray, kind: np.ndarray, seed: int) -> np.ndarray:
    """The split `edgetl data elpv --classes four --seed SEED` writes (same call, same defaults)."""
    from edgetl.data.elpv import stratified_split

    keys = [(FOUR[int(c)], str(t)) for c, t in zip(y, kind, strict=True)]
    return np.array(stratified_split(keys, 0.25, 0.1, seed))


def columns(blocks: dict, names: tuple[str, ...]) -> np.ndarray:
    return np.concatenate([np.arange(*blocks[n]) for n in names])


def make_head(d: int, k: int, hidden: int | None, ordinal: bool):
    """Linear, MLP, or cumulative-logit head: one score s = w.x, ordered cuts b_k, P(y > k) = sigmoid(s - b_k)."""
    import torch
    from torch import nn

    if ordinal:
        class Cumulative(nn.Module):
            def __init__(self):
                super().__init__()
                self.score = nn.Linear(d, 1)
                self.cuts = nn.Parameter(torch.tensor([-1.0, 0.0, 1.0])[: k - 1].clone())

            def forward(self, x):
                # log class probabilities from the cumulative ones (softmax(log p) = p)
                cuts = self.cuts[:1] + torch.cat([self.cuts.new_zeros(1), nn.functional.softplus(self.cuts[1:])]
                                                 ).cumsum(0)
                above = torch.sigmoid(self.score(x) - cuts[None, :])  # (N, K-1) P(y > k)
                ones, zeros = above.new_ones(len(x), 1), above.new_zeros(len(x), 1)
                p = torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)
                return torch.log(p.clamp_min(1e-7))
        return Cumulative()
    if hidden:
        return nn.Sequential(nn.Dropout(0.2), nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, k))
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(d, k))


def targets(y, k: int, soft: float):
    """One-hot (soft=0) or a discretised Gaussian over the ordinal classes with sigma ``soft`` (SORD)."""
    import torch

    if not soft:
        return torch.nn.functional.one_hot(y, k).float()
    dist = (torch.arange(k)[None, :] - y[:, None]).float() ** 2
    return torch.softmax(-dist / (2 * soft ** 2), dim=1)


def fit(x_tr, y_tr, x_va_views, y_va, exp: dict, seed: int):
    """Train a head; keep the epoch with the lowest val NLL (TTA-averaged). Returns (head, epoch, val_nll)."""
    import copy

    import torch

    k = 4
    torch.manual_seed(seed)
    head = make_head(x_tr.shape[1], k, exp.get("hidden"), exp.get("loss") == "ordinal")
    counts = np.bincount(y_tr.numpy(), minlength=k)
    w = torch.tensor((counts.sum() / (k * counts)) ** exp.get("balance", 0.0), dtype=torch.float32)
    opt = torch.optim.AdamW(head.parameters(), lr=exp.get("lr", 1e-3), weight_decay=exp.get("wd", 1e-2))
    epochs, bs = exp.get("epochs", 40), exp.get("batch", 256)
    steps = epochs * -(-len(x_tr) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=exp.get("lr", 1e-3), total_steps=steps,
                                                pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    t = targets(y_tr, k, exp.get("soft", 0.0))
    best = (float("inf"), 0, None)
    for epoch in range(epochs):
        head.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), bs):
            b = order[i:i + bs]
            logp = torch.log_softmax(head(x_tr[b]), dim=1)
            loss = -(t[b] * logp * w[None, :]).sum(1).sum() / w[y_tr[b]].sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        probs = predict(head, x_va_views)
        nll = float(-np.log(np.clip(probs[np.arange(len(y_va)), y_va], 1e-7, 1)).mean())
        if nll < best[0]:
            best = (nll, epoch + 1, copy.deepcopy(head.state_dict()))
    head.load_state_dict(best[2])
    return head, best[1], best[0]


def predict(head, x_views) -> np.ndarray:
    import torch

    head.eval()
    with torch.inference_mode():
        return np.mean([torch.softmax(head(x), dim=1).numpy() for x in x_views], axis=0)


def scores(y: np.ndarray, probs: np.ndarray) -> dict:
    from edgetl.metrics import evaluate

    doc = evaluate(y, probs, FOUR)
    return {"accuracy": doc["accuracy"], "balanced_accuracy": doc["balanced_accuracy"],
            "recall": {c: doc["per_class"][c]["recall"] for c in FOUR}, "n": int(len(y))}


def run(exp: dict, cache: dict) -> dict:
    """One experiment on the three seeds; features of several backbones are concatenated (ensemble: averaged)."""
    import torch

    torch.set_num_threads(1)
    per_seed = []
    for seed in SEEDS:
        probs_sum, t0, info = None, time.perf_counter(), []
        for backbone in exp["backbones"]:
            train_views, test_views = exp.get("train_views", ALL8), exp.get("test_views", ALL8)
            need = tuple(sorted(set(train_views) | set(test_views)))
            if not set(need) <= set(cache.get(backbone, ({},))[0]):
                cache[backbone] = load(backbone, need)
            feats, y, kind, blocks = cache[backbone]
            names = tuple(blocks) if exp.get("blocks") == "all" else exp.get("blocks", MULTI)
            cols = columns(blocks, names)
            split = split_of(y, kind, seed)
            tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
            x_tr = np.concatenate([feats[v][tr][:, cols] for v in train_views])
            y_tr = np.tile(y[tr], len(train_views))
            if exp.get("standardize", True):
                mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
            else:
                mean, std = np.zeros(len(cols), np.float32), np.ones(len(cols), np.float32)

            def views(idx, names, cols=cols, mean=mean, std=std, feats=feats):
                return [torch.from_numpy((feats[v][idx][:, cols] - mean) / std) for v in names]

            head, epoch, nll = fit(torch.from_numpy((x_tr - mean) / std), torch.from_numpy(y_tr),
                                   views(va, test_views), y[va], exp, seed)
            p = predict(head, views(te, test_views))
            probs_sum = p if probs_sum is None else probs_sum + p
            info.append({"backbone": backbone, "best_epoch": epoch, "val_nll": nll})
        result = scores(y[te], probs_sum / len(exp["backbones"]))
        result.update({"seed": seed, "head_seconds": time.perf_counter() - t0, "fits": info})
        per_seed.append(result)
    return {"experiment": exp, "seeds": per_seed, "summary": summary(per_seed)}


def summary(per_seed: list[dict]) -> dict:
    out = {}
    for key in ("accuracy", "balanced_accuracy"):
        v = np.array([r[key] for r in per_seed])
        out[key] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    for c in FOUR:
        v = np.array([r["recall"][c] for r in per_seed])
        out[f"recall_{c}"] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    return out


def experiments() -> dict[str, dict]:
    """The levers, each a change against ``base`` (Lite0, 300 px, multi-stage GeM, identity view, standardised).

    Only the identity view was extracted this session (each further view is
    another full backbone pass: 45 min at the load this machine had), so the
    view levers (train on 8 views, dihedral TTA) are listed in VIEW_LEVERS and
    run only when those feature files exist.
    """
    l0, one = "efficientnet_lite0-300", ("identity",)
    base = {"backbones": [l0], "blocks": MULTI, "train_views": one, "test_views": one, "standardize": True,
            "loss": "ce", "balance": 0.0, "epochs": 40, "lr": 1e-3, "wd": 1e-2}
    levers = {
        "head-features-only": {**base, "blocks": HEAD_ONLY},
        "base (multi-stage GeM)": base,
        "all-stages avg+max+gem": {**base, "blocks": "all"},
        "wd 0.1, lr 3e-4, 60 ep": {**base, "wd": 0.1, "lr": 3e-4, "epochs": 60},
        "balance sqrt": {**base, "balance": 0.5},
        "soft labels SORD 0.7": {**base, "soft": 0.7},
        "ordinal cumulative logits": {**base, "loss": "ordinal", "lr": 3e-3},
        "mlp 512": {**base, "hidden": 512},
        "mlp 512 + balance sqrt": {**base, "hidden": 512, "balance": 0.5},
        "mlp 512 + SORD 0.5": {**base, "hidden": 512, "soft": 0.5},
        "head-only mlp 512": {**base, "hidden": 512, "blocks": HEAD_ONLY},
        "recipe: mlp 256, lr 3e-4, wd 0.05": {**base, "hidden": 256, "lr": 3e-4, "wd": 0.05},
    }
    if all((FEATS / f"{l0}.{v}.npy").is_file() for v in ALL8):
        levers.update({k: {**levers["recipe: mlp 256, lr 3e-4, wd 0.05"], **v} for k, v in VIEW_LEVERS.items()})
    return levers


VIEW_LEVERS = {"recipe + train on 8 views": {"train_views": ALL8},
               "recipe + train on 8 views + dihedral TTA": {"train_views": ALL8, "test_views": ALL8},
               "recipe + flip views + flip TTA": {"train_views": FLIPS, "test_views": FLIPS}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append")
    ap.add_argument("--table", action="store_true", help="print the saved results as a markdown table")
    args = ap.parse_args()
    if args.table:
        return markdown(json.loads(RESULTS.read_text()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    done = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    cache: dict = {}
    for name, exp in experiments().items():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        done[name] = run(exp, cache)
        RESULTS.write_text(json.dumps(done, indent=1))
        s = done[name]["summary"]
        print(f"{name:<28} acc {fmt(s['accuracy'])} bal {fmt(s['balanced_accuracy'])} "
              + " ".join(fmt(s[f'recall_{c}']) for c in FOUR) + f"  {time.perf_counter() - t0:.0f}s",
              flush=True)


def markdown(done: dict) -> None:
    """One row per saved experiment: mean ± half the min-max range over the seeds, in %."""
    print("| lever (each a change against base) | test acc. | balanced acc. | recall p000 | p033 | p067 | p100 |")
    print("|---|---|---|---|---|---|---|")
    for name, r in done.items():
        s = r["summary"]
        cells = [fmt(s["accuracy"]), fmt(s["balanced_accuracy"])] + [fmt(s[f"recall_{c}"]) for c in FOUR]
        print(f"| {name} | " + " | ".join(c.strip() for c in cells) + " |")


def fmt(s: dict) -> str:
    return f"{100 * s['mean']:5.1f}±{50 * (s['max'] - s['min']):3.1f}"


if __name__ == "__main__":
    sys.exit(main())
