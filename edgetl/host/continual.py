"""``edgetl train --from RUN``: continue a trained run with new classes, and measure the forgetting.

The previous run is checked against this one (same backbone and input size,
a classifier), its labels keep their order and new classes are appended
(sorted), its backbone weights seed ``ctx.module`` and its head is expanded
(:func:`edgetl.training.model.expand_classifier`). ``continual.split``
replaces old classes by children (:func:`plan_labels`): a child's head row
starts as its parent's. The strategy receives all of it as
:class:`edgetl.api.PreviousRun`. After training, :func:`forgetting` compares
the previous model with the new one on the old task — this run's test images
of the old classes, a child's images counted as its parent's ("Continual
learning" in report.md and metrics.json).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import InputSpec, PreviousRun
from edgetl.errors import ConfigError, DataError, UsageError

EXEMPLAR_DIR = "exemplars"
EXEMPLAR_INDEX = "index.json"


@dataclass
class Previous:
    """What is read once from the previous run; :func:`previous_run` builds a fresh PreviousRun from it."""

    run_dir: Path
    labels: list[str]
    model: Any
    state_dict: dict[str, Any]
    exemplars: list[tuple[Path, str]]
    threshold: float | None
    positive: str | None
    strategy: str
    split: dict[str, list[str]] | None = None  # continual.split, set by the engine

    def parents(self, labels: list[str]) -> np.ndarray:
        """For each class of this run, the index of the previous class it belongs to (-1: a new class)."""
        split = self.split or {}
        parent = {c: p for p, children in split.items() for c in children}
        parent.update({c: c for c in self.labels if c not in split})
        return np.asarray([self.labels.index(parent[c]) if c in parent else -1 for c in labels], dtype=int)


def plan_labels(previous: list[str], found: list[str], split: dict[str, list[str]]) -> list[str]:
    """This run's labels: the previous ones not split (their order), then every other class found (sorted).

    Raises:
        ConfigError: ``continual.split`` names a parent the previous run lacks, a
            child that is an old class or that ``data.train`` lacks.
        DataError: ``data.train`` holds a folder for a split parent.
    """
    for parent, children in split.items():
        where = f"continual.split.{parent}"
        if parent not in previous:
            raise ConfigError(f"{where}: '{parent}' is not a class of the --from run (its classes: "
                              f"{', '.join(previous)})")
        if parent in found:
            raise DataError(f"data.train: holds class '{parent}', which continual.split replaces by "
                            f"{', '.join(children)}; move its images into those folders")
        for child in children:
            if child in previous:
                raise ConfigError(f"{where}: child '{child}' is a class of the --from run already; "
                                  "a child must be a new class")
            if child not in found:
                raise ConfigError(f"{where}: child '{child}' has no images in data.train (found: "
                                  f"{', '.join(found)})")
    return [c for c in previous if c not in split] + sorted(set(found) - set(previous))


def drop_split_exemplars(prev: Previous) -> list[str]:
    """Remove the stored exemplars of split classes (no child label can be given to them); their labels."""
    split = prev.split or {}
    dropped = [label for _, label in prev.exemplars if label in split]
    prev.exemplars = [(p, label) for p, label in prev.exemplars if label not in split]
    return dropped


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_exemplars(run_dir: Path) -> list[tuple[Path, str]]:
    """The rehearsal buffer a run stored (``exemplars/index.json``), each file checked against its SHA-256."""
    index = run_dir / EXEMPLAR_DIR / EXEMPLAR_INDEX
    if not index.is_file():
        return []
    try:
        items = json.loads(index.read_text(encoding="utf-8"))["items"]
        pairs = [(run_dir / item["file"], str(item["label"]), str(item["sha256"])) for item in items]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{index}: unreadable exemplar index ({type(exc).__name__}: {exc})") from None
    for path, _, digest in pairs:
        if not path.is_file() or sha256(path) != digest:
            raise DataError(f"{path}: exemplar image missing or changed (SHA-256 differs from {index.name}); "
                            "restore the run directory or delete its exemplars/ folder")
    return [(path, label) for path, label, _ in pairs]


def open_previous(from_dir: str | Path, out: Path, backbone: str, spec: InputSpec, task: str) -> Previous:
    """Read and check the ``--from`` run: a classifier of the same backbone and input size.

    Raises:
        UsageError: the directory is missing, is the ``--out`` of this run, or does not fit this run.
        DataError: it cannot be read as a run.
    """
    import torch

    from edgetl.host.run import MODEL_FILE, load_run

    run_dir = Path(from_dir)
    if not run_dir.is_dir():
        raise UsageError(f"--from {run_dir}: no such run directory (expected a directory 'edgetl train' wrote)")
    if run_dir.resolve() == out.resolve():
        raise UsageError(f"--from {run_dir}: is this run's --out; write the new run to another directory")
    run = load_run(run_dir)
    if run.task != "classify" or task != "classify":
        which = "the previous run" if run.task != "classify" else "this run's strategy"
        raise UsageError(f"--from {run_dir}: {which} is an anomaly model; continual learning adds classes "
                         "to a classifier (an anomaly model has none to keep)")
    if run.backbone != backbone:
        raise ConfigError(f"backbone.name: {backbone} differs from the --from run's {run.backbone} ({run_dir}); "
                          "continuing a run keeps its backbone")
    if tuple(run.input.size) != tuple(spec.size):
        raise ConfigError(f"train.image_size: {spec.size[0]}x{spec.size[1]} differs from the --from run's "
                          f"{run.input.size[0]}x{run.input.size[1]} ({run_dir}); set it to the same size")
    payload = torch.load(run_dir / MODEL_FILE, map_location="cpu", weights_only=True)
    return Previous(run_dir=run_dir, labels=list(run.labels), model=run.model, state_dict=payload["state_dict"],
                    exemplars=read_exemplars(run_dir), threshold=run.threshold, positive=run.positive,
                    strategy=run.strategy)


def _backbone_prefix(state: dict[str, Any], keys: list[str]) -> str | None:
    """The prefix under which ``state`` holds every backbone key (``features.``, ``module.features.``)."""
    first = keys[0]
    for key in state:
        if key.endswith(first):
            prefix = key[: len(key) - len(first)]
            if (not prefix or prefix.endswith(".")) and all(prefix + k in state for k in keys):
                return prefix
    return None


def previous_run(prev: Previous, module: Any, feature_dim: int, labels: list[str]) -> PreviousRun:
    """Load the previous backbone weights into ``module``; the PreviousRun with the expanded classifier.

    Each class's head row starts from its previous class's (a split child: its
    parent's); new classes get fresh rows.
    """
    from edgetl.training.model import expand_classifier

    keys = list(module.state_dict())
    prefix = _backbone_prefix(prev.state_dict, keys)
    if prefix is None:
        raise UsageError(f"--from {prev.run_dir}: its module does not hold this backbone's weights "
                         f"(strategy {prev.strategy} saved another structure); continue from a classifier run")
    module.load_state_dict({k: prev.state_dict[prefix + k] for k in keys})
    root = prefix[: -len("features.")] if prefix.endswith("features.") else None
    head = ({k[len(root) + 5:]: v for k, v in prev.state_dict.items() if k.startswith(root + "head.")}
            if root is not None else {})
    rows = [None if r < 0 else int(r) for r in prev.parents(labels)]
    classifier = expand_classifier(module, feature_dim, head, len(labels), rows) if head else None
    return PreviousRun(run_dir=prev.run_dir, labels=list(prev.labels),
                       new_labels=[c for c in labels if c not in prev.labels], model=prev.model,
                       state_dict=prev.state_dict, classifier=classifier, exemplars=list(prev.exemplars),
                       threshold=prev.threshold, positive=prev.positive, strategy=prev.strategy,
                       split={p: list(c) for p, c in (prev.split or {}).items()})


def _class_accuracy(y: np.ndarray, pred: np.ndarray, labels: list[str], which: list[int]) -> dict[str, Any]:
    """Per class (recall of its images) and over all images of the classes ``which``."""
    per = {labels[c]: (float(np.mean(pred[y == c] == c)) if np.any(y == c) else None) for c in which}
    n = {labels[c]: int(np.sum(y == c)) for c in which}
    mask = np.isin(y, which)
    return {"per_class": per, "n": n, "overall": float(np.mean(pred[mask] == y[mask])) if mask.any() else None}


def merged_prediction(probs: np.ndarray, parents: np.ndarray, k_old: int) -> np.ndarray:
    """The previous class each row predicts when a split class's probability is its children's sum.

    Argmax over the previous classes' (summed) probabilities and the new
    classes' own; a row won by a new class gives -1 (not an old class).
    """
    merged = np.zeros((len(probs), k_old + int(np.sum(parents < 0))), dtype=np.float64)
    for j in np.flatnonzero(parents >= 0):
        merged[:, parents[j]] += probs[:, j]
    merged[:, k_old:] = probs[:, parents < 0]
    pred = merged.argmax(axis=1)
    return np.where(pred < k_old, pred, -1)


def forgetting(prev: Previous, labels: list[str], split: str, y: np.ndarray, old_probs: np.ndarray,
               new_probs: np.ndarray, new_pred: np.ndarray, baseline: tuple[str, np.ndarray] | None
               ) -> dict[str, Any]:
    """The old task before (previous model) and after (this model), forgetting = before - after.

    ``old_probs``: the previous model's outputs on ``split``; ``new_pred``:
    this model's class indices under its operating point; ``baseline``: the
    baseline's name and probabilities. The old task is every image of an old
    class, a split child's counted as its parent's; after a split a model's
    answer is its :func:`merged_prediction` (children's probabilities summed),
    else its own prediction.
    """
    from edgetl.metrics import decide

    parents = prev.parents(labels)
    old = list(range(len(prev.labels)))
    new = [i for i, c in enumerate(labels) if c not in prev.labels]
    y_old = parents[y]
    before = _class_accuracy(y_old, decide(old_probs, prev.labels, prev.threshold, prev.positive),
                             prev.labels, old)

    def after(probs: np.ndarray, pred: np.ndarray) -> dict[str, Any]:
        old_pred = merged_prediction(probs, parents, len(old)) if prev.split else parents[pred]
        kept = _class_accuracy(y_old, old_pred, prev.labels, old)
        gone = {c: (None if before["per_class"][c] is None or kept["per_class"][c] is None
                    else before["per_class"][c] - kept["per_class"][c]) for c in kept["per_class"]}
        overall = (None if before["overall"] is None or kept["overall"] is None
                   else before["overall"] - kept["overall"])
        return {"old": kept, "new": _class_accuracy(y, pred, labels, new),
                "forgetting": {"per_class": gone, "overall": overall}}

    doc = {"from": str(prev.run_dir), "split": split, "old_labels": list(prev.labels),
           "new_labels": [labels[c] for c in new], "split_classes": dict(prev.split or {}),
           "before": before, "after": after(new_probs, new_pred), "baseline": None}
    if baseline is not None:
        doc["baseline"] = {"strategy": baseline[0], **after(baseline[1], baseline[1].argmax(axis=1))}
    return doc


def markdown(doc: dict[str, Any]) -> list[str]:
    """report.md's "Continual learning" section."""
    def pct(v: float | None, sign: bool = False) -> str:
        return "–" if v is None else (f"{100 * v:+.1f}" if sign else f"{100 * v:.1f} %")

    base = doc["baseline"]
    head = "| class | n | before | after | forgetting |" + (f" `{base['strategy']}` baseline after | its forgetting |" if base else "")
    lines = ["## Continual learning", "",
             f"Continued from `{doc['from']}` (classes {', '.join(doc['old_labels'])}); new: "
             f"{', '.join(doc['new_labels']) or 'none'}. Accuracy = the fraction of the {doc['split']} images of a "
             "class predicted as that class (operating points applied); *before* is the previous run's model on "
             "the same images, forgetting = before − after (points)."]
    if doc.get("split_classes"):
        lines += ["", "Split classes: " + "; ".join(f"{p} → {', '.join(c)}" for p, c in doc["split_classes"].items())
                  + ". On the old task an image of a child counts as its parent's, and a new model's answer is "
                  "the class with the highest probability once each parent's children are summed (*before*: "
                  "the previous model as it was)."]
    lines += ["", head, "|---|---|---|---|---|" + ("---|---|" if base else "")]
    split = doc.get("split_classes") or {}
    rows = [(f"{c} (= {' + '.join(split[c])})" if c in split else c, doc["before"]["n"][c],
             doc["before"]["per_class"][c], doc["after"]["old"]["per_class"][c],
             doc["after"]["forgetting"]["per_class"][c], base and base["old"]["per_class"][c],
             base and base["forgetting"]["per_class"][c]) for c in doc["old_labels"]]
    rows.append(("**old classes**", sum(doc["before"]["n"].values()), doc["before"]["overall"],
                 doc["after"]["old"]["overall"], doc["after"]["forgetting"]["overall"],
                 base and base["old"]["overall"], base and base["forgetting"]["overall"]))
    rows += [(c, doc["after"]["new"]["n"][c], None, doc["after"]["new"]["per_class"][c], None,
              base and base["new"]["per_class"][c], None) for c in doc["new_labels"]]
    if len(doc["new_labels"]) > 1:
        rows.append(("**new classes**", sum(doc["after"]["new"]["n"].values()), None,
                     doc["after"]["new"]["overall"], None, base and base["new"]["overall"], None))
    for c, n, b, a, f, ba, bf in rows:
        lines.append(f"| {c} | {n} | {pct(b)} | {pct(a)} | {pct(f, True)} |"
                     + (f" {pct(ba)} | {pct(bf, True)} |" if base else ""))
    return lines + [""]
