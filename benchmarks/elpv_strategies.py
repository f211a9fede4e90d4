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

The recipe (examples/defect_detection/elpv-four-recipe.yaml) runs per seeded
split (``edgetl data elpv --classes four --seed S``), then exports through
the gate (``--precision auto``: INT8 first; ONNX Runtime and OpenVINO) and evaluates each
bundle on test; one JSON per seed under benchmarks/results/elpv/, and the
table reads every such file (so seeds may run in different sessions):

    python benchmarks/elpv_strategies.py --recipe --seed 0 [--seed 1 ...]
    python benchmarks/elpv_strategies.py --recipe-table       # the table from the saved seeds
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


RECIPE = ROOT / "examples" / "defect_detection" / "elpv-four-recipe.yaml"
RECIPE_RESULTS = ROOT / "benchmarks" / "results" / "elpv"


def cli_json(args: list[str], log: Path, ok: tuple[int, ...] = (0,)) -> tuple[dict, float]:
    """``edgetl ARGS --json`` as a subprocess: (its JSON document, wall seconds); stderr appended to ``log``.

    ``ok``: exit statuses that still carry a JSON document (export: 1 = the gate failed).
    """
    start = time.perf_counter()
    with log.open("a") as err:
        proc = subprocess.run([sys.executable, "-m", "edgetl", *args, "--json"], stdout=subprocess.PIPE,
                              stderr=err, text=True, cwd=ROOT)
    if proc.returncode not in ok:
        raise SystemExit(f"edgetl {args[0]} failed with status {proc.returncode} (see {log})")
    return (json.loads(proc.stdout) if proc.stdout.strip() else {}), time.perf_counter() - start


def recipe_seed(seed: int, runs: Path, formats: list[str], reuse: bool = False) -> dict:
    """Train the recipe on split ``seed``, export per format (``--precision auto``: INT8 first, through
    the gate), evaluate each bundle on test. ``reuse``: keep an already trained run of that seed."""
    from edgetl.data.elpv import materialise_elpv

    data = ROOT / "data" / f"elpv-four-s{seed}"
    if not (data / "train").is_dir():
        materialise_elpv(data, classes="four", seed=seed)
    out, log = runs / f"elpv-recipe-s{seed}", runs / f"elpv-recipe-s{seed}.log"
    wall = None
    if not (reuse and (out / "metrics.json").is_file()):
        _, wall = cli_json(["train", str(RECIPE), "--out", str(out), "--force", "--device", "cpu",
                            "--set", f"train.seed={seed}"]
                           + [f"--set=data.{k}={data / k}" for k in ("train", "val", "test")], log)
    metrics = json.loads((out / "metrics.json").read_text())
    wall = wall if wall is not None else metrics["timing"].get("total_seconds", metrics["timing"]["fit_seconds"])
    labels, truth, probs = read_predictions(out / "predictions_test.csv")
    doc = {"seed": seed, "config": str(RECIPE.relative_to(ROOT)), "train_wall_seconds": wall,
           "timing": metrics.get("timing"), "test": summarise(labels, truth, probs), "exports": {}}
    for fmt in formats:
        bundle = runs / f"elpv-recipe-s{seed}-{fmt}.edgetl"
        exported, seconds = cli_json(["export", str(out), "--format", fmt, "--precision", "auto",
                                      "--out", str(bundle)], log, ok=(0, 1))
        if not bundle.is_file():  # no INT8 passed the gate: nothing deployable to evaluate
            doc["exports"][fmt] = {"export_seconds": seconds, "passed": False, "attempts": exported.get("attempts")}
            save_seed(doc)
            continue
        ev, _ = cli_json(["eval", str(bundle), str(data / "test")], log)
        doc["exports"][fmt] = {"export_seconds": seconds, "passed": exported.get("passed"),
                            "precision": exported.get("precision"), "method": exported.get("method"),
                            "attempts": exported.get("attempts"), "test_accuracy": ev["accuracy"],
                            "drop_points": 100 * (doc["test"]["accuracy"] - ev["accuracy"])}
        save_seed(doc)
    save_seed(doc)
    return doc


def save_seed(doc: dict) -> None:
    """benchmarks/results/elpv/recipe-s<seed>.json (after each export, so a stopped run keeps what it has)."""
    RECIPE_RESULTS.mkdir(parents=True, exist_ok=True)
    (RECIPE_RESULTS / f"recipe-s{doc['seed']}.json").write_text(json.dumps(doc, indent=1))


def recipe_table() -> None:
    """Mean and spread (min-max) over every saved seed of the recipe."""
    docs = [json.loads(p.read_text()) for p in sorted(RECIPE_RESULTS.glob("recipe-s*.json"))]
    if not docs:
        raise SystemExit(f"no recipe results under {RECIPE_RESULTS}; run --recipe --seed S first")

    def cell(values: list[float], scale: float = 100.0) -> str:
        v = np.array(values) * scale
        return f"{v.mean():.1f} ({v.min():.1f}-{v.max():.1f})" if len(v) > 1 else f"{v[0]:.1f}"

    tests = [d["test"] for d in docs]
    print(f"ELPV four classes, recipe, seeds {[d['seed'] for d in docs]}: mean (min-max)")
    print(f"  test accuracy      {cell([t['accuracy'] for t in tests])} %")
    print(f"  balanced accuracy  {cell([t['balanced_accuracy'] for t in tests])} %")
    for c in tests[0]["recall"]:
        print(f"  recall {c}        {cell([t['recall'][c] for t in tests])} %")
    print(f"  training wall      {cell([d['train_wall_seconds'] / 60 for d in docs], 1.0)} min")
    for fmt in sorted({f for d in docs for f in d["exports"]}):
        rows = [d["exports"][fmt] for d in docs if fmt in d["exports"] and "drop_points" in d["exports"][fmt]]
        if not rows:
            print(f"  {fmt:<9} no bundle passed the gate")
            continue
        chosen = ", ".join(sorted({f"{r.get('precision')}/{r.get('method')}" for r in rows}))
        print(f"  {fmt:<9} auto -> {chosen}: drop {cell([r['drop_points'] for r in rows], 1.0)} points, export "
              f"{cell([r['export_seconds'] / 60 for r in rows], 1.0)} min, gate passed "
              f"{sum(bool(r['passed']) for r in rows)}/{len(rows)}")


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
    ap.add_argument("--recipe", action="store_true", help="train + INT8 export + test eval of the recipe per --seed")
    ap.add_argument("--seed", type=int, action="append", help="split seed for --recipe (repeatable)")
    ap.add_argument("--formats", default="onnx,openvino", help="INT8 export formats for --recipe")
    ap.add_argument("--recipe-table", action="store_true", help="the recipe table from the saved seeds")
    ap.add_argument("--reuse", action="store_true", help="--recipe: keep an already trained run of the seed")
    args = ap.parse_args()
    if args.recipe or args.recipe_table:
        for seed in (args.seed or [0, 1, 2]) if args.recipe else []:
            recipe_seed(seed, ROOT / args.runs, [f for f in args.formats.split(",") if f], args.reuse)
        recipe_table()
        return
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
