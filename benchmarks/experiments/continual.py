"""Continual learning on this machine: a new defect class without forgetting the old ones.

Two sets, two stages each (``edgetl train --from``, docs/training.md "Continual learning"):

``textures`` (``data/textures``, ``edgetl data textures``): three classes from
the manifest's ``defects`` column: ``good``, ``hole`` (every defect on the tile
is a hole) and ``defect`` (no hole among its defects); tiles mixing a hole with
another kind are left out. Stage 1 trains ``good`` vs ``defect``; stage 2 adds
``hole``.

``elpv`` (``edgetl data elpv``, four classes, seed 0): stage 1 trains the two
confident grades ``p000`` (functional) vs ``p100`` (defective); stage 2 adds
the uncertain grades ``p033`` and ``p067`` as new classes. (The old classes
keep their meaning: this adds classes, it does not re-split old ones.)

``elpv-split`` (the same split folder): stage 1 is binary-merged, ``good``
(``p000``) vs ``defect`` (``p033`` + ``p067`` + ``p100``); stage 2 trains the
four grades on the same training images with ``continual.split``: ``defect``
-> ``p033, p067, p100`` and ``good`` -> ``p000``. Its stage 2 runs naive
``finetune`` and LwF (``rehearsal`` with ``lwf``, no buffer: every stored
exemplar belongs to a split class and is dropped); the old task is the binary
one, the children's probabilities summed.

Stage-2 training data (``textures``, ``elpv``) holds the new class(es) and ``--old-per-class`` images
of each old class (default 0); val and test hold every class. Stage 1 is
``rehearsal`` without ``--from`` (a fine-tune that stores a class-balanced
buffer of ``--buffer`` images); stage 2 continues it four ways: naive
``finetune``, ``rehearsal`` (the stored exemplars), ``rehearsal`` + LwF, and
LwF alone (no exemplars).
Each stage-2 run's metrics.json ``continual`` gives old-class accuracy before
(the stage-1 model) and after on the test images, and the new classes'.

    python benchmarks/experiments/continual.py --set textures --set elpv --size 128 --epochs 4 --buffer 60
    python benchmarks/experiments/continual.py --set elpv-split --size 128 --epochs 4

The run directories go under benchmarks/results/work/continual/ (not
committed); one JSON per set under benchmarks/results/continual/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import time
from pathlib import Path

from anomaly_vs_anomalib import link_tree as link  # ImageFolders of symlinks: root/<class>/<file>

ROOT = Path(__file__).resolve().parents[2]
TRAIN = {"batch_size": 32, "optimizer": "adamw", "weight_decay": 0.01, "label_smoothing": 0.1, "dropout": 0.2,
         "schedule": {"kind": "cosine", "warmup_epochs": 0}, "class_weights": "sqrt", "grad_clip": 5.0,
         "early_stopping": {"metric": "balanced_accuracy", "patience": None}, "seed": 0, "lr": 1e-3}
VARIANTS = {"finetune": ("finetune", {"lr_decay": 0.8}),
            "rehearsal": ("rehearsal", {"lr_decay": 0.8}),
            "rehearsal+lwf": ("rehearsal", {"lr_decay": 0.8, "lwf": True}),
            "lwf": ("rehearsal", {"lr_decay": 0.8, "lwf": True, "rehearse": False, "buffer_size": 0})}


def texture_items(data: Path) -> dict[str, list[tuple[Path, str]]]:
    """Per split: (image, class) with class good / hole / defect (no hole); mixed hole tiles dropped."""
    out: dict[str, list[tuple[Path, str]]] = {"train": [], "val": [], "test": []}
    with open(data / "manifest.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            kinds = set(filter(None, row["defects"].split("+")))
            label = "good" if row["label"] == "good" else "hole" if kinds == {"hole"} else (
                "defect" if "hole" not in kinds else None)
            if label:
                out[row["split"]].append((data / row["file"], label))
    return out


def elpv_items(data: Path) -> dict[str, list[tuple[Path, str]]]:
    return {split: [(p, c.name) for c in sorted((data / split).iterdir()) if c.is_dir()
                    for p in sorted(c.iterdir())] for split in ("train", "val", "test")}


ELPV = "/work/wt/elpv/data/elpv-four-s0"
SETS = {"textures": (texture_items, ["good", "defect"], ["hole"], "data/textures"),
        "elpv": (elpv_items, ["p000", "p100"], ["p033", "p067"], ELPV),
        "elpv-split": (elpv_items, ["defect", "good"], ["p000", "p033", "p067", "p100"], ELPV)}
SPLITS = {"elpv-split": {"defect": ["p033", "p067", "p100"], "good": ["p000"]}}
SPLIT_VARIANTS = {k: VARIANTS[k] for k in ("finetune", "lwf")}  # a split parent's exemplars are dropped


def split_stage_data(items: dict, split: dict[str, list[str]], work: Path, cap: int, seed: int) -> tuple[dict, dict]:
    """Stage 1: every child's images under its parent's name; stage 2: the same images under their own.

    Training images: at most ``cap`` per child class (the same ones in both stages).
    """
    rng = random.Random(seed)
    parent = {c: p for p, children in split.items() for c in children}
    chosen = {}
    for name, pool in items.items():
        chosen[name] = []
        for c in sorted(parent):
            mine = [it for it in pool if it[1] == c]
            rng.shuffle(mine)
            chosen[name] += mine[:cap] if name == "train" else mine
    s1, s2 = {}, {}
    for name, pairs in chosen.items():
        s1[name] = str(link([(p, parent[c]) for p, c in pairs], work / "s1" / name))
        s2[name] = str(link(pairs, work / "s2" / name))
    return s1, s2


def stage_data(items: dict, old: list[str], new: list[str], work: Path, cap: int, old_per_class: int,
               seed: int) -> tuple[dict, dict]:
    """Stage 1 and stage 2 data folders (symlinks); stage-1 train capped at ``cap`` images per class."""
    rng = random.Random(seed)
    shutil.rmtree(work / "s1", ignore_errors=True)  # a rerun with other settings must not mix folders
    shutil.rmtree(work / "s2", ignore_errors=True)

    def pick(split: str, classes: list[str], n: int | None) -> list:
        chosen = []
        for c in classes:
            pool = [it for it in items[split] if it[1] == c]
            rng.shuffle(pool)
            chosen += pool if n is None else pool[:n]
        return chosen

    s1 = {"train": str(link(pick("train", old, cap), work / "s1" / "train")),
          "val": str(link(pick("val", old, None), work / "s1" / "val")),
          "test": str(link(pick("test", old, None), work / "s1" / "test"))}
    s2_train = pick("train", new, None) + (pick("train", old, old_per_class) if old_per_class else [])
    s2 = {"train": str(link(s2_train, work / "s2" / "train")),
          "val": str(link(pick("val", old + new, None), work / "s2" / "val")),
          "test": str(link(pick("test", old + new, None), work / "s2" / "test"))}
    return s1, s2


def train(name: str, strategy: str, options: dict, data: dict, args: argparse.Namespace, out: Path,
          from_run: Path | None = None, split: dict | None = None) -> dict:
    """One run through ``edgetl.train`` (stage 2: ``from_run`` and ``--epochs2`` epochs); its figures."""
    import edgetl

    cfg = {"name": name, "data": data, "backbone": {"name": "efficientnet_lite0", "pretrained": True},
           "strategy": {"name": strategy, "options": options},
           "train": {**TRAIN, "epochs": args.epochs2 if from_run else args.epochs, "image_size": args.size},
           "augment": ["hflip", "vflip"]}
    if split:
        cfg["continual"] = {"split": split}
    t0 = time.perf_counter()
    run = edgetl.train(cfg, out=out, device="cpu", force=True, from_run=from_run, log=None)
    metrics = run.metrics
    return {"run": str(out), "wall_s": time.perf_counter() - t0, "fit_s": metrics["timing"]["fit_seconds"],
            "test_accuracy": metrics["final"]["test"]["accuracy"],
            "test_balanced_accuracy": metrics["final"]["test"]["balanced_accuracy"],
            "continual": metrics.get("continual"), "strategy_extra": metrics.get("strategy_extra")}


def run_set(name: str, args: argparse.Namespace) -> dict:
    reader, old, new, default = SETS[name]
    data = Path(getattr(args, name.split("-")[0]) or default)
    work = ROOT / "benchmarks" / "results" / "work" / "continual" / name
    items = reader(data)
    split = SPLITS.get(name)
    if split:
        shutil.rmtree(work / "data", ignore_errors=True)
        s1_data, s2_data = split_stage_data(items, split, work / "data", args.cap, args.seed)
    else:
        s1_data, s2_data = stage_data(items, old, new, work / "data", args.cap, args.old_per_class, args.seed)
    counts = {part: {c: sum(1 for _, lab in items[part] if lab == c) for c in sorted({lab for _, lab in items[part]})}
              for part in items}
    print(f"[{name}] stage 1: {old}; stage 2: {'splits ' + str(split) if split else 'adds ' + str(new)}; "
          f"images per split and class: {counts}", flush=True)
    stage1 = train(f"{name}-stage1", "rehearsal", {"lr_decay": 0.8, "buffer_size": args.buffer}, s1_data, args,
                   work / "stage1")
    print(f"[{name}] stage 1: test acc {stage1['test_accuracy']:.3f} in {stage1['fit_s']:.0f} s", flush=True)
    rows = {}
    for variant, (strategy, options) in (SPLIT_VARIANTS if split else VARIANTS).items():
        opts = {"buffer_size": args.buffer, **options} if strategy == "rehearsal" else options
        rows[variant] = train(f"{name}-{variant}", strategy, opts, s2_data, args, work / variant,
                              from_run=work / "stage1", split=split)
        c = rows[variant]["continual"]
        print(f"[{name}] {variant}: old {c['before']['overall']:.3f} -> {c['after']['old']['overall']:.3f}, "
              f"new {c['after']['new']['overall']:.3f}, {rows[variant]['fit_s']:.0f} s", flush=True)
    return {"set": name, "data": str(data), "old": old, "new": new, "split": split, "counts": counts, "stage1": stage1,
            "stage2": rows, "settings": {k: v for k, v in vars(args).items() if k != "set"},
            "load_average": os.getloadavg()}


def table(result: dict) -> str:
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}"

    old, new = result["old"], result["new"]
    head = ("| stage 2 | " + " | ".join(f"{c} before/after" for c in old) + " | old before | old after | "
            "forgetting (points) | " + " | ".join(f"{c} (new)" for c in new) + " | test acc. | train |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for variant, r in result["stage2"].items():
        c = r["continual"]
        cells = [f"{pct(c['before']['per_class'][k])} / {pct(c['after']['old']['per_class'][k])}" for k in old]
        cells += [pct(c["before"]["overall"]), pct(c["after"]["old"]["overall"]),
                  f"{100 * c['after']['forgetting']['overall']:+.1f}"]
        cells += [pct(c["after"]["new"]["per_class"][k]) for k in new]
        cells += [pct(r["test_accuracy"]), f"{r['fit_s'] / 60:.1f} min"]
        lines.append(f"| `{variant}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", choices=sorted(SETS),
                        help="textures, elpv and/or elpv-split (default textures and elpv)")
    parser.add_argument("--textures", help="the texture set (default data/textures)")
    parser.add_argument("--elpv", help="ELPV four-class split folder (train/val/test with p000 p033 p067 p100)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--epochs2", type=int, default=None, help="stage-2 epochs (default --epochs)")
    parser.add_argument("--buffer", type=int, default=40, help="rehearsal buffer size (all classes together)")
    parser.add_argument("--cap", type=int, default=150, help="stage-1 training images per class at most")
    parser.add_argument("--old-per-class", type=int, default=0, help="old-class images in stage-2 training data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "continual"))
    args = parser.parse_args()
    args.epochs2 = args.epochs2 or args.epochs
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in args.set or ["textures", "elpv"]:
        result = run_set(name, args)
        (Path(args.out) / f"{name}.json").write_text(json.dumps(result, indent=1, default=float), encoding="utf-8")
        print(f"\n{name} (test images; before = the stage-1 model)\n{table(result)}\n", flush=True)


if __name__ == "__main__":
    main()
