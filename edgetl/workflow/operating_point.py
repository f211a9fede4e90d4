"""Move a model's decision threshold without retraining, and say what it does on the validation split.

``edgetl eval|predict --threshold X`` (or ``--recall R`` / ``--frr F``, a
target met on val) replace the stored operating point for that command only;
``edgetl device threshold URL X`` sets it on an agent. Either way the user
sees the effect before relying on it: the positive class's recall and the
false-reject rate (the share of the other images flagged) on the validation
split, next to those of the stored threshold. Targets are met on val, never
on the data being evaluated (that would report an optimistic figure).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl.errors import UsageError


@dataclass
class OperatingPoint:
    """A threshold, why it was chosen, and its effect on val (None where no val split was found)."""

    threshold: float
    how: str
    val: str | None = None
    recall: float | None = None
    false_reject_rate: float | None = None
    stored: float | None = None
    stored_recall: float | None = None
    stored_false_reject_rate: float | None = None

    def describe(self, positive: str) -> str:
        from edgetl import fmt

        line = f"operating point {positive} >= {fmt.prob(self.threshold)} ({self.how})"
        if self.val is None:
            return line + ": no validation split to show its effect (give --val DIR)"
        line += (f": on val ({self.val}) recall {fmt.prob(self.recall)}, false-reject rate "
                 f"{fmt.prob(self.false_reject_rate)}")
        if self.stored_recall is not None:
            stored = "argmax" if self.stored is None else f">= {fmt.prob(self.stored)}"
            line += (f"; stored {stored}: recall {fmt.prob(self.stored_recall)}, false-reject rate "
                     f"{fmt.prob(self.stored_false_reject_rate)}")
        return line


def threshold_for_frr(y_true: Any, probs: Any, pos: int, max_frr: float) -> float:
    """The lowest threshold on ``probs[:, pos]`` that flags at most ``max_frr`` of the other images.

    Lowest, because among the thresholds that reject few enough good parts it catches the most defects.
    """
    import numpy as np

    good = np.sort(np.asarray(probs, dtype=np.float64)[np.asarray(y_true) != pos, pos])[::-1]
    allowed = int(np.floor(max_frr * good.size + 1e-9))
    if good.size == 0 or allowed >= good.size:
        return 0.0
    return float(np.nextafter(good[allowed], np.inf))  # just above the first good score that must pass


def val_folder(model_path: Path, val: str | Path | None) -> Path | None:
    """``--val``, else the run's own ``data.val`` from its config.yaml (None for a bundle without --val)."""
    if val is not None:
        return Path(val)
    config = model_path / "config.yaml"
    if not config.is_file():
        return None
    import yaml

    doc = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    found = (doc.get("data") or {}).get("val")
    return Path(found) if found and Path(found).is_dir() else None


def choose(model: Any, *, threshold: float | None = None, recall: float | None = None, frr: float | None = None,
           val: str | Path | None = None, batch: int = 32) -> OperatingPoint | None:
    """Apply the asked operating point to ``model`` (an :class:`edgetl.workflow.Model`); None if none was asked.

    Raises:
        UsageError: more than one of threshold/recall/frr, a value outside [0, 1], a model without a
            positive class, or a target without a validation split.
    """
    asked = [(name, v) for name, v in (("--threshold", threshold), ("--recall", recall), ("--frr", frr))
             if v is not None]
    if not asked:
        return None
    if len(asked) > 1:
        raise UsageError(f"give one of --threshold, --recall, --frr (got {', '.join(n for n, _ in asked)})")
    name, value = asked[0]
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"{name} {value}: expected a fraction in [0, 1]")
    predictor = model.predictor
    if predictor.task != "classify" or predictor.positive is None:
        raise UsageError(f"{name}: {model.path} has no positive class to threshold ({predictor.task}, argmax over "
                         f"{len(predictor.labels)} classes); train with train.threshold.class: NAME")
    folder = val_folder(model.path, val)
    if folder is None and name != "--threshold":
        raise UsageError(f"{name}: a target is met on the validation split; this model names none: give --val DIR")
    stored = predictor.threshold
    point = OperatingPoint(threshold=value, how=name.lstrip("-") if name == "--threshold" else f"{name} {value:g} "
                           "on val", stored=stored)
    if folder is not None:
        import numpy as np

        from edgetl.data.folder import load_split
        from edgetl.metrics import evaluate, pick_threshold
        from edgetl.predictor import predict_files

        samples = load_split(folder)
        labels = list(predictor.labels)
        y = np.array([labels.index(samples.classes[s.label]) for s in samples.items])
        probs = predict_files(predictor, [s.path for s in samples.items], batch_size=batch)
        pos = labels.index(predictor.positive)
        if name == "--recall":
            point.threshold = pick_threshold(y, probs, pos, value)
        elif name == "--frr":
            point.threshold = threshold_for_frr(y, probs, pos, value)
        now = evaluate(y, probs, labels, point.threshold, predictor.positive)
        before = evaluate(y, probs, labels, stored, predictor.positive)
        point.val = str(folder)
        point.recall, point.false_reject_rate = now["recall_at_threshold"], now["false_reject_rate"]
        point.stored_recall, point.stored_false_reject_rate = (before["recall_at_threshold"],
                                                               before["false_reject_rate"])
    predictor.threshold = point.threshold
    return point
