"""ELPV four-class: linear-probe vs finetune vs progressive with EfficientNet-Lite0, on this machine.

Each strategy is one ``edgetl train`` of its config in examples/defect_detection/
(selection on val only; the test split evaluated once, at the end of each run),
run one after another as subprocesses, timed by the wall clock. The script then
derives binary accuracy from the four-class test predictions ({p000, p033} ->
good, {p067, p100} -> defect), adds the plain average of the probe's and the
fine-tuned model's test probabilities (no weights tuned, so no test-set
selection), prints a table and writes JSON (+ a PNG) under benchmarks/results/.

    python benchmarks/elpv_strategies.py                      # all three
    python benchmarks/elpv_strategies.py --only linear-probe  # one
    python benchmarks/elpv_strategies.py --report-only        # table + figure from the saved results
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {s: ROOT / "examples" / "defect_detection" / f"elpv-four-{s}.yaml"
           for s in ("linear-probe", "finetune", "progressive")}
GOOD = ("p000", "p033")


def read_predictions(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    labels = [k[2:] for k in rows[0] if k.startswith("p_")]
    probs = np.array([[float(r[f"p_{c}"]) for c in labels] for r in rows])
    return labels, [r["label"] for r in rows], probs


def summarise(labels: list[str], truth: list[str], probs: np.ndarray) -> dict:
    from edgetl.metrics import evaluate, wilson_interval

    y = np.array([labels.index(t) for t in truth])
    doc = evaluate(y, probs, labels)
    pred = np.array(labels)[probs.argmax(1)]
    binary = float(np.mean([(p in GOOD) == (t in GOOD) for p, t in zip(pred, truth, strict=True)]))
    n = len(y)
    return {"accuracy": doc["accuracy"], "accuracy_ci95": wilson_interval(round(doc["accuracy"] * n), n),
            "balanced_accuracy": doc["balanced_accuracy"], "binary_accuracy": binary, "n": n,
            "recall": {c: doc["per_class"][c]["recall"] for c in labels}}


def run_one(strategy: str, data: Path, runs: Path, extra: list[str]) -> dict:
    out = runs / f"bench-elpv-four-{strategy}"
    cmd = [sys.executable, "-m", "edgetl", "train", str(CONFIGS[strategy]), "--out", str(out), "--force",
           "--json", "--device", "cpu", "--set", f"data.train={data / 'train'}",
           "--set", f"data.val={data / 'val'}", "--set", f"data.test={data / 'test'}"]
    for item in extra:
        cmd += ["--set", item]
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"{strategy}: edgetl train failed with status {proc.returncode}")
    summary = json.loads(proc.stdout)
    metrics = json.loads((out / "metrics.json").read_text())
    labels, truth, probs = read_predictions(out / "predictions_test.csv")
    return {"strategy": strategy, "config": str(CONFIGS[strategy].relative_to(ROOT)), "run_dir": str(out),
            "wall_seconds": wall, "fit_seconds": metrics["timing"]["fit_seconds"],
            "input_size": metrics["input_size"], "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"], "val": summary["val"],
            "test": summarise(labels, truth, probs), "overrides": extra}


def ensemble(results: dict) -> dict | None:
    if not {"linear-probe", "finetune"} <= set(results):
        return None
    a = read_predictions(Path(results["linear-probe"]["run_dir"]) / "predictions_test.csv")
    b = read_predictions(Path(results["finetune"]["run_dir"]) / "predictions_test.csv")
    assert a[0] == b[0] and a[1] == b[1]
    return {"strategy": "mean(linear-probe, finetune)", "test": summarise(a[0], a[1], (a[2] + b[2]) / 2)}


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    keys = ("accuracy", "balanced_accuracy", "binary_accuracy")
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(2.2 * len(names) + 2, 3.8))
    for i, k in enumerate(keys):
        ax.bar(x + (i - 1) * 0.27, [results[n]["test"][k] for n in names], 0.27, label=k.replace("_", " "))
    ax.axhline(0.8842, color="grey", linestyle=":", label="Deitsch et al. 2019 (VGG-19, GPU)")
    ax.set_xticks(x, names, fontsize=8)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("ELPV test (n=654)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("EfficientNet-Lite0 on ELPV, four classes, 2-core CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="data/elpv-four", help="materialised ELPV four-class split root")
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--only", action="append", choices=list(CONFIGS))
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra --set for every run")
    ap.add_argument("--results", default="benchmarks/results/elpv_strategies.json")
    ap.add_argument("--report-only", action="store_true", help="no training: table, ensemble, figure from --results")
    args = ap.parse_args()
    data, results_path = ROOT / args.data, ROOT / args.results
    if not (data / "train").is_dir():
        from edgetl.data.elpv import materialise_elpv

        print(f"materialising ELPV (four classes, seed 0) into {data}", file=sys.stderr)
        materialise_elpv(data, classes="four")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(results_path.read_text())["runs"] if results_path.is_file() else {}
    for strategy in [] if args.report_only else args.only or list(CONFIGS):
        results[strategy] = run_one(strategy, data, ROOT / args.runs, args.extra)
        results_path.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "runs": results}, indent=2))
    table = dict(results)
    ens = ensemble(results)
    if ens:
        table[ens["strategy"]] = ens
    results_path.write_text(json.dumps({"machine": {"cpus": os.cpu_count()}, "runs": results,
                                        "ensemble": ens}, indent=2))
    figure(table, results_path.with_suffix(".png"))
    print(f"{'strategy':<32} {'size':>5} {'epochs':>6} {'train min':>9} {'test acc':>9} {'bal acc':>8} {'binary':>7}")
    for name, r in table.items():
        t = r["test"]
        size = r.get("input_size", ["–"])[0]
        mins = f"{r['fit_seconds'] / 60:.1f}" if "fit_seconds" in r else "–"
        print(f"{name:<32} {size:>5} {r.get('epochs_run', '–'):>6} {mins:>9} {t['accuracy']:>9.4f} "
              f"{t['balanced_accuracy']:>8.4f} {t['binary_accuracy']:>7.4f}")
    print(f"wrote {results_path} and {results_path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
