"""The run's data: train/val(/test) splits as datasets plus what the loop needs beside them.

A :class:`edgetl.training.Split` is a dataset (``len``/``[]`` go to the augmented dataset) that
also carries the un-augmented view (``plain``: validation, feature caching),
the integer labels (class weights, metrics) and the file paths (reports).
Selection uses ``val`` only; ``test`` is evaluated once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import InputSpec
from edgetl.errors import DataError
from edgetl.training.datasets import Split


@dataclass
class RunData:
    train: Split
    val: Split
    test: Split | None
    classes: list[str]
    skipped: list[str]
    unlabeled: Split | None = None


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of every class held out (at least one when a class has ≥ 2)."""
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_held = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.extend(idx[:n_held])
        keep.extend(idx[n_held:])
    return np.sort(np.asarray(keep, dtype=int)), np.sort(np.asarray(held, dtype=int))


def _load(path: str, what: str, skip_bad: bool, skipped: list[str], classes: list[str] | None = None,
          allow_single_class: bool = False) -> Any:
    from edgetl.data.folder import check_images, load_split

    root = Path(path)
    if not root.exists():
        relative = "" if root.is_absolute() else f"; relative paths resolve from the working directory {Path.cwd()}"
        raise DataError(f"{what}: {root}: no such directory (expected an image folder with one "
                        f"sub-folder per class, or a .csv manifest{relative})")
    samples = check_images(load_split(root, classes=classes, allow_single_class=allow_single_class),
                           skip_bad=skip_bad)
    skipped.extend(str(p) for p in samples.skipped)
    return samples


def _split(name: str, items: list[Any], classes: list[str], spec: InputSpec, augment: list[str],
           train: bool, seed: int) -> Split:
    from edgetl.data.folder import Samples
    from edgetl.training.datasets import ImageDataset

    samples = Samples(items=list(items), classes=list(classes))
    geometric = [a for a in augment if a not in ("mixup", "cutmix")]
    plain = ImageDataset(samples, spec, augment=[], train=False, seed=seed)
    dataset = ImageDataset(samples, spec, augment=geometric, train=True, seed=seed) if train and geometric else plain
    labels = np.asarray([s.label for s in items], dtype=int)
    return Split(name, dataset, plain, labels, [Path(s.path) for s in items])


def _load_unlabeled(path: str, classes: list[str], spec: InputSpec, augment: list[str], seed: int,
                    skip_bad: bool, skipped: list[str]) -> Split:
    """``data.target_unlabeled``: every image under DIR (any folder layout), label -1, run's augmentation."""
    from edgetl.data.folder import Sample, Samples, check_images, list_images

    root = Path(path)
    images = list_images(root) if root.is_dir() else []
    if not images:
        raise DataError(f"data.target_unlabeled: {root}: expected a directory with images "
                        f"({'no such directory' if not root.is_dir() else 'none found'})")
    samples = check_images(Samples([Sample(p, -1) for p in images], list(classes)), skip_bad=skip_bad)
    skipped.extend(str(p) for p in samples.skipped)
    return _split("unlabeled", samples.items, classes, spec, augment, True, seed)




def _anomaly_split(name: str, path: str, spec: InputSpec, skip_bad: bool, skipped: list[str],
                   seed: int, good_only: bool = False) -> Split:
    from edgetl.data.anomaly import load_anomaly_split
    from edgetl.data.folder import check_images

    samples = load_anomaly_split(path, what=f"data.{name}", good_only=good_only)
    extra = {s.path: (k, m) for s, k, m in zip(samples.items, samples.kinds, samples.masks, strict=True)}
    checked = check_images(samples, skip_bad=skip_bad)
    skipped.extend(str(p) for p in checked.skipped)
    split = _split(name, checked.items, checked.classes, spec, [], False, seed)
    split.kinds = [extra[s.path][0] for s in checked.items]
    split.masks = [extra[s.path][1] for s in checked.items]
    return split


def load_anomaly_run_data(config: Any, spec: InputSpec, skip_bad: bool = False) -> RunData:
    """Anomaly runs: good-only train; val/test with ``good`` plus any defect folders, and their masks.

    Without ``data.val``, ``val_split`` of the good training images is held
    out (the threshold is then a percentile of good scores).
    """
    from edgetl.data.anomaly import LABELS

    data, seed = config.data, config.train.seed
    skipped: list[str] = []
    train = _anomaly_split("train", data.train, spec, skip_bad, skipped, seed, good_only=True)
    if data.val:
        val = _anomaly_split("val", data.val, spec, skip_bad, skipped, seed)
    else:
        keep, held = stratified_split(train.labels, data.val_split or 0.15, seed)
        items = [train.plain.samples.items[i] for i in range(len(train))]
        val = _split("val", [items[i] for i in held], LABELS, spec, [], False, seed)
        train = _split("train", [items[i] for i in keep], LABELS, spec, [], False, seed)
        val.kinds, val.masks = ["good"] * len(val), [None] * len(val)
    test = _anomaly_split("test", data.test, spec, skip_bad, skipped, seed) if data.test else None
    return RunData(train=train, val=val, test=test, classes=list(LABELS), skipped=skipped)


def _relabel(items: list[Any], found: list[str], classes: list[str]) -> list[Any]:
    from edgetl.data.folder import Sample

    return [Sample(s.path, classes.index(found[s.label])) for s in items]


def load_run_data(config: Any, spec: InputSpec, skip_bad: bool = False, task: str = "classify",
                  previous_labels: list[str] | None = None, split: dict[str, list[str]] | None = None) -> RunData:
    """Train, val (folder or stratified ``val_split``) and optional test splits of a run config.

    ``previous_labels`` (a ``--from`` run): the classes are those labels in
    their order, then the training data's other classes (sorted); the
    training data may hold a single class and need not hold the old ones.
    ``split`` (``continual.split``) replaces old classes by new ones
    (:func:`edgetl.host.continual.plan_labels`).
    """
    if task == "anomaly":
        return load_anomaly_run_data(config, spec, skip_bad)
    data, seed = config.data, config.train.seed
    skipped: list[str] = []
    train = _load(data.train, "data.train", skip_bad, skipped, allow_single_class=previous_labels is not None)
    classes = list(train.classes)
    train_items = list(train.items)
    if previous_labels is not None:
        from edgetl.host.continual import plan_labels

        classes = plan_labels(list(previous_labels), classes, split or {})
        train_items = _relabel(train_items, list(train.classes), classes)
    if len(classes) < 2:
        raise DataError(f"data.train: {data.train}: found {len(classes)} class folder(s), need at least 2")
    if data.val:
        val_items = list(_load(data.val, "data.val", skip_bad, skipped, classes).items)
    else:
        fraction = data.val_split or 0.15
        labels = np.asarray([s.label for s in train_items])
        keep, held = stratified_split(labels, fraction, seed)
        val_items = [train_items[i] for i in held]
        train_items = [train_items[i] for i in keep]
    test_items = list(_load(data.test, "data.test", skip_bad, skipped, classes).items) if data.test else None
    unlabeled = (_load_unlabeled(data.target_unlabeled, classes, spec, config.augment, seed, skip_bad, skipped)
                 if data.target_unlabeled else None)
    return RunData(
        train=_split("train", train_items, classes, spec, config.augment, True, seed),
        val=_split("val", val_items, classes, spec, [], False, seed),
        test=_split("test", test_items, classes, spec, [], False, seed) if test_items else None,
        classes=classes, skipped=skipped, unlabeled=unlabeled)
