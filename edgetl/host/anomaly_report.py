"""Anomaly runs after ``fit``: score val/test, compute the metrics, write ``runs/NAME/``.

An anomaly module maps (N, 3, H, W) to ``(score (N,), map (N, 1, H, W))``,
both normalised so 0.5 is the threshold the strategy chose on validation
data. The run directory holds what a classification run holds (model,
config.yaml, metrics.json, predictions_*.csv, report.md) with the anomaly
document (:func:`edgetl.anomaly_metrics.anomaly_document`) in place of the
classification one, and a grid of the worst test images with their heat maps
and masks.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgetl.anomaly_metrics import THRESHOLD, anomaly_document
from edgetl.api import InputSpec, TrainedModel
from edgetl.data.anomaly import read_mask
from edgetl.host.run import save_run_model

GRID = 8  # worst test images shown in report.md


def score_split(module: Any, split: Any, device: Any, batch_size: int = 32,
                progress: Callable[[str, int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), maps (N, H, W)) float32 of a split's un-augmented images.

    ``progress(stage, done, total)`` gets ``evaluate SPLIT`` after each batch.
    """
    from edgetl.training import predict

    counted = None if progress is None else (lambda done, total: progress(f"evaluate {split.name}", done, total))
    scores, maps = predict(module.to(device), split.plain, device, batch_size=batch_size, progress=counted)
    return scores.reshape(-1), maps.reshape(len(scores), *maps.shape[-2:])


def split_document(split: Any, spec: InputSpec, scores: np.ndarray, maps: np.ndarray) -> dict[str, Any]:
    anomalous = np.asarray(split.labels) == 1
    masks = [read_mask(m, spec, bool(a)) if split.masks else (None if a else np.zeros(maps.shape[1:], bool))
             for m, a in zip(split.masks or [None] * len(split), anomalous, strict=True)]
    has_mask = any(m is not None for m in (split.masks or []))
    return anomaly_document(anomalous, scores, maps if has_mask else None, masks if has_mask else None)


def _predictions(path: Path, split: Any, scores: np.ndarray) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "class", "label", "predicted", "anomaly_score"])
        for p, kind, y, s in zip(split.paths, split.kinds or [""] * len(split), split.labels, scores, strict=True):
            writer.writerow([str(p), kind, "anomaly" if y else "good", "anomaly" if s >= THRESHOLD else "good",
                             f"{s:.6f}"])


def failures_first(labels: Any, scores: np.ndarray, limit: int = GRID) -> list[tuple[int, str]]:
    """``(index, verdict)`` of the images worth looking at: the misses (anomalous, scored below the
    threshold; lowest first) and the false alarms (good, at or above it; highest first), alternating,
    then the highest-scoring rest. The highest scores alone are the easiest correct detections.
    """
    y, s = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    misses = [int(i) for i in np.argsort(s, kind="stable") if y[i] and s[i] < THRESHOLD]
    alarms = [int(i) for i in np.argsort(-s, kind="stable") if not y[i] and s[i] >= THRESHOLD]
    picked: list[tuple[int, str]] = []
    for k in range(max(len(misses), len(alarms))):
        picked += [(misses[k], "MISS")] if k < len(misses) else []
        picked += [(alarms[k], "FALSE ALARM")] if k < len(alarms) else []
    taken = {i for i, _ in picked}
    picked += [(int(i), "") for i in np.argsort(-s, kind="stable") if int(i) not in taken]
    return picked[:limit]


