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

from edgetl import fmt
from edgetl.api import InputSpec, TrainedModel
from edgetl.fmt import pct
from edgetl.host import plots
from edgetl.host.run import save_run_model
from edgetl.metrics import decide, evaluate, wilson_interval


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


def _doc_lines(doc: dict[str, Any], split: str, decision: str) -> list[str]:
    n = doc["n"]
    correct = int(round(doc["accuracy"] * n))
    lo, hi = wilson_interval(correct, n)
    return [f"| {split} | {decision} | {n} | {pct(doc['accuracy'])} ({pct(lo)}–{pct(hi)}) | "
            f"{pct(doc['balanced_accuracy'])} | {fmt.prob(doc['roc_auc'])} | "
            f"{pct(doc['recall_at_threshold'])} | {pct(doc['false_reject_rate'])} |"]


def _results(metrics: dict[str, Any], target: float) -> list[str]:
    """The results table: argmax and the operating point side by side, and what tells them apart."""
    final, argmax = metrics["final"], metrics["final_argmax"]
    threshold, positive = metrics["threshold"], metrics["positive"]
    point = None if threshold is None else f"p({positive}) ≥ {fmt.prob(threshold)}"
    lines = ["| split | decision | n | accuracy (95 % CI) | balanced acc. | ROC AUC | recall (positive class) "
             "| false-reject rate |", "|---|---|---|---|---|---|---|---|"]
    plain = "argmax of the prior-adjusted model" if metrics.get("decision") else "argmax"
    for split in ("val", "test"):
        if final[split] is None:
            continue
        lines += _doc_lines(argmax[split], split, plain)
        if point is not None:
            lines += _doc_lines(final[split], split, point)
    if point is None and (adj := metrics.get("decision")):
        base = adj["val_curve"][0]
        return lines + ["", f"Decision: **class-prior adjustment** (`train.threshold.policy: balanced`), tau "
                            f"{adj['tau']:g} ({'chosen on val' if adj['tau_from'] == 'val' else 'from the config'}): "
                            "each class's probability times prior^-tau, renormalised, then the argmax. The saved "
                            "model includes the step, so every figure above, `eval`, `predict`, the export gate "
                            "and the device use it. Without it (tau 0) val accuracy was "
                            f"{pct(base['accuracy'])}, balanced {pct(base['balanced_accuracy'])}; the per-epoch "
                            "log and the best-epoch selection are before the adjustment."]
    if point is None:
        return lines + ["", "Decision: argmax (the most probable class), the same one the per-epoch log's "
                            "`val_acc`/`val_bacc` use."]
    source = ("the strategy's own threshold" if metrics.get("threshold_source") == "strategy"
              else f"a threshold chosen on val for recall ≥ {target:g} of `{positive}`")
    return lines + ["", f"Two decisions, side by side. **argmax** takes the most probable class: the per-epoch "
                        f"log's `val_acc`/`val_bacc` and the best-epoch selection use it. The **operating point** "
                        f"predicts `{positive}` whenever {point}, {source}: it catches more `{positive}` images "
                        "at the price of rejecting more of the others, so its accuracy is usually lower. The saved "
                        "model applies the operating point: it is what `eval`, `predict`, the export gate and the "
                        "device use."]


def _per_class_table(doc: dict[str, Any]) -> list[str]:
    lines = ["| class | precision | recall | f1 | support |", "|---|---|---|---|---|"]
    for c in doc["labels"]:
        pc = doc["per_class"][c]
        lines.append(f"| {c} | {pct(pc['precision'])} | {pct(pc['recall'])} | {pct(pc['f1'])} | {pc['support']} |")
    return lines


