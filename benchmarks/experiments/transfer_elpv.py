"""Transfer-learning strategies on ELPV, on this machine: two tables.

``peft``: LoRA vs finetune vs linear-probe (binary ELPV, monocrystalline
cells: mono train, mono val selects, mono test): test accuracy, trainable
parameters, peak training memory, training time.
``shift``: a real domain shift, monocrystalline -> polycrystalline cells:
the same labelled mono train/val, the unlabelled poly *train* images are the
target domain, the labelled poly *test* images evaluate; ``dann`` and
``intermediate-pretrain`` against source-only models, which are the ``peft``
table's runs (trained on mono only, the same selection) evaluated on the poly
test images with ``edgetl eval``.

Each run is one child process (``--child``) that trains in-process inside
:class:`edgetl.training.PeakMemory` (RSS sampled every 5 ms: the peak increase
over the RSS before training is the comparable figure) and writes one JSON.
The data comes from ``edgetl data elpv OUT --cell-type {all,mono,poly}``.

    python benchmarks/experiments/transfer_elpv.py --data /tmp/elpv --table peft --size 128 --epochs 2
    python benchmarks/experiments/transfer_elpv.py --data /tmp/elpv --table shift

With both tables present, the mono-trained finetune, dann and
intermediate-pretrain runs are also evaluated per cell type on the mono and
poly test images together (``eval --slice cell_type=...``).

``--table bias`` trains nothing: it prints the per-cell-type bias table (model
x cell type: n, accuracy and recall at the operating point with 95 % Wilson
intervals, flags) from ``edgetl eval --slice cell_type=... --json`` documents
given with ``--bias-json LABEL=FILE`` (or the ``bias`` of ``--results``):

    python benchmarks/experiments/transfer_elpv.py --table bias \
        --bias-json finetune=benchmarks/results/transfer/bias-finetune.json \
        --bias-json dann=benchmarks/results/transfer/bias-dann.json \
        --bias-json intermediate-pretrain=benchmarks/results/transfer/bias-intermediate-pretrain.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

TRAIN = {"batch_size": 32, "optimizer": "adamw", "weight_decay": 0.01, "label_smoothing": 0.1, "dropout": 0.2,
         "schedule": {"kind": "cosine", "warmup_epochs": 0}, "class_weights": "sqrt", "grad_clip": 5.0,
         "early_stopping": {"metric": "balanced_accuracy", "patience": None}, "seed": 0}
PEFT = {"finetune": ("finetune", {"unfreeze": "all", "lr_decay": 0.8}, 1e-3),
        "lora": ("lora", {"r": 8, "alpha": 16}, 3e-3),
        "linear-probe": ("linear-probe", {}, 3e-3)}
SHIFT = {"dann": ("dann", {"lr_decay": 0.8, "weight": 0.3}, 1e-3),
         "intermediate-pretrain": ("intermediate-pretrain",
                                   {"pretrain_epochs": 1, "pretrain_images": 256, "pretrain_lr": 3e-4,
                                    "finetune": {"unfreeze": "all", "lr_decay": 0.8}}, 1e-3)}


def config(name: str, strategy: str, options: dict, lr: float, data: dict, size: int, epochs: int) -> dict:
    return {"name": name, "data": data, "backbone": {"name": "efficientnet_lite0", "pretrained": True},
            "strategy": {"name": strategy, "options": options},
            "train": {**TRAIN, "epochs": epochs, "lr": lr, "image_size": size}, "augment": ["hflip", "vflip"]}


def child(cfg_path: str, out: str, result: str) -> None:
    """Train one config in this process, measuring peak memory; write the result JSON."""
    import resource

    from edgetl.host.engine import train_from_file
    from edgetl.training import PeakMemory

    t0 = time.perf_counter()
    with PeakMemory("cpu") as mem:
        summary = train_from_file(cfg_path, out=out, device="cpu", force=True, log=lambda m: print(m, flush=True))
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    Path(result).write_text(json.dumps({
        "summary": summary, "seconds": time.perf_counter() - t0, "fit_seconds": metrics["timing"]["fit_seconds"],
        "extra": metrics["strategy_extra"], "memory": mem.facts("process"),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "trainable_params": max(int(r.get("trainable_params") or 0) for r in _history(Path(out))),
    }, indent=2))


def _history(run: Path) -> list[dict]:
    import csv

    with (run / "history.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r.get("trainable_params")]


def run_table(table: dict, data: dict, args: argparse.Namespace, work: Path) -> dict:
    results = {}
    for label, (strategy, options, lr) in table.items():
        slug = label.replace(" ", "-")
        cfg = work / f"{slug}.yaml"
        cfg.write_text(yaml.safe_dump(config(slug, strategy, options, lr, data, args.size, args.epochs)))
        out, res = work / "runs" / slug, work / f"{slug}.json"
        if args.reuse and res.is_file():
            results[label] = json.loads(res.read_text())
            continue
        cmd = [sys.executable, __file__, "--child", str(cfg), str(out), str(res)]
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        results[label] = json.loads(res.read_text())
    return results


def latency(runs: dict[str, Path], size: int, repeats: int = 60) -> dict:
    """ONNX Runtime latency (batch 1, one thread) of each run's exported module, interleaved; medians in ms.

    Also the ONNX operator multiset of each graph: a merged LoRA model must equal the finetune one.
    """
    from edgetl.host.run import load_run

    return onnx_latency({label: (load_run(run).model, run / "onnx-latency") for label, run in runs.items()},
                        size, repeats)


def onnx_latency(modules: dict, size: int, repeats: int) -> dict:
    """``{label: (module, export folder)}`` -> ``{label: {median_ms, ops}}``: ONNX Runtime, batch 1, one thread.

    The sessions run interleaved (one call of each per round) so load changes hit every module alike.
    """
    from collections import Counter

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from edgetl.api import ExportSpec
    from edgetl.plugins import get_manager

    target = get_manager().get("target", "onnx")
    sessions, ops = {}, {}
    for label, (module, folder) in modules.items():
        files = target.export(module.eval(), torch.randn(1, 3, size, size), folder, ExportSpec())
        path = str(next(f for f in files if str(f).endswith(".onnx")))
        ops[label] = dict(Counter(n.op_type for n in onnx.load(path).graph.node))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sessions[label] = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(repeats):
        for label, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            times[label].append(1000 * (time.perf_counter() - t0))
    return {label: {"median_ms": float(np.median(t[5:])), "ops": ops[label]} for label, t in times.items()}


def bottleneck_adapters(model, reduction: int = 4):
    """Houlsby-style adapters after every stage of ``model.features.blocks``: x + up(relu(down(x))), 1x1 convs.

    What an ``adapter`` strategy would export: the ReLU between the projections
    keeps the update out of any base weight, so the adapter ops stay in the graph.
    """
    from torch import nn

    class Adapter(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            hidden = max(8, channels // reduction)
            self.down, self.up = nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1)
            nn.init.normal_(self.up.weight, std=0.01)

        def forward(self, x):
            return x + self.up(self.down(x).relu())

    blocks = model.features.blocks
    for i, stage in enumerate(blocks):
        channels = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features  # its output
        blocks[i] = nn.Sequential(stage, Adapter(channels))
    return model


def adapter_costs(size: int, repeats: int, work: Path) -> dict:
    """Latency of what each adapter kind exports: plain model = merged LoRA, unmerged LoRA, bottleneck adapters.

    EfficientNet-Lite0 (random weights: latency does not depend on them) + a two-class head; LoRA r 8 on every
    mergeable layer, as the ``lora`` strategy puts it.
    """
    import torch
    from edgetl_builtins.transfer.lora import add_lora, lora_targets, merge

    from edgetl.plugins import get_manager
    from edgetl.training import Classifier

    backbone = get_manager().get("backbone", "efficientnet_lite0")

    def fresh(seed: int = 0):
        torch.manual_seed(seed)
        return Classifier(backbone.build(pretrained=False), backbone.feature_dim, 2, dropout=0.0).eval()

    def with_lora():
        model = fresh()
        groups = backbone.layer_groups(model.features)
        peft_model = add_lora(model, lora_targets(model, groups, len(groups), ["conv", "linear"]), 8, 16, 0.0)
        for name, param in model.named_parameters():
            if ".lora_B." in name:  # peft starts B at zero: give the update a value, as training would
                torch.nn.init.normal_(param, std=0.01)
        return model.eval(), peft_model

    unmerged, _ = with_lora()  # adapters in place (peft wraps the module's layers in place)
    modules = {"plain": fresh(), "lora merged": merge(with_lora()[1]), "lora unmerged": unmerged,
               "bottleneck adapters": bottleneck_adapters(fresh())}
    return onnx_latency({label: (m, work / "adapters" / label.replace(" ", "-")) for label, m in modules.items()},
                        size, repeats)


def combined_test(data: Path, out: Path) -> Path:
    """mono and poly *test* images in one labelled folder (symlinks) + manifest.csv with their cell_type."""
    import csv

    if (out / "manifest.csv").is_file():
        return out
    rows = []
    for cell in ("mono", "poly"):
        with (data / f"elpv_{cell}" / "manifest.csv").open() as fh:
            for r in csv.DictReader(fh):
                if r["split"] == "test":
                    src = (data / f"elpv_{cell}" / r["file"]).resolve()
                    dst = out / r["label"] / f"{cell}_{src.name}"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.symlink_to(src)
                    rows.append({"file": f"{r['label']}/{dst.name}", "label": r["label"], "cell_type": cell})
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["file", "label", "cell_type"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def eval_on(run: Path, folder: Path, *extra: str) -> dict:
    """``edgetl eval RUN FOLDER --json`` (the run's stored operating point)."""
    cmd = [sys.executable, "-m", "edgetl", "eval", str(run), str(folder), "--json", *extra]
    return json.loads(subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout)


def row(label: str, r: dict) -> str:
    test = r["summary"]["test"] or {}
    return (f"| {label} | {100 * test.get('accuracy', float('nan')):.1f} | "
            f"{100 * test.get('balanced_accuracy', float('nan')):.1f} | {100 * r['summary']['val']['balanced_accuracy']:.1f} | "
            f"{r['trainable_params']:,} | {r['extra'].get('adapter_bytes', 0) / 1024:.0f} | "
            f"{r['memory']['process_peak_increase_mb']:.0f} | {r['memory']['process_peak_mb']:.0f} | "
            f"{r['fit_seconds'] / 60:.1f} |")


def bias_rows(doc: dict, attribute: str = "cell_type") -> list[dict]:
    """The per-slice rows of one ``edgetl eval --slice ... --json`` document (or the rows themselves)."""
    return doc["slices"][attribute] if isinstance(doc, dict) else doc


def bias_table(bias: dict[str, list[dict]]) -> list[str]:
    """Markdown: one row per model and cell type, figures with their 95 % Wilson intervals and flags."""
    def pct(value: float | None, ci: list[float] | None) -> str:
        return "–" if value is None else f"{100 * value:.1f} % ({100 * ci[0]:.1f}–{100 * ci[1]:.1f})"

    lines = ["| model | cell type | n | accuracy (95 % CI) | defect recall at the operating point (95 % CI) | "
             "flagged (below the rest) |", "|---|---|---|---|---|---|"]
    for label, rows in bias.items():
        for r in rows:
            flags = [w for w, f in (("accuracy", r["flag_accuracy"]), ("recall", r["flag_recall"])) if f]
            lines.append(f"| {label} | {r['slice']} | {r['n']} | {pct(r['accuracy'], r['accuracy_ci95'])} | "
                         f"{pct(r['recall'], r['recall_ci95'])} | {', '.join(flags) or 'no'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, metavar=("CONFIG", "OUT", "RESULT"), help=argparse.SUPPRESS)
    ap.add_argument("--data", default="data", help="folder holding elpv_all, elpv_mono, elpv_poly")
    ap.add_argument("--table", choices=("peft", "shift", "bias", "adapters"), action="append")
    ap.add_argument("--repeats", type=int, default=200, help="--table adapters: interleaved rounds")
    ap.add_argument("--bias-json", action="append", default=[], metavar="LABEL=FILE",
                    help="--table bias: an 'edgetl eval --slice cell_type=... --json' document per model")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default="runs/bench-transfer")
    ap.add_argument("--reuse", action="store_true", help="keep the runs of --work that already have a result")
    ap.add_argument("--results", default="benchmarks/results/transfer/transfer_elpv.json")
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.table == ["adapters"]:
        results_path = Path(args.results)
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        results["adapters"] = {**adapter_costs(args.size, args.repeats, Path(args.work)),
                               "settings": {"size": args.size, "repeats": args.repeats,
                                            "load_average": os.getloadavg()}}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
        base = results["adapters"]["plain"]["median_ms"]
        print("| exported model | ONNX nodes | median ms (batch 1, one thread) | vs plain |\n|---|---|---|---|")
        for label, r in results["adapters"].items():
            if label != "settings":
                print(f"| {label} | {sum(r['ops'].values())} | {r['median_ms']:.2f} | {r['median_ms'] / base:.2f}x |")
        return
    if args.table == ["bias"]:
        given = dict(item.split("=", 1) for item in args.bias_json)
        saved = Path(args.results)
        bias = ({label: bias_rows(json.loads(Path(f).read_text())) for label, f in given.items()} if given
                else json.loads(saved.read_text()).get("bias", {}) if saved.is_file() else {})
        if not bias:
            sys.exit("--table bias: give --bias-json LABEL=FILE, or --results with a 'bias' section")
        print("\n".join(bias_table(bias)))
        return
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_path = Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for table in args.table or ["peft", "shift"]:
        if table == "peft":
            d = {k: str(data / "elpv_mono" / k) for k in ("train", "val", "test")}
            results["peft"] = run_table(PEFT, d, args, work)
        else:
            d = {"train": str(data / "elpv_mono" / "train"), "val": str(data / "elpv_mono" / "val"),
                 "test": str(data / "elpv_poly" / "test"), "target_unlabeled": str(data / "elpv_poly" / "train")}
            results["shift"] = run_table(SHIFT, d, args, work)
        results["settings"] = {"size": args.size, "epochs": args.epochs, "cpus": os.cpu_count(),
                               "load_average": os.getloadavg()}
        results_path.parent.mkdir(parents=True, exist_ok=True)
        results_path.write_text(json.dumps(results, indent=2))
    if "peft" in results:
        results["source_only_on_poly"] = {label: eval_on(work / "runs" / label.replace(" ", "-"),
                                                         data / "elpv_poly" / "test")
                                          for label in results["peft"]}
        results_path.write_text(json.dumps(results, indent=2))
        if "lora" in results["peft"] and "finetune" in results["peft"]:
            results["latency"] = latency({k: work / "runs" / k for k in ("finetune", "lora")}, args.size)
            results_path.write_text(json.dumps(results, indent=2))
    if "peft" in results and "shift" in results:  # per cell type: every mono-trained model, held-out images only
        combo = combined_test(data, work / "mono+poly-test")
        results["bias"] = {label: eval_on(work / "runs" / label.replace(" ", "-"), combo,
                                          "--slice", f"cell_type={combo / 'manifest.csv'}")["slices"]["cell_type"]
                           for label in ("finetune", "dann", "intermediate-pretrain")}
        results_path.write_text(json.dumps(results, indent=2))
    if results.get("bias"):
        print("\nper cell type (mono + poly test images)\n" + "\n".join(bias_table(results["bias"])))
    for label, r in results.get("latency", {}).items():
        print(f"ONNX Runtime latency, batch 1, one thread: {label} {r['median_ms']:.2f} ms (median)")
    if "latency" in results:
        print("same ONNX operators (finetune vs merged lora):",
              results["latency"]["finetune"]["ops"] == results["latency"]["lora"]["ops"])
    head = ("| run | test acc % | test bal. acc % | val bal. acc % | trainable params | adapter KiB | "
            "peak RSS increase MB | peak RSS MB | train min |\n|---|---|---|---|---|---|---|---|---|")
    for table in ("peft", "shift"):
        if table in results:
            print(f"\n{table}\n{head}")
            for label, r in results[table].items():
                print(row(label, r))
    for label, doc in results.get("source_only_on_poly", {}).items():
        print(f"source-only {label} on poly test: accuracy {100 * doc['accuracy']:.1f} %, "
              f"balanced accuracy {100 * doc['balanced_accuracy']:.1f} % (n={doc['n']})")


if __name__ == "__main__":
    main()