def worst_grid(split: Any, spec: InputSpec, scores: np.ndarray, maps: np.ndarray, path: Path) -> Path | None:
    """Misses and false alarms first (:func:`failures_first`): image, heat-map overlay, mask (if any), one row each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgetl.preprocess import prepare, read_image

    order = failures_first(split.labels, scores)
    if len(order) == 0:
        return None
    fig, axes = plt.subplots(len(order), 3, figsize=(6.6, 2.2 * len(order)), squeeze=False)
    for row, (i, verdict) in zip(axes, order, strict=True):
        image = prepare(read_image(split.paths[i]), spec)[0]
        rgb = image if spec.color == "RGB" else image[..., ::-1]
        mask = read_mask((split.masks or [None] * len(split))[i], spec, bool(split.labels[i]))
        row[0].imshow(rgb)
        row[0].set_title(f"{(split.kinds or ['?'] * len(split))[i]}: {scores[i]:.3f}"
                         + (f"  {verdict}" if verdict else ""), fontsize=8, color="red" if verdict else "black")
        row[1].imshow(rgb)
        row[1].imshow(maps[i], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        row[1].set_title("heat map (0.5 = threshold)", fontsize=8)
        row[2].imshow(mask if mask is not None else np.zeros(maps[i].shape), cmap="gray", vmin=0, vmax=1)
        row[2].set_title("mask" if mask is not None else "no mask", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _report(out: Path, metrics: dict[str, Any], grid: Path | None) -> None:
    facts = metrics["strategy_facts"]
    lines = [f"# {metrics['name']}", "",
             f"`{metrics['strategy']}` (anomaly detection, trained on {metrics['counts']['train']} good images) "
             f"on `{metrics['backbone']}` at {metrics['input_size'][0]}x{metrics['input_size'][1]}, device "
             f"{metrics['device']}, {metrics['timing']['fit_seconds']:.1f} s fitting, "
             f"{metrics['timing']['total_seconds']:.0f} s in all.", "",
             "## Results", "",
             "| split | n | anomalous | image AUROC | image F1 | recall | false-reject rate | pixel AUROC | PRO |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ("val", "test"):
        d = metrics["final"][name]
        if d is not None:
            lines.append(f"| {name} | {d['n']} | {d['n_anomalous']} | {_fmt(d['image_auroc'])} | "
                         f"{_fmt(d['image_f1'])} | {_fmt(d['recall_at_threshold'])} | "
                         f"{_fmt(d['false_reject_rate'])} | {_fmt(d['pixel_auroc'])} | {_fmt(d['pro'])} |")
    lines += ["", f"Operating point: normalised score >= 0.5; threshold rule `{facts.get('threshold_rule')}` "
              f"chosen on val (raw score {_fmt(facts.get('image_threshold_raw'), 4)}). The test split was "
              "scored once, at the end.", "",
              "Model facts: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in facts.items()) + ".", ""]
    if grid is not None:
        lines += ["## Worst test images" if metrics["final"]["test"] else "## Worst val images", "",
                  "Image, heat-map overlay, ground-truth mask: the misses (anomalous images scored below the "
                  "threshold, lowest first) and false alarms (good images at or above it, highest first), "
                  "marked in red, then the highest scores.", "",
                  f"![worst]({grid.name})", ""]
    lines += ["Files: model.pt2 (torch.export program) + model.pt, config.yaml, metrics.json, predictions_*.csv.",
              ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def write_anomaly_run_dir(out: Path, *, cfg: Any, trained: TrainedModel, backbone: Any, strategy: str,
                          spec: InputSpec, data: Any, device: Any, timing: dict[str, Any],
                          program: Any = None,
                          progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Score val (and test), write every file of ``runs/NAME/``; returns the ``--json`` summary."""
    out.mkdir(parents=True, exist_ok=True)
    val_scores, val_maps = score_split(trained.module, data.val, device, progress=progress)
    docs = {"val": split_document(data.val, spec, val_scores, val_maps), "test": None}
    _predictions(out / "predictions_val.csv", data.val, val_scores)
    shown = (data.val, val_scores, val_maps)
    if data.test is not None:
        test_scores, test_maps = score_split(trained.module, data.test, device, progress=progress)
        docs["test"] = split_document(data.test, spec, test_scores, test_maps)
        _predictions(out / "predictions_test.csv", data.test, test_scores)
        shown = (data.test, test_scores, test_maps)
    config = cfg.model_dump(mode="json", by_alias=True)
    save_run_model(out, trained, backbone=backbone.name, strategy=strategy, input_spec=spec, name=cfg.name,
                   config=config, program=program)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    metrics = {
        "name": cfg.name, "task": "anomaly", "strategy": strategy, "backbone": backbone.name,
        "input_size": list(spec.size), "device": str(device), "labels": list(trained.labels),
        "counts": {"train": len(data.train), "val": len(data.val), "test": len(data.test) if data.test else 0},
        "threshold": trained.threshold, "positive": trained.positive, "final": docs,
        "strategy_facts": dict(trained.extra), "timing": timing, "skipped_images": data.skipped,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float), encoding="utf-8")
    grid = worst_grid(shown[0], spec, shown[1], shown[2], out / "worst_test.png")
    _report(out, metrics, grid)
    keys = ("image_auroc", "image_f1", "pixel_auroc", "pro", "recall_at_threshold", "false_reject_rate", "n")
    return {"name": cfg.name, "run_dir": str(out), "task": "anomaly", "strategy": strategy,
            "backbone": backbone.name, "device": str(device), "threshold": trained.threshold,
            "val": {k: docs["val"][k] for k in keys},
            "test": None if docs["test"] is None else {k: docs["test"][k] for k in keys},
            "facts": dict(trained.extra), "seconds": timing["total_seconds"]}
