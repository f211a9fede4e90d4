"""ELPV four-class, cross-split: a linear-probe config trained on every fold, mean ± sd over the folds.

The folds are those of ``edgetl data elpv OUT --classes four --folds K --seed
S`` (:func:`edgetl.data.elpv.fold_splits`, the same call on the same cells):
K disjoint test folds stratified by grade and cell type, val a stratified 10 %
of each training part. For a ``linear-probe`` config (the shipped
``elpv-four-recipe.yaml``) the frozen backbone's features of all 2,624 cells
are computed ONCE (the strategy's own model and
:func:`edgetl.training.extract_features` call, disk-cached under
benchmarks/results/work/elpv-folds/), and each fold's head is trained on its
rows by the strategy's own head training
(``edgetl_builtins.strategies.linear_probe.train_head``: same standardisation, head,
optimiser, schedule, early stopping on val). That is what ``edgetl train``
computes on ``OUT/fold-<k>``: the frozen features do not depend on the split,
so only the backbone pass is shared. The head's probabilities on the cached
test features are the model's outputs on the test images.

Per fold and decision rule it reports test accuracy, balanced accuracy and the
recall of every grade: the argmax; class-prior (logit) adjustment with each
``tau`` of a grid (the trade-off curve: accuracy vs balanced accuracy);
and the operating point ``train.threshold.policy: balanced`` picks on val
(:func:`edgetl.metrics.tune_adjustment`). Table: mean ± sd (sample standard
deviation over the folds), in %; JSON: benchmarks/results/elpv/folds-<name>-k<K>.json (``--name``, default the config's stem).

    nice -n 10 python benchmarks/experiments/elpv_folds.py --config examples/defect_detection/elpv-four-recipe.yaml --folds 5
    python benchmarks/experiments/elpv_folds.py --table benchmarks/results/elpv/folds-elpv-four-recipe-k5.json

Any other strategy (``partial-finetune`` trains the top stages, so nothing is
shared between folds) runs the real command on each fold written by
``edgetl data elpv DATA --classes four --folds K``: ``edgetl train CONFIG
--set data.train=DATA/fold-<k>/train ...`` into
benchmarks/results/work/elpv-folds/runs/<config>-fold-<k> (a finished fold is
reused, so an interrupted sweep resumes), and scores the same rules on the
run's own ``predictions_val.csv`` / ``predictions_test.csv``. ``--int8`` also
exports each fold's run to an INT8 ONNX bundle with the gate opened (the
figure is measured, not gated) and evaluates the bundle on the fold's test;
``--ship PROFILE`` exports it as a user would (``edgetl export RUN --target
PROFILE``: the profile's precision chain through the default gate) and scores
the bundle that ships, naming its precision per fold:

    edgetl data elpv data/elpv-folds --classes four --folds 5
    EDGETL_MALLOC=keep nice -n 10 python benchmarks/experiments/elpv_folds.py \
        --config examples/defect_detection/elpv-four-partial.yaml --data data/elpv-folds --int8 \
        --ship x86-openvino-cpu --ship x86-onnxruntime-cpu
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORK = Path(os.environ.get("ELPV_FOLDS_WORK", ROOT / "benchmarks" / "results" / "work" / "elpv-folds"))
RESULTS = Path(os.environ.get("ELPV_FOLDS_RESULTS", ROOT / "benchmarks" / "results" / "elpv"))
FOUR = ("p000", "p033", "p067", "p100")


def fold_indices(cells, folds: int, val_size: float, seed: int) -> list[dict[str, np.ndarray]]:
    """Per fold, the cell indices of train, val and test, as ``edgetl data elpv --folds`` writes them."""
    from edgetl.data.elpv import fold_splits

    keys = [(c.label("four"), c.cell_type) for c in cells]
    out = []
    for splits in fold_splits(keys, folds, val_size, seed):
        arr = np.array(splits)
        out.append({s: np.flatnonzero(arr == s) for s in ("train", "val", "test")})
    return out


def context(cfg, log):
    """The FitContext the engine would build for this config (backbone built, input at train.image_size)."""
    import torch

    from edgetl.api import FitContext
    from edgetl.plugins import get_manager

    backbone = get_manager().get("backbone", cfg.backbone.name)
    spec = backbone.input
    if cfg.train.image_size:
        spec = dataclasses.replace(spec, size=(cfg.train.image_size, cfg.train.image_size))
    module = backbone.build(pretrained=cfg.backbone.pretrained, weights=cfg.backbone.weights)
    return FitContext(backbone=backbone, module=module, train=None, val=None, labels=list(FOUR),
                      options=dict(cfg.strategy.options), config=cfg, device=torch.device("cpu"), input=spec,
                      progress=lambda stage, done, total: log(f"{stage}: {done}/{total}") if done in (0, total)
                      or done % 256 < 32 else None)


def model_for(ctx, opts):
    """A fresh model as ``LinearProbe.fit`` builds it (backbone + head, optional StagePool features)."""
    from edgetl_builtins.strategies.linear_probe import build_model, stage_pooled

    model = build_model(ctx, opts["hidden"])
    if opts["stages"] is not None:
        model = stage_pooled(ctx, model, opts["stages"], opts["hidden"])
    model.features.requires_grad_(False)
    return model.eval()


def all_features(ctx, cells, opts, views) -> tuple[np.ndarray, float]:
    """(V, N, D) features of every cell and view, through the strategy's extract_features call (disk-cached)."""
    from edgetl.data.folder import Sample, Samples
    from edgetl.training import Split, extract_features
    from edgetl.training.datasets import ImageDataset

    labels = np.array([FOUR.index(c.label("four")) for c in cells])
    samples = Samples([Sample(c.source, int(y)) for c, y in zip(cells, labels, strict=True)], list(FOUR))
    plain = ImageDataset(samples, ctx.input)
    split = Split("all cells", plain, plain, labels, [c.source for c in cells])
    model = model_for(ctx, opts)
    tag = None if opts["stages"] is None else f"stage-pool:{opts['stages']}"
    t0 = time.perf_counter()
    x = extract_features(ctx, model.features, split, views, batch_size=opts["batch_size"], cache_dir=WORK,
                         cache_tag=tag)
    return x.reshape(len(views), len(cells), -1), time.perf_counter() - t0


