"""One way to ask "what is this image?" of a run or a bundle, without torch.

``edgetl eval``, ``edgetl predict``, the export gate and the device agent all go
through a :class:`Predictor` and :func:`predict_document`, so the operating
point (stored threshold on the positive class) and tile aggregation are
applied in exactly one place.

Tiles (``InputSpec.tile``): every tile is classified on its own. With a
positive class (a stored threshold's class, or a label such as ``defect``) the
image takes the scores of the tile with the highest positive probability: a
part is defective if any tile is, so one defect is never averaged away.
Without a positive class the tiles' probabilities are averaged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgetl.api import InputSpec
from edgetl.errors import DataError
from edgetl.metrics import ANOMALY_THRESHOLD, decide, positive_index, score_classes
from edgetl.preprocess import preprocess


@runtime_checkable
class Predictor(Protocol):
    """A loaded model: numpy batches in, probabilities out.

    Attributes:
        name: the model's name (run name or bundle ``model_version``), echoed as ``model``.
        labels: class names in output order.
        task: ``classify`` or ``anomaly``.
        threshold: the stored operating point, or None (argmax).
        positive: the class the threshold applies to, or None.
        input: the preprocessing the model was validated with.
    """

    name: str
    labels: list[str]
    task: str
    threshold: float | None
    positive: str | None
    input: InputSpec

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 normalised -> (N, K) probabilities (anomaly: (N,) scores)."""
        ...


def open_predictor(path: str | Path) -> Predictor:
    """A run directory (holding ``model.pt``) or a bundle file, as a :class:`Predictor`.

    The run predictor needs torch and is imported only for a run directory; a
    bundle goes through the torch-free bundle predictor.
    """
    path = Path(path)
    if path.is_dir():
        from edgetl.host.predictor_run import RunPredictor

        return RunPredictor(path)
    if path.is_file():
        from edgetl.bundle_predictor import BundlePredictor

        return BundlePredictor(path)
    raise DataError(f"{path}: no such run directory or bundle file")


def aggregate_tiles(probs: np.ndarray, labels: list[str], positive: str | None) -> np.ndarray:
    """(T, K) tile probabilities -> (K,): the most-positive tile's, or the mean without a positive class."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:  # anomaly scores: the worst tile
        return np.asarray([probs.max()])
    if len(probs) == 1:
        return probs[0]
    pos = positive_index(labels, positive)
    if pos is None:
        return probs.mean(axis=0)
    return probs[int(np.argmax(probs[:, pos]))]


def predict_document(predictor: Predictor, image_bgr: np.ndarray) -> dict[str, Any]:
    """Classify one decoded frame: the DESIGN.md predict document.

    Returns:
        ``{label, scores: {label: probability}, latency_ms, model}``, plus
        ``threshold`` when one is stored and ``anomaly_score`` for anomaly
        models. ``latency_ms`` covers preprocessing and inference.
    """
    start = time.perf_counter()
    batch = preprocess(image_bgr, predictor.input)
    out = np.asarray(predictor.predict(batch))
    latency_ms = (time.perf_counter() - start) * 1000.0
    labels = list(predictor.labels)
    doc: dict[str, Any]
    if predictor.task == "anomaly" or out.ndim == 1:
        score = float(np.asarray(out, dtype=np.float64).reshape(len(batch), -1)[:, 0].max())
        threshold = ANOMALY_THRESHOLD if predictor.threshold is None else float(predictor.threshold)
        names = labels if len(labels) == 2 else ["good", "anomaly"]
        hi, lo = score_classes(names, predictor.positive)
        index = int(decide(np.array([score]), names, threshold, predictor.positive)[0])
        clipped = min(max(score, 0.0), 1.0)
        return {"label": names[index], "scores": {names[lo]: 1.0 - clipped, names[hi]: clipped},
                "latency_ms": latency_ms, "model": predictor.name, "anomaly_score": score, "threshold": threshold}
    probs = aggregate_tiles(out, labels, predictor.positive)
    index = int(decide(probs[None, :], labels, predictor.threshold, predictor.positive)[0])
    doc = {"label": labels[index], "scores": {name: float(p) for name, p in zip(labels, probs, strict=True)},
           "latency_ms": latency_ms, "model": predictor.name}
    if predictor.threshold is not None:
        doc["threshold"] = float(predictor.threshold)
    return doc


def predict_files(predictor: Predictor, paths: list[Path], batch_size: int = 32,
                  progress: Any = None) -> np.ndarray:
    """Probabilities (N, K) for image files, tiles aggregated as in :func:`predict_document`.

    Used by ``edgetl eval`` and the export gate; files are read and
    preprocessed with THE preprocessing, in batches of ``batch_size`` tiles.
    """
    from edgetl.preprocess import read_image

    results: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    counts: list[int] = []

    def flush() -> None:
        if not pending:
            return
        out = np.asarray(predictor.predict(np.concatenate(pending)))
        start = 0
        for count in counts:
            results.append(aggregate_tiles(out[start:start + count], list(predictor.labels),
                                           predictor.positive))
            start += count
        pending.clear()
        counts.clear()

    for i, path in enumerate(paths):
        tiles = preprocess(read_image(path), predictor.input)
        pending.append(tiles)
        counts.append(len(tiles))
        if sum(counts) >= batch_size:
            flush()
        if progress is not None:
            progress(i + 1, len(paths))
    flush()
    return np.stack(results) if results else np.zeros((0, len(predictor.labels)))