def write_run_dir(out: Path, *, cfg: Any, trained: TrainedModel, backbone: Any, strategy: str, spec: InputSpec,
                  data: Any, history: list[dict[str, Any]], val_doc: dict[str, Any], val_probs: np.ndarray,
                  test_doc: dict[str, Any] | None, test_probs: np.ndarray | None,
                  baseline: dict[str, Any] | None, timing: dict[str, Any], best_epoch: int | None,
                  device: str, world: int, program: Any = None,
                  threshold_source: str | None = None, continual: dict[str, Any] | None = None,
                  decision: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write every file of ``runs/NAME/``; returns the ``--json`` summary.

    ``decision``: the class-prior adjustment of ``train.threshold.policy: balanced``
    (:func:`edgetl.host.engine.balanced_point`); the model and every probability here include it.

    ``program``: the module's ExportedProgram when already captured (else captured here).
    ``continual``: the forgetting report of a ``--from`` run (:func:`edgetl.host.continual.forgetting`).
    """
    out.mkdir(parents=True, exist_ok=True)
    config = cfg.model_dump(mode="json", by_alias=True)
    save_run_model(out, trained, backbone=backbone.name, strategy=strategy, input_spec=spec, name=cfg.name,
                   config=config, program=program)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    _history_csv(out / "history.csv", history)
    labels = list(data.classes)
    _write_predictions(out, data, trained, val_probs, test_probs if test_doc is not None else None)
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
        "final_argmax": {"val": evaluate(data.val.labels, val_probs, labels),
                         "test": None if test_doc is None else evaluate(data.test.labels, test_probs, labels)},
        "baseline": _source_only(baseline, trained), "timing": timing, "skipped_images": data.skipped,
        "strategy_extra": trained.extra,
        "slices": _slices(cfg, data, trained, val_probs, test_probs),
        "continual": continual,
        "decision": decision,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
    figures = _figures(out, history, strategy, data, trained.positive, val_doc, val_probs, test_doc, test_probs)
    _report_md(out, cfg, metrics, figures, main_rows)
    return _summary(out, metrics)


def _write_predictions(out: Path, data: Any, trained: TrainedModel, val_probs: np.ndarray,
                       test_probs: np.ndarray | None) -> None:
    """``predictions_val.csv`` and, with a test split evaluated, ``predictions_test.csv``."""
    labels = list(data.classes)
    _predictions_csv(out / "predictions_val.csv", data.val, val_probs, labels, trained.threshold, trained.positive)
    if test_probs is not None:
        _predictions_csv(out / "predictions_test.csv", data.test, test_probs, labels, trained.threshold,
                         trained.positive)


def _figures(out: Path, history: list[dict[str, Any]], strategy: str, data: Any, positive: str | None,
             val_doc: dict[str, Any], val_probs: np.ndarray, test_doc: dict[str, Any] | None,
             test_probs: np.ndarray | None) -> dict[str, Any]:
    """Draw the run's figures; returns them by name for report.md."""
    figures = {
        "curves": plots.curves(history, strategy, out / "curves.png"),
        "confusion_val": plots.confusion(val_doc, "validation", out / "confusion_val.png"),
        "per_class_val": plots.per_class(val_doc, "validation: per class", out / "per_class_val.png"),
        "roc_val": plots.roc(data.val.labels, val_probs, val_doc, positive, "validation ROC", out / "roc_val.png"),
    }
    if test_doc is not None:
        figures["confusion_test"] = plots.confusion(test_doc, "test", out / "confusion_test.png")
        figures["per_class_test"] = plots.per_class(test_doc, "test: per class", out / "per_class_test.png")
        figures["roc_test"] = plots.roc(data.test.labels, test_probs, test_doc, positive, "test ROC",
                                        out / "roc_test.png")
    return figures


_SUMMARY_SCORES = ("accuracy", "balanced_accuracy", "roc_auc", "recall_at_threshold", "false_reject_rate", "n")
_SUMMARY_BASELINE = ("kind", "metric", "main_val", "baseline_val", "delta_val", "helped", "delta_test_accuracy",
                     "seconds", "budget", "epochs_run", "single_epoch", "source_only")


def _summary(out: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``--json`` summary of a run: the headline figures of its metrics.json."""
    val, test, baseline = metrics["final"]["val"], metrics["final"]["test"], metrics["baseline"]
    return {
        "name": metrics["name"], "run_dir": str(out), "strategy": metrics["strategy"],
        "backbone": metrics["backbone"], "device": metrics["device"], "processes": metrics["processes"],
        "epochs_run": metrics["epochs_run"], "best_epoch": metrics["best"]["epoch"],
        "selection_metric": metrics["best"]["metric"], "threshold": metrics["threshold"],
        "positive": metrics["positive"],
        "val": {k: val[k] for k in _SUMMARY_SCORES},
        "test": None if test is None else {k: test[k] for k in _SUMMARY_SCORES},
        "baseline": None if baseline is None else {k: baseline.get(k) for k in _SUMMARY_BASELINE},
        "seconds": metrics["timing"]["total_seconds"],
    }


def _slices(cfg: Any, data: Any, trained: TrainedModel, val_probs: np.ndarray,
            test_probs: np.ndarray | None) -> dict[str, Any] | None:
    """Per-slice metrics of val (and test) for the config's ``slices`` (None without any)."""
    if not cfg.slices:
        return None
    from edgetl.slices import slice_report

    out = {"val": slice_report(cfg.slices, data.val.labels, val_probs, data.classes, data.val.paths,
                               trained.threshold, trained.positive)}
    if test_probs is not None:
        out["test"] = slice_report(cfg.slices, data.test.labels, test_probs, data.classes, data.test.paths,
                                   trained.threshold, trained.positive)
    return out


def _slice_lines(slices: dict[str, Any] | None) -> list[str]:
    if not slices:
        return []
    from edgetl.slices import markdown

    split = "test" if "test" in slices else "val"
    return ["## Per slice", "",
            "Accuracy and recall of the positive class at the operating point per slice, with 95 % Wilson "
            "intervals; a slice is flagged when the rest's figure lies above its interval.", "",
            *markdown(slices[split], split)]


def _extra_lines(strategy: str, extra: dict[str, Any]) -> list[str]:
    """``TrainedModel.extra`` as a table (trainable parameters, adapter size, peak memory, ...), if any."""
    if not extra:
        return []
    def fmt(v: Any) -> str:
        return f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{v:.4g}" if isinstance(v, float) else str(v)
    return ["## Strategy", "", f"Facts `{strategy}` reported (`metrics.json` → `strategy_extra`):", "",
            "| fact | value |", "|---|---|", *[f"| {k} | {fmt(v)} |" for k, v in extra.items()], ""]


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
             "## Results", ""]
    lines += _results(metrics, t.threshold.target)
    lines += ["", "Model selection (best epoch, threshold) used the validation split only"
              + ("; the test split was evaluated once, at the end." if test is not None else "; no test split given."),
              ""]
    if metrics["baseline"]:
        lines += _baseline_lines(metrics["baseline"])
    if metrics.get("continual"):
        from edgetl.host.continual import markdown

        lines += markdown(metrics["continual"])
    lines += _extra_lines(metrics["strategy"], metrics.get("strategy_extra") or {})
    lines += _slice_lines(metrics.get("slices"))
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
              + (f"logit adjustment {t.logit_adjustment:g}, " if t.logit_adjustment else "")
              + f"augment {', '.join(cfg.augment) or 'none'}, seed {t.seed}"
              + (f", test-time views {', '.join(t.tta)}" if t.tta else "") + ".",
              "Files: model.pt2 (the module), model.pt (facts + state dict), config.yaml (resolved), metrics.json, history.csv, predictions_*.csv.", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _source_only(baseline: dict[str, Any] | None, trained: TrainedModel) -> dict[str, Any] | None:
    """Mark the baseline ``source_only`` when the run adapted with target images (``extra["target_images"]``).

    The engine never gives the baseline ``data.target_unlabeled``, so against
    such a run (``dann``, ``intermediate-pretrain``) it is the source-only model.
    """
    return None if baseline is None else {**baseline, "source_only": bool(trained.extra.get("target_images"))}


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"


def _baseline_lines(base: dict[str, Any]) -> list[str]:
    """The negative-transfer section: the verdict, the budget the baseline really had, and a flag for one epoch."""
    verdict = "helped" if base["helped"] else "did NOT help"
    epochs = base.get("epochs_run")
    if base.get("budget") == "wall_clock":
        budget = (f"the same wall-clock as this run's training, {_secs(base['budget_seconds'])} (it stops after "
                  f"the epoch that crosses it): {epochs} epoch(s) in {_secs(base['seconds'])}")
    else:
        budget = f"the same number of epochs ({base.get('budget_epochs')}): {epochs} run in {_secs(base['seconds'])}"
    lines = ["## Negative-transfer check", "",
             f"Baseline `{base['kind']}` (same architecture; budget: {budget}, best epoch {base['best_epoch']}): "
             f"val {base['metric']} {pct(base['baseline_val'])} vs {pct(base['main_val'])} for this run: "
             f"transfer **{verdict}** ({100 * base['delta_val']:+.1f} points)"
             + (f"; test accuracy {100 * base['delta_test_accuracy']:+.1f} points."
                if base.get("delta_test_accuracy") is not None else "."), ""]
    if base.get("source_only"):
        lines += ["The baseline is **source-only**: trained without the `data.target_unlabeled` images, so this "
                  "compares adapting to the target domain with not adapting. Val is the labelled (source) data, "
                  "where adaptation need not help; its gain on the target domain shows on labelled target images "
                  "(`data.test` from the target, the test difference above, or `edgetl eval`).", ""]
    if base.get("single_epoch"):
        lines += ["**The baseline ran a single epoch**, so this verdict says little: a network trained from "
                  "scratch for one epoch is rarely better than chance. Give it `train.baseline_budget: epochs` "
                  "(the same epochs as this run) or set `train.baseline: none`.", ""]
    return lines


def report_summary(run_dir: Path) -> str:
    """The first sections of report.md (up to the figures), for terminals and the demo."""
    text = (Path(run_dir) / "report.md").read_text(encoding="utf-8")
    return text.split("## Figures", 1)[0].rstrip() + "\n"
