"""What one prediction says, as a typed object (no torch).

:class:`Prediction` is what ``edgetl.load(...).predict(...)`` returns and what
``edgetl predict`` prints, one per image or video frame. It wraps THE predict
document (:func:`edgetl.predictor.predict_document`, the same one the device
agent returns), so the operating point is applied in one place and
``to_dict()`` is exactly ``predict --json``'s line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl import fmt
from edgetl.metrics import DEFECT_NAMES, positive_index

__all__ = ["Prediction", "from_document"]


@dataclass
class Prediction:
    """One image's (or frame's) result.

    Attributes:
        label: the decision under the model's operating point.
        scores: probability per class (anomaly models: ``good``/anomalous label, from the score).
        threshold: the operating point the decision used, or None (argmax).
        positive: the class the threshold applies to (e.g. ``defect``), or None.
        score: the positive class's probability, or the anomaly score (0.5 = threshold); None for argmax
            models without a positive class.
        source: the image path, ``array[i]`` for an in-memory image, or the video/camera URI.
        frame: the frame index within a video or camera stream, else None.
        anomaly_map: anomaly models that give one, when asked: (H, W) float32 in the network
            input's geometry, normalised so 0.5 is the threshold.
        latency_ms: preprocessing + inference.
        model: the run name or bundle ``model_version``.
        task: ``classify`` or ``anomaly``.
    """

    label: str
    scores: dict[str, float]
    threshold: float | None = None
    positive: str | None = None
    score: float | None = None
    source: str = ""
    frame: int | None = None
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    latency_ms: float = 0.0
    model: str = ""
    task: str = "classify"

    @property
    def alarm(self) -> bool:
        """True when the decision is the positive (defect/anomalous) class."""
        if self.positive is not None:
            return self.label == self.positive
        return self.label.lower() in DEFECT_NAMES

    def describe(self) -> str:
        """One line for people: ``defect 0.305 (threshold 0.200) -> defect``.

        Without an operating point every score is shown and the decision is
        marked ``(argmax)``.
        """
        if self.threshold is not None and self.positive is not None and self.score is not None:
            return (f"{self.positive} {fmt.prob(self.score)} (threshold {fmt.prob(self.threshold)}) "
                    f"-> {self.label}")
        scores = "  ".join(f"{k} {fmt.prob(v)}" for k, v in self.scores.items())
        return f"{scores} -> {self.label} (argmax)"

    def to_dict(self) -> dict[str, Any]:
        """The predict document (docs/schemas/predict.schema.json) with ``image``/``frame``."""
        doc: dict[str, Any] = {"image": self.source} if self.source else {}
        if self.frame is not None:
            doc["frame"] = self.frame
        doc.update(label=self.label, scores=dict(self.scores), latency_ms=self.latency_ms, model=self.model)
        if self.threshold is not None:
            doc["threshold"] = self.threshold
        if self.task == "anomaly":
            doc["anomaly_score"] = self.score
        return doc


def from_document(doc: dict[str, Any], positive: str | None = None, source: str = "", frame: int | None = None,
                  anomaly_map: np.ndarray | None = None) -> Prediction:
    """A :class:`Prediction` from a predict document.

    Args:
        positive: the class the document's threshold applies to (the predictor's ``positive``);
            when None, a defect-like label (``defect``, ``anomaly``, …) is assumed.
    """
    anomaly = "anomaly_score" in doc
    labels = list(doc["scores"])
    if anomaly:  # scores are {good, anomalous label}: the second is the one the threshold applies to
        positive, score = labels[-1], float(doc["anomaly_score"])
    elif doc.get("threshold") is not None:
        index = positive_index(labels, positive)
        positive = None if index is None else labels[index]
        score = None if positive is None else doc["scores"][positive]
    else:
        positive, score = None, None
    return Prediction(label=doc["label"], scores=dict(doc["scores"]), threshold=doc.get("threshold"),
                      positive=positive, score=score, source=source, frame=frame, anomaly_map=anomaly_map,
                      latency_ms=float(doc.get("latency_ms", 0.0)), model=doc.get("model", ""),
                      task="anomaly" if anomaly else "classify")