def train_fold(ctx, opts, feats: np.ndarray, y: np.ndarray, idx: dict[str, np.ndarray]) -> dict:
    """One fold's head (the strategy's train_head); val and test probabilities, kept epoch, seconds."""
    import torch
    from edgetl_builtins.strategies.linear_probe import train_head

    rows: list = []
    fold_ctx = dataclasses.replace(ctx, train=SimpleNamespace(labels=y[idx["train"]]),
                                   val=SimpleNamespace(labels=y[idx["val"]], name="val"),
                                   log_epoch=rows.append, history=[], feature_passes=[])
    model = model_for(fold_ctx, opts)
    views = feats.shape[0]
    x_train = torch.from_numpy(np.concatenate([feats[v][idx["train"]] for v in range(views)]))
    y_train = torch.from_numpy(np.tile(y[idx["train"]], views))
    t0 = time.perf_counter()
    stopper = train_head(fold_ctx, model, x_train, y_train, torch.from_numpy(feats[0][idx["val"]]), opts)
    seconds = time.perf_counter() - t0
    with torch.inference_mode():
        probs = {s: torch.softmax(model.head(torch.from_numpy(feats[0][idx[s]])), dim=1).double().numpy()
                 for s in ("val", "test")}
    return {"probs": probs, "best_epoch": stopper.best_epoch, "epochs_run": len(rows), "head_seconds": seconds}


def scores(y: np.ndarray, probs: np.ndarray) -> dict:
    from edgetl.metrics import evaluate

    doc = evaluate(y, probs, FOUR)
    return {"accuracy": doc["accuracy"], "balanced_accuracy": doc["balanced_accuracy"],
            "recall": {c: doc["per_class"][c]["recall"] for c in FOUR}, "n": doc["n"],
            "confusion_matrix": doc["confusion_matrix"]}


def decisions(y_val, y_test, probs: dict, prior, taus, max_drop: float, floors: list[float | None]) -> dict:
    """Test scores of each rule: argmax, fixed taus (the curve), tau tuned on val (one per recall floor)."""
    from edgetl.metrics import adjust, adjustment_offsets, tune_adjustment

    out = {"argmax": scores(y_test, probs["test"])}
    for tau in taus:
        out[f"tau={tau:g}"] = scores(y_test, adjust(probs["test"], adjustment_offsets(prior, tau)))
    for floor in floors:  # what train.threshold {policy: balanced, max_accuracy_drop, min_recall} picks
        tau, curve = tune_adjustment(y_val, probs["val"], prior, max_accuracy_drop=max_drop, min_recall=floor)
        rule = f"balanced, tuned on val (drop<={max_drop:g}" + (f", min recall {floor:g})" if floor else ")")
        out[rule] = {**scores(y_test, adjust(probs["test"], adjustment_offsets(prior, tau))), "tau": tau,
                     "val_curve": curve}
    return out


