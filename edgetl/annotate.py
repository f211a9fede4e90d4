"""Draw a prediction onto its image (OpenCV, no torch): one drawing for every place that shows one.

``edgetl predict --save``, the agent's ``?heatmap=true`` overlay and the
capture sink all call :func:`annotate`, so a user sees the same picture
everywhere: a banner with the decision, the score and the threshold it was
compared with (red when the decision is the defect/anomalous class, green
otherwise), and for anomaly models the heat map blended over the image with
the threshold's contour outlined.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgetl import fmt
from edgetl.errors import DataError

__all__ = ["annotate", "heat_overlay", "AnnotatedWriter"]


MIN_WIDTH = 320  # narrower images are enlarged first so the banner stays readable
HEAT_ALPHA = 0.45
DEFAULT_FPS = 25.0
RED, GREEN, WHITE = (40, 40, 230), (60, 170, 60), (255, 255, 255)


def _cv2():
    import cv2

    return cv2


def _fields(result: Any) -> tuple[str, bool, str]:
    """(label, alarm, detail) from a :class:`edgetl.prediction.Prediction` or a predict document."""
    from edgetl.prediction import from_document

    if isinstance(result, dict):
        result = from_document(result)
    if result.threshold is not None and result.score is not None:
        detail = f"{result.positive} {fmt.prob(result.score)} (threshold {fmt.prob(result.threshold)})"
    else:
        detail = f"{result.label} {fmt.prob(result.scores.get(result.label))} (argmax)"
    return result.label, result.alarm, detail


def heat_overlay(image_bgr: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """Blend an anomaly map over the image and outline where it crosses the threshold (0.5).

    Args:
        image_bgr: (H, W, 3) uint8.
        heatmap: (N, 1, h, w), (1, h, w) or (h, w) float in 0..1 (0.5 = threshold); the first map is
            drawn, resized to the image.
    """
    cv2 = _cv2()
    amap = np.asarray(heatmap, dtype=np.float32)
    while amap.ndim > 2:
        amap = amap[0]
    h, w = image_bgr.shape[:2]
    amap = cv2.resize(np.clip(amap, 0.0, 1.0), (w, h), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap((amap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(image_bgr, 1.0 - HEAT_ALPHA, colour, HEAT_ALPHA, 0.0)
    contours, _ = cv2.findContours((amap >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, WHITE, max(1, w // 320))
    return out


def annotate(image_bgr: np.ndarray, result: Any, heatmap: np.ndarray | None = None) -> np.ndarray:
    """A copy of ``image_bgr`` with the decision, score and threshold drawn (and the heat map).

    Args:
        image_bgr: (H, W, 3) uint8 BGR, as decoded by OpenCV; greyscale (H, W) is accepted.
        result: a :class:`edgetl.prediction.Prediction` or a predict document (dict).
        heatmap: optional anomaly map, (N, 1, h, w) / (h, w) float in 0..1, 0.5 = threshold.

    Returns:
        (H', W', 3) uint8 BGR; W' = max(W, 320) (narrow images are enlarged so the text is legible).
    """
    cv2 = _cv2()
    image = np.asarray(image_bgr)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    if w < MIN_WIDTH:
        image = cv2.resize(image, (MIN_WIDTH, max(1, round(h * MIN_WIDTH / w))), interpolation=cv2.INTER_NEAREST)
    out = heat_overlay(image, heatmap) if heatmap is not None else image.copy()
    label, alarm, detail = _fields(result)
    h, w = out.shape[:2]
    scale = max(0.45, w / 900)
    thick = max(1, round(scale * 2))
    (_, th), _ = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    line = th + max(6, th // 2)
    banner = 2 * line + 6
    strip = out[:min(banner, h)]
    strip[:] = (strip * 0.35).astype(np.uint8)  # darken, keeping the image visible under the text
    colour = RED if alarm else GREEN
    cv2.putText(out, label, (6, line), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick + 1, cv2.LINE_AA)
    cv2.putText(out, detail, (6, 2 * line), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8, WHITE, thick, cv2.LINE_AA)
    cv2.rectangle(out, (0, 0), (w - 1, h - 1), colour, max(2, thick))
    return out


class AnnotatedWriter:
    """``predict --save DIR``: annotated images under their relative names, one annotated video per stream.

    Images keep their relative path and suffix under ``DIR``; frames of a video
    file, camera or stream go to ``DIR/<name>.mp4`` (``cv2.VideoWriter``, mp4v,
    at the source's frame rate, 25 fps when it does not say).
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._videos: dict[str, Any] = {}
        self.written: list[Path] = []

    def write(self, item: Any, result: Any) -> Path:
        """Annotate ``item.image`` with ``result`` (and its anomaly map) and write it; returns the file."""
        cv2 = _cv2()
        image = annotate(item.image, result, getattr(result, "anomaly_map", None))
        path = self.out_dir / item.name
        if item.frame is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(path), image):
                raise DataError(f"{path}: OpenCV could not write the annotated image")
            self.written.append(path)
            return path
        writer = self._videos.get(item.name)
        if writer is None:
            fps = float(getattr(item.stream, "fps", 0.0) or 0.0) or DEFAULT_FPS
            h, w = image.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            if not writer.isOpened():
                raise DataError(f"{path}: OpenCV could not open a video writer (mp4v)")
            self._videos[item.name] = writer
            self.written.append(path)
        writer.write(image)
        return path

    def close(self) -> None:
        """Finish every video file (an unreleased writer leaves an unplayable file)."""
        for writer in self._videos.values():
            writer.release()
        self._videos.clear()
