"""The run directory writer: model.pt, config.yaml, metrics.json, history.csv, plots, report.md.

``report.md`` is what a person reads first: the numbers with their n and a 95 %
interval, the operating point, the negative-transfer verdict, the figures, and
the facts that make a number honest (selection on validation only; the test
split, if any, touched once).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgetl.api import InputSpec, TrainedModel
from edgetl.host import plots
from edgetl.host.run import save_run_model
from edgetl.metrics import decide, wilson_interval


def _history_csv(path: Path, history: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in keys})


def _predictions_csv(path: Path, split: Any, probs: np.ndarray, labels: list[str],
                     threshold: float | None, positive: str | None) -> None:
    pred = decide(probs, labels, threshold, positive)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "predicted", *[f"p_{c}" for c in labels]])
        for p, y, yhat, row in zip(split.paths, split.labels, pred, probs, strict=True):
            writer.writerow([str(p), labels[y], labels[yhat], *[f"{v:.6f}" for v in row]])


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _doc_lines(doc: dict[str, Any], name: str) -> list[str]:
    n = doc["n"]
    correct = int(round(doc["accuracy"] * n))
    lo, hi = wilson_interval(correct, n)
    auc = "–" if doc["roc_auc"] is None else f"{doc['roc_auc']:.3f}"
    lines = [f"| {name} | {n} | {_pct(doc['accuracy'])} ({_pct(lo)}–{_pct(hi)}) | "
             f"{_pct(doc['balanced_accuracy'])} | {auc} | "
             f"{_pct(doc['recall_at_threshold'])} | {_pct(doc['false_reject_rate'])} |"]
    return lines


def _per_class_table(doc: dict[str, Any]) -> list[str]:
    lines = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for c in doc["labels"]:
        pc = doc["per_class"][c]
        lines.append(f"| {c} | {_pct(pc['precision'])} | {_pct(pc['recall'])} | {_pct(pc['f1'])} | {pc['support']} |")
    return lines


def write_run_dir(out: Path, *, cfg: Any, trained: TrainedModel, backbone: Any, strategy: str, spec: InputSpec,
                  data: Any, history: list[dict[str, Any]], val_doc: dict[str, Any], val_probs: np.ndarray,
                  test_doc: dict[str, Any] | None, test_probs: np.ndarray | None,
                  baseline: dict[str, Any] | None, timing: dict[str, Any], best_epoch: int | None,
                  device: str, world: int, program: Any = None,
                  threshold_source: str | None = None) -> dict[str, Any]:
    """Write every file of ``runs/NAME/``; returns the ``--json`` summary.

    ``program``: the module's ExportedProgram when already captured (else captured here).
    """
    out.mkdir(parents=True, exist_ok=True)
    config = cfg.model_dump(mode="json", by_alias=True)
    save_run_model(out, trained, backbone=backbone.name, strategy=strategy, input_spec=spec, name=cfg.name,
                   config=config, program=program)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    _history_csv(out / "history.csv", history)
    labels = list(data.classes)
    _predictions_csv(out / "predictions_val.csv", data.val, val_probs, labels, trained.threshold, trained.positive)
    if test_doc is not None:
        _predictions_csv(out / "predictions_test.csv", data.test, test_probs, labels, trained.threshold,
                         trained.positive)
    main_rows = [r for r in history if r.get("strategy") == strategy]
    metric = cfg.train.early_stopping.metric
    best_row = next((r for r in main_rows if r.get("epoch") == best_epoch), None)
    metrics = {
        "name": cfg.name, "strategy": strategy, "backbone": backbone.name, "input_size": list(spec.size),
        "device": device, "processes": world, "labels": labels,
        "counts": {"train": len(data.train), "val": len(data.val), "test": len(data.test) if data.test else 0},
        "threshold": trained.threshold, "positive": trained.positive, "threshold_source": threshold_source,
        "best": {"epoch": best_epoch, "metric": f"val_{metric}",
                 "value": best_row.get(f"val_{metric}") if best_row else None},
        "epochs_run": len(main_rows),
        "final": {"val": val_doc, "test": test_doc},
        "baseline": baseline, "timing": timing, "skipped_images": data.skipped,
        "strategy_extra": trained.extra,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
    figures = {
        "curves": plots.curves(history, strategy, out / "curves.png"),
        "confusion_val": plots.confusion(val_doc, "validation", out / "confusion_val.png"),
        "per_class_val": plots.per_class(val_doc, "validation: per class", out / "per_class_val.png"),
        "roc_val": plots.roc(data.val.labels, val_probs, val_doc, trained.positive, "validation ROC",
                             out / "roc_val.png"),
    }
    if test_doc is not None:
        figures["confusion_test"] = plots.confusion(test_doc, "test", out / "confusion_test.png")
        figures["per_class_test"] = plots.per_class(test_doc, "test: per class", out / "per_class_test.png")
        figures["roc_test"] = plots.roc(data.test.labels, test_probs, test_doc, trained.positive, "test ROC",
                                        out / "roc_test.png")
    _report_md(out, cfg, metrics, figures, main_rows)
    return {
        "name": cfg.name, "run_dir": str(out), "strategy": strategy, "backbone": backbone.name,
        "device": device, "processes": world, "epochs_run": len(main_rows), "best_epoch": best_epoch,
        "selection_metric": f"val_{metric}", "threshold": trained.threshold, "positive": trained.positive,
        "val": {k: val_doc[k] for k in ("accuracy", "balanced_accuracy", "roc_auc", "recall_at_threshold",
                                        "false_reject_rate", "n")},
        "test": None if test_doc is None else {k: test_doc[k] for k in (
            "accuracy", "balanced_accuracy", "roc_auc", "recall_at_threshold", "false_reject_rate", "n")},
        "baseline": None if baseline is None else {k: baseline.get(k) for k in (
            "kind", "metric", "main_val", "baseline_val", "delta_val", "helped", "delta_test_accuracy", "seconds")},
        "seconds": timing["total_seconds"],
    }


def _report_md(out: Path, cfg: Any, metrics: dict[str, Any], figures: dict[str, Path | None],
               rows: list[dict[str, Any]]) -> None:
    val, test = metrics["final"]["val"], metrics["final"]["test"]
    t = cfg.train
    lines = [f"# {cfg.name}", "",
             f"`{metrics['strategy']}` on `{metrics['backbone']}` at {metrics['input_size'][0]}x"
             f"{metrics['input_size'][1]}, {metrics['epochs_run']} epochs run (best: epoch "
             f"{metrics['best']['epoch']} by {metrics['best']['metric']}), device {metrics['device']}"
             + (f" x {metrics['processes']} processes" if metrics["processes"] > 1 else "")
             + f", {metrics['timing']['total_seconds']:.0f} s in all "
               f"({metrics['timing']['fit_seconds']:.0f} s training).", "",
             f"Images: {metrics['counts']['train']} train, {metrics['counts']['val']} val"
             + (f", {metrics['counts']['test']} test" if metrics["counts"]["test"] else "")
             + f"; classes {', '.join(metrics['labels'])}.", "",
             "## Results", "",
             "| split | n | accuracy (95 % CI) | balanced acc. | ROC AUC | recall at threshold | false-reject rate |",
             "|---|---|---|---|---|---|---|"]
    lines += _doc_lines(val, "val")
    if test is not None:
        lines += _doc_lines(test, "test")
    source = ("the strategy's own" if metrics["threshold_source"] == "strategy"
              else f"target recall {t.threshold.target} chosen on val")
    op = ("argmax" if metrics["threshold"] is None else
          f"`{metrics['positive']}` when p({metrics['positive']}) >= {metrics['threshold']:.4f} ({source})")
    lines += ["", f"Operating point: {op}.", "",
              "Model selection (best epoch, threshold) used the validation split only"
              + ("; the test split was evaluated once, at the end." if test is not None else "; no test split given."),
              ""]
    base = metrics["baseline"]
    if base:
        verdict = "helped" if base["helped"] else "did NOT help"
        lines += ["## Negative-transfer check", "",
                  f"Baseline `{base['kind']}` (same architecture, same budget: {base['seconds']:.0f} s, "
                  f"best epoch {base['best_epoch']}): val {base['metric']} {_pct(base['baseline_val'])} vs "
                  f"{_pct(base['main_val'])} for this run: transfer **{verdict}** "
                  f"({100 * base['delta_val']:+.1f} points)"
                  + (f"; test accuracy {100 * base['delta_test_accuracy']:+.1f} points."
                     if base.get("delta_test_accuracy") is not None else "."), ""]
    shown = test if test is not None else val
    lines += [f"## Per class ({'test' if test is not None else 'val'})", ""] + _per_class_table(shown) + [""]
    changes = [(r.get("epoch"), r.get("unfrozen_groups")) for i, r in enumerate(rows)
               if i == 0 or r.get("unfrozen_groups") != rows[i - 1].get("unfrozen_groups")]
    if len(changes) > 1:
        lines += ["## Unfreezing schedule", "",
                  "; ".join(f"epoch {e}: {n} backbone group(s) trainable" for e, n in changes), ""]
    lines += ["## Figures", ""]
    lines += [f"![{k}]({p.name})" for k, p in figures.items() if p is not None]
    lines += ["", "## Training", "",
              f"optimizer {t.optimizer}, lr {t.lr:g}, weight decay {t.weight_decay:g}, schedule "
              f"{t.schedule.kind} (warmup {t.schedule.warmup_epochs:g} epochs), batch {t.batch_size}, "
              f"label smoothing {t.label_smoothing:g}, dropout {t.dropout:g}, class weights {t.class_weights}, "
              f"augment {', '.join(cfg.augment) or 'none'}, seed {t.seed}"
              + (f", test-time views {', '.join(t.tta)}" if t.tta else "") + ".",
              "Files: model.pt2 (the module), model.pt (facts + state dict), config.yaml (resolved), metrics.json, history.csv, predictions_*.csv.", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def report_summary(run_dir: Path) -> str:
    """The first sections of report.md (up to the figures), for terminals and the demo."""
    text = (Path(run_dir) / "report.md").read_text(encoding="utf-8")
    return text.split("## Figures", 1)[0].rstrip() + "\n"