def cross_fit(per_fold: list[dict], fits: list[dict], val_keys: list[np.ndarray], test_keys: list[np.ndarray],
              y_val: list[np.ndarray], y_test: list[np.ndarray], max_drop: float) -> None:
    """Add the rule "tau cross-fitted on the other folds' val": fold k's tau is tuned on the val predictions
    of every other fold's model (each on cells that model never trained on), minus fold k's test cells.

    So the choice sees ~4x the val cells of one fold (~30 p067 instead of 8) and never a cell of fold
    k's test: an honest estimate of what a tau fixed in the config from such a search gives. A cell is
    known by its key (its index among the cells, or its file name) in ``val_keys`` / ``test_keys``.
    """
    from edgetl.metrics import adjust, adjustment_offsets, tune_adjustment

    if len(per_fold) < 2:
        return  # no other fold to tune on
    for k, doc in enumerate(per_fold):
        test = set(test_keys[k].tolist())
        ys, ps = [], []
        for j, fit in enumerate(fits):
            if j == k:
                continue
            keep = np.array([key not in test for key in val_keys[j]])
            ys.append(y_val[j][keep])
            ps.append(fit["probs"]["val"][keep])
        prior = np.array(doc["prior"])
        tau, curve = tune_adjustment(np.concatenate(ys), np.concatenate(ps), prior, max_accuracy_drop=max_drop)
        rule = f"balanced, tau cross-fitted on the other folds' val (drop<={max_drop:g})"
        doc["decisions"][rule] = {**scores(y_test[k], adjust(fits[k]["probs"]["test"], adjustment_offsets(prior, tau))),
                                  "tau": tau, "val_cells": int(sum(len(v) for v in ys)), "val_curve": curve}


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(file names, grade indices, probabilities) of a run's predictions_<split>.csv."""
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    names = np.array([Path(r["path"]).name for r in rows])
    y = np.array([FOUR.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{c}"]) for c in FOUR] for r in rows])
    return names, y, probs


def edgetl_cli(*argv: str) -> tuple[float, str]:
    """Run ``python -m edgetl ARGV`` (stderr to our stderr), return (seconds, stdout); a failure stops the sweep."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgetl", *argv], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode:
        sys.exit(f"edgetl {' '.join(argv)}: exit status {proc.returncode}")
    return time.perf_counter() - t0, proc.stdout


def stale_fields(run: Path, config: str, overrides: list[str]) -> list[str]:
    """The settings (dotted) in which a finished run's config.yaml differs from CONFIG with OVERRIDES: a run is
    reused only when it is the run this sweep would train, so editing a shipped config cannot score old runs."""
    import yaml

    from edgetl.config import RunConfig, load_run_config

    want = load_run_config(config, overrides).model_dump(mode="json")
    have = RunConfig.model_validate(yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
                                    ).model_dump(mode="json")

    def diff(a, b, at: str) -> list[str]:
        if isinstance(a, dict) and isinstance(b, dict):
            return [d for key in sorted(set(a) | set(b)) for d in diff(a.get(key), b.get(key), f"{at}{key}.")]
        return [] if a == b else [at.rstrip(".")]

    return diff(want, have, "")


def cli_fold(args, k: int, log) -> dict:
    """Fold k through the real commands: train (reused when finished), optionally an INT8 bundle's test accuracy."""
    fold = Path(args.data).resolve() / f"fold-{k}"
    if not (fold / "test").is_dir():
        sys.exit(f"{fold}: no such fold; write the folds first: edgetl data elpv {args.data} --classes four "
                 f"--folds {args.folds} --seed {args.seed}")
    run = WORK / "runs" / f"{args.name}-fold-{k}"
    timing = run / "sweep-seconds.json"
    overrides = [f"data.{s}={fold / s}" for s in ("train", "val", "test")] + args.set
    finished = (run / "predictions_test.csv").is_file() and timing.is_file()
    changed = stale_fields(run, args.config, overrides) if finished else []
    if changed:
        log(f"fold {k}: {run} was trained with another config ({', '.join(changed)}): training it again")
    if not finished or changed:
        if args.score_only:
            sys.exit(f"fold {k}: {run} has not finished training with this config (--score-only)")
        log(f"fold {k}: edgetl train {args.config} -> {run}")
        seconds, _ = edgetl_cli("train", args.config, *[a for o in overrides for a in ("--set", o)], "--out",
                                str(run), "--force")
        timing.write_text(json.dumps({"train_seconds": seconds, "load_average": os.getloadavg()}))
    out = {**json.loads(timing.read_text()), "run": str(run.relative_to(ROOT))}
    val_names, y_val, p_val = read_predictions(run / "predictions_val.csv")
    test_names, y_test, p_test = read_predictions(run / "predictions_test.csv")
    train_counts = [sum(1 for _ in (fold / "train" / c).iterdir()) for c in FOUR]
    out.update(val_names=val_names, test_names=test_names, y_val=y_val, y_test=y_test,
               probs={"val": p_val, "test": p_test}, prior=np.array(train_counts) / sum(train_counts))
    metrics = json.loads((run / "metrics.json").read_text())
    out["best_epoch"], out["epochs_run"] = (metrics.get("best") or {}).get("epoch"), metrics.get("epochs_run")
    # the run's probabilities are its saved model's: with threshold.policy balanced they are already adjusted,
    # so "argmax" below is the run's own decision and each "tau=x" adjusts on top of it
    out["run_decision"] = {k: (metrics.get("decision") or {}).get(k) for k in ("policy", "tau")}
    if args.int8:
        out["int8_test"] = bundle_test(run, fold, "int8.edgetl", log,
                                       f"fold {k}: INT8 bundle (gate opened: the figure is measured, not gated)",
                                       "--format", "onnx", "--precision", "int8", "--gate", "100",
                                       "--min-agreement", "0")
    for target in args.ship:
        out.setdefault("shipped_test", {})[target] = bundle_test(
            run, fold, f"shipped-{target}.edgetl", log,
            f"fold {k}: export --target {target}, the default gate (what the profile's chain ships)",
            "--target", target)
    return out


def bundle_test(run: Path, fold: Path, name: str, log, note: str, *export_args: str) -> dict:
    """``edgetl export RUN EXPORT_ARGS`` into RUN/NAME (logging NOTE; a bundle already there is kept), then
    its accuracy, balanced accuracy and grade recall on the fold's test by ``edgetl eval``, and which
    precision it holds."""
    bundle = run / name
    if not bundle.is_file():
        log(note)
        edgetl_cli("export", str(run), *export_args, "--latency-runs", "0", "--out", str(bundle), "--json")
    shipped = json.loads(edgetl_cli("bundle", "inspect", str(bundle), "--json")[1])
    doc = json.loads(edgetl_cli("eval", str(bundle), str(fold / "test"), "--json")[1])
    return {"accuracy": doc["accuracy"], "balanced_accuracy": doc["balanced_accuracy"],
            "recall": {c: doc["per_class"][c]["recall"] for c in FOUR},
            "shipped": f"{shipped['precision']}/{shipped['method']}"}


def cli_main(args, log, taus: list[float], floors: list[float | None]) -> dict:
    """Every fold through ``edgetl train`` (and ``--int8``: export + eval); per-fold decisions as for the probe."""
    per_fold, fits = [], []
    for k in range(args.first or args.folds):
        fit = cli_fold(args, k, log)
        fits.append(fit)
        doc = {"fold": k, "n": {s: int(len(fit[f"y_{s}"])) for s in ("val", "test")}, "run": fit["run"],
               "best_epoch": fit["best_epoch"], "epochs_run": fit["epochs_run"], "train_seconds": fit["train_seconds"],
               "load_average": fit["load_average"], "prior": fit["prior"].tolist(), "run_decision": fit["run_decision"],
               "decisions": decisions(fit["y_val"], fit["y_test"], fit["probs"], fit["prior"], taus,
                                      args.max_accuracy_drop, floors)}
        if "int8_test" in fit:
            doc["decisions"]["INT8 bundle (the run's own decision)"] = fit["int8_test"]
        for target, shipped in fit.get("shipped_test", {}).items():
            doc["decisions"][f"bundle --target {target}, as the gate ships it"] = shipped
        per_fold.append(doc)
        a = doc["decisions"]["argmax"]
        log(f"fold {k}: argmax test {a['accuracy']:.3f} balanced {a['balanced_accuracy']:.3f} "
            + " ".join(f"{c} {a['recall'][c]:.2f}" for c in FOUR) + f"; train {fit['train_seconds']:.0f} s")
    cross_fit(per_fold, fits, [f["val_names"] for f in fits], [f["test_names"] for f in fits],
              [f["y_val"] for f in fits], [f["y_test"] for f in fits], args.max_accuracy_drop)
    tau_all = tau_on_all_val([f["y_val"] for f in fits], [f["probs"]["val"] for f in fits], per_fold,
                             args.max_accuracy_drop)
    return {"tau_all_val": tau_all, "data": str(args.data), "per_fold": per_fold}


def tau_on_all_val(y_val: list[np.ndarray], p_val: list[np.ndarray], per_fold: list[dict], max_drop: float) -> float:
    """The tau ``tune_adjustment`` picks on every fold's val predictions together (the value to fix in a config)."""
    from edgetl.metrics import tune_adjustment

    tau, _ = tune_adjustment(np.concatenate(y_val), np.concatenate(p_val),
                             np.mean([d["prior"] for d in per_fold], axis=0), max_accuracy_drop=max_drop)
    return tau


def summarise(per_fold: list[dict]) -> dict:
    """mean, sd (ddof 1), min, max over folds of every rule's accuracy, balanced accuracy and grade recall."""
    out = {}
    for rule in per_fold[0]["decisions"]:
        docs = [f["decisions"][rule] for f in per_fold]
        stats = {}
        for key, values in [("accuracy", [d["accuracy"] for d in docs]),
                            ("balanced_accuracy", [d["balanced_accuracy"] for d in docs]),
                            *[(f"recall_{c}", [d["recall"][c] for d in docs]) for c in FOUR]]:
            v = np.array(values)
            stats[key] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                          "min": float(v.min()), "max": float(v.max())}
        if "tau" in docs[0]:
            stats["tau"] = [d["tau"] for d in docs]
        if "shipped" in docs[0]:
            stats["shipped"] = [d["shipped"] for d in docs]
        out[rule] = stats
    return out


def markdown(doc: dict) -> str:
    """The table: one row per decision rule, mean ± sd over the folds in %, and the worst fold's grade recall."""
    s = doc["summary"]
    used = doc.get("folds_used", doc["folds"])
    which = (f"K = {doc['folds']}" if used == doc["folds"] else
             f"fold 0 of K = {doc['folds']}" if used == 1 else f"folds 0-{used - 1} of K = {doc['folds']}")
    lines = [f"{doc['config']}, {which} (seed {doc['seed']}); mean ± sd over the folds, %; "
             "min over folds in brackets for the grades",
             "", "| decision | test acc. | balanced acc. | recall p000 | p033 | p067 | p100 | tau or bundle per fold |",
             "|---|---|---|---|---|---|---|---|"]
    for rule, st in s.items():
        cells = [pm(st["accuracy"]), pm(st["balanced_accuracy"])]
        cells += [f"{pm(st[f'recall_{c}'])} [{100 * st[f'recall_{c}']['min']:.0f}]" for c in FOUR]
        taus = ", ".join([f"{t:g}" for t in st.get("tau", [])] + st.get("shipped", [])) or "–"
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {taus} |")
    return "\n".join(lines)


def plot_tradeoff(png: Path, jsons: list[Path], max_drop: float) -> None:
    """Per saved sweep, its argmax and tau rows as one curve in the (balanced accuracy, accuracy) plane, mean
    with ± sd bars over the folds; the region the middle-grade target asks for (balanced >= 0.55, accuracy at
    most MAX_DROP below the best argmax of the sweeps drawn) shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not jsons:
        sys.exit("--plot: name the sweeps' JSONs with --curves")
    docs = [json.loads(j.read_text()) for j in jsons]
    best = max(d["summary"]["argmax"]["accuracy"]["mean"] for d in docs)
    fig, ax = plt.subplots(figsize=(7.5, 5.2))
    ax.fill_between([55, 100], 100 * (best - max_drop), 100, color="tab:green", alpha=0.12,
                    label=f"target: balanced ≥ 55 %, accuracy ≥ best argmax − {100 * max_drop:g}")
    for j, doc in zip(jsons, docs, strict=True):
        rows = [("argmax", 0.0)] + sorted(((r, float(r.split("=")[1])) for r in doc["summary"] if r.startswith("tau=")),
                                          key=lambda rt: rt[1])
        st = [doc["summary"][r] for r, _ in rows]
        x = [100 * s_["balanced_accuracy"]["mean"] for s_ in st]
        y = [100 * s_["accuracy"]["mean"] for s_ in st]
        line = ax.errorbar(x, y, xerr=[100 * s_["balanced_accuracy"]["sd"] for s_ in st],
                           yerr=[100 * s_["accuracy"]["sd"] for s_ in st], marker="o", ms=4, capsize=2, lw=1.2,
                           elinewidth=0.6, label=f"{j.stem.removeprefix('folds-').rsplit('-k', 1)[0]} "
                                                 f"(K = {doc['folds']})")
        ax.annotate("argmax", (x[0], y[0]), textcoords="offset points", xytext=(4, 4), fontsize=7,
                    color=line[0].get_color())
        for (_, tau), xi, yi in zip(rows[1:], x[1:], y[1:], strict=True):
            if tau in (0.4, 1.0):
                ax.annotate(f"τ {tau:g}", (xi, yi), textcoords="offset points", xytext=(4, -9), fontsize=7,
                            color=line[0].get_color())
    ax.set_xlim(left=48, right=66)
    ax.set_ylim(bottom=58, top=83)
    ax.set_xlabel("balanced accuracy, % (mean ± sd over the folds)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("ELPV four grades, disjoint test folds: argmax, then class-prior adjustment with rising τ", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def pm(st: dict) -> str:
    return f"{100 * st['mean']:.1f} ± {100 * st['sd']:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="examples/defect_detection/elpv-four-recipe.yaml")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="the fold seed (edgetl data elpv --seed)")
    ap.add_argument("--val-size", type=float, default=0.1)
    ap.add_argument("--taus", default="0.25,0.5,0.75,1,1.25,1.5,2", help="fixed taus for the trade-off curve")
    ap.add_argument("--max-accuracy-drop", type=float, default=0.02)
    ap.add_argument("--min-recall", default="none,0.1,0.2",
                    help="recall floors of the tuned rule, comma-separated (none: no floor)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="only the first N cells (smoke test)")
    ap.add_argument("--set", action="append", default=[], help="config override, as edgetl train --set")
    ap.add_argument("--name", help="names the runs and the JSON (default: the config's stem); give one with --set, "
                    "e.g. elpv-four-partial-la0.5, so a variant neither reuses nor overwrites the config's runs")
    ap.add_argument("--table", type=Path, help="print the table of a saved JSON and exit")
    ap.add_argument("--plot", type=Path, metavar="PNG", help="draw the trade-off curves of the saved JSONs given "
                    "as --curves (accuracy against balanced accuracy over tau, mean ± sd over the folds) and exit")
    ap.add_argument("--curves", type=Path, nargs="+", default=[], metavar="JSON", help="with --plot")
    ap.add_argument("--data", help="folds written by edgetl data elpv DATA --classes four --folds K: train each "
                    "through edgetl train (any strategy; the only way for those other than linear-probe)")
    ap.add_argument("--int8", action="store_true", help="with --data: also each fold's INT8 bundle's test accuracy")
    ap.add_argument("--ship", action="append", default=[], metavar="PROFILE",
                    help="with --data: also export each fold's run with --target PROFILE through the default gate "
                    "(e.g. x86-openvino-cpu) and score the bundle the chain ships on the fold's test; repeatable")
    ap.add_argument("--first", type=int, help="with --data: only folds 0 .. N-1 of the K (when time allows no more)")
    ap.add_argument("--score-only", action="store_true", help="with --data: score the finished folds, train none")
    args = ap.parse_args()
    args.name = args.name or Path(args.config).stem
    if args.set and args.name == Path(args.config).stem and not args.table:
        sys.exit("--set changes the config: give --name for its runs and JSON (e.g. --name "
                 f"{args.name}-variant)")
    if args.table:
        print(markdown(json.loads(args.table.read_text())))
        return 0
    if args.plot:
        plot_tradeoff(args.plot, args.curves, args.max_accuracy_drop)
        print(f"wrote {args.plot}")
        return 0
    import torch
    from edgetl_builtins.strategies.linear_probe import LinearProbe, cached_views

    from edgetl.config import load_run_config
    from edgetl.data.elpv import read_cells
    from edgetl.training import resolve_options as resolve

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cfg = load_run_config(args.config, args.set)
    taus = [float(t) for t in args.taus.split(",") if t]
    floors = [None if f == "none" else float(f) for f in args.min_recall.split(",") if f]
    if cfg.strategy.name != "linear-probe" or args.data:
        if not args.data:
            sys.exit(f"{args.config}: strategy {cfg.strategy.name} trains per fold through edgetl train: give "
                     "--data, the folder of edgetl data elpv DATA --classes four --folds K")
        doc = {"config": Path(args.config).name, "overrides": args.set, "folds": args.folds, "seed": args.seed,
               "folds_used": args.first or args.folds,
               "cpu": os.cpu_count(), **cli_main(args, log, taus, floors)}
        return finish(doc, args, log)
    if cfg.train.tta:
        sys.exit(f"{args.config}: train.tta is not supported here (the cached test features are one view)")
    torch.set_num_threads(args.threads)
    opts = resolve("linear-probe", cfg.strategy.options, LinearProbe.DEFAULTS)
    views = cached_views(opts["views"], cfg.augment)
    cells = read_cells()[: args.limit]
    y = np.array([FOUR.index(c.label("four")) for c in cells])
    ctx = context(cfg, log)
    feats, feature_seconds = all_features(ctx, cells, opts, views)
    log(f"features: {feats.shape} in {feature_seconds:.0f} s")
    per_fold, fits = [], []
    folds_idx = fold_indices(cells, args.folds, args.val_size, args.seed)
    for k, idx in enumerate(folds_idx):
        fit = train_fold(ctx, opts, feats, y, idx)
        fits.append(fit)
        prior = np.bincount(y[idx["train"]], minlength=len(FOUR)) / len(idx["train"])
        doc = {"fold": k, "n": {s: int(len(v)) for s, v in idx.items()}, "best_epoch": fit["best_epoch"],
               "epochs_run": fit["epochs_run"], "head_seconds": fit["head_seconds"], "prior": prior.tolist(),
               "decisions": decisions(y[idx["val"]], y[idx["test"]], fit["probs"], prior, taus,
                                      args.max_accuracy_drop, floors)}
        per_fold.append(doc)
        a = doc["decisions"]["argmax"]
        log(f"fold {k}: argmax test {a['accuracy']:.3f} balanced {a['balanced_accuracy']:.3f} "
            + " ".join(f"{c} {a['recall'][c]:.2f}" for c in FOUR)
            + f"; kept epoch {fit['best_epoch']} of {fit['epochs_run']}, head {fit['head_seconds']:.1f} s")
    cross_fit(per_fold, fits, [i["val"] for i in folds_idx], [i["test"] for i in folds_idx], [y[i["val"]] for i in folds_idx],
              [y[i["test"]] for i in folds_idx], args.max_accuracy_drop)
    tau_all = tau_on_all_val([y[i["val"]] for i in folds_idx], [f["probs"]["val"] for f in fits], per_fold,
                             args.max_accuracy_drop)
    doc = {"tau_all_val": tau_all, "config": Path(args.config).name, "overrides": args.set, "folds": args.folds,
           "seed": args.seed, "val_size": args.val_size, "n_cells": len(cells), "views": views,
           "feature_seconds": feature_seconds, "cpu": os.cpu_count(), "load_average": os.getloadavg(),
           "per_fold": per_fold}
    return finish(doc, args, log, suffix="-limit" if args.limit else "")


def finish(doc: dict, args, log, suffix: str = "") -> int:
    """Summarise, write benchmarks/results/elpv/folds-<name>-k<K>.json, print the table."""
    log(f"tau tuned on every fold's val predictions together (the value to fix in a config): {doc['tau_all_val']:g}")
    doc["summary"] = summarise(doc["per_fold"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix += f"-first{args.first}" if args.first and args.first < args.folds else ""
    out = RESULTS / f"folds-{args.name}-k{args.folds}{suffix}.json"
    out.write_text(json.dumps(doc, indent=1))
    print(markdown(doc))
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
