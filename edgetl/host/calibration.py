"""Images for quantization and gating: calibration from train, gate and reference from val.

Calibration batches come from the run's *training* data (stratified by class,
``--calib-count`` images). The gate and the reference set use the run's
*validation* folder — never the test set. Everything goes through the shared
preprocessing, so the exported model is judged on exactly what the device
will feed it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import InputSpec
from edgetl.errors import ExportError
from edgetl.preprocess import preprocess_file


@dataclass
class LabelledSet:
    """Preprocessed images: ``x`` (M, 3, H, W) float32 with M = images x tiles; ``owner[m]`` the image of row m."""

    paths: list[Path]
    labels: np.ndarray  # (N,) int, index into the run's labels
    x: np.ndarray
    owner: np.ndarray

    def __len__(self) -> int:
        return len(self.paths)


def scan(folder: str | Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image paths and label indices of an ImageFolder, indexed by the run's own label order."""
    from edgetl.data.anomaly import LABELS, load_anomaly_split
    from edgetl.data.folder import scan_image_folder

    if list(labels) == LABELS:  # anomaly runs: good vs every other folder
        found = load_anomaly_split(folder, what=str(folder))
        return [s.path for s in found.items], np.array(found.labels, dtype=np.int64)
    samples = scan_image_folder(folder, classes=list(labels), allow_single_class=True)
    names = samples.classes
    paths = [s.path for s in samples.items]
    y = np.array([labels.index(names[s.label]) for s in samples.items], dtype=np.int64)
    return paths, y


def stratified(y: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``count`` items, classes round-robin (each shuffled), so small classes are kept."""
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(y == c))) for c in np.unique(y)]
    picked: list[int] = []
    while len(picked) < count and any(pools):
        for pool in pools:
            if pool and len(picked) < count:
                picked.append(int(pool.pop()))
    return np.array(sorted(picked), dtype=np.int64)


def load_set(paths: list[Path], y: np.ndarray, spec: InputSpec) -> LabelledSet:
    arrays = [preprocess_file(p, spec) for p in paths]
    owner = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrays)]) if arrays else np.zeros(0, int)
    x = np.concatenate(arrays).astype(np.float32) if arrays else np.zeros((0, 3, *spec.size), np.float32)
    return LabelledSet(paths=list(paths), labels=np.asarray(y), x=x, owner=owner)


def run_folders(config: dict[str, Any]) -> tuple[str, str]:
    """The run's train and val folders; a run without a val folder cannot be gated."""
    data = (config or {}).get("data") or {}
    if not data.get("train"):
        raise ExportError("the run's config has no data.train folder to draw calibration images from")
    if not data.get("val"):
        raise ExportError("the run's config has no data.val folder: the gate needs the validation set "
                          "(export does not use the test set, and cannot rebuild a val_split)")
    for key in ("train", "val"):
        if not Path(data[key]).is_dir():
            raise ExportError(f"data.{key} folder {data[key]} recorded in the run does not exist here")
    return data["train"], data["val"]


def calibration_batches(train_folder: str, labels: list[str], spec: InputSpec, count: int,
                        batch: int = 1, seed: int = 0) -> list[np.ndarray]:
    """``count`` stratified training images as (batch, 3, H, W) float32 arrays (tiles count as images)."""
    paths, y = scan(train_folder, labels)
    idx = stratified(y, count, seed)
    x = load_set([paths[i] for i in idx], y[idx], spec).x
    return [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)] or [x]
