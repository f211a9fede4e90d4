"""``capture`` sink: keep the frames worth relabelling, under a size and age limit.

This is the feedback loop for retraining: frames predicted as a defect, frames
whose decision was close (near the threshold) and a small random sample of
the rest are saved as PNG with a JSON sidecar holding the prediction and why
the frame was kept. With ``overlay: true`` each kept frame also gets
``<stem>.overlay.jpg``: :func:`edgetl.annotate.annotate` of the frame, with the
anomaly model's heat map when the pipeline passed one (``Frame.anomaly_map``),
so a reviewer sees where the model looked; the PNG stays the raw frame for
relabelling. Retention deletes the oldest captures first once the folder
passes ``max_mb``, and any capture older than ``max_age_h``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from edgetl.api import Frame, Sink, SinkWriter
from edgetl.errors import ConfigError

GOOD_LABELS = ("good", "ok", "normal", "pass")
OVERLAY_SUFFIX = ".overlay.jpg"


def keep_reason(result: dict[str, Any], defect_labels: set[str] | None, margin: float,
                sample: float, rng: random.Random) -> str:
    """Why a result's frame should be kept: ``defect``, ``near_threshold``, ``sample`` or ``""``.

    Near the threshold means, for an anomaly model, ``|anomaly_score -
    threshold| <= margin``; for a classifier, the two highest scores within
    ``margin`` of each other.
    """
    label = str(result.get("label", ""))
    is_defect = label in defect_labels if defect_labels is not None else label.lower() not in GOOD_LABELS
    if is_defect:
        return "defect"
    if result.get("anomaly_score") is not None and result.get("threshold") is not None:
        if abs(float(result["anomaly_score"]) - float(result["threshold"])) <= margin:
            return "near_threshold"
    else:
        top = sorted((float(v) for v in (result.get("scores") or {}).values()), reverse=True)
        if len(top) >= 2 and top[0] - top[1] <= margin:
            return "near_threshold"
    if sample > 0 and rng.random() < sample:
        return "sample"
    return ""


class CaptureWriter(SinkWriter):
    """Saves kept frames under ``dir``; ``stats`` counts kept frames per reason and deletions."""

    def __init__(self, root: Path, defect_labels: set[str] | None, margin: float, sample: float,
                 max_bytes: int, max_age_s: float, seed: int | None, overlay: bool = False):
        self.root, self.defect_labels, self.margin, self.sample = root, defect_labels, margin, sample
        self.overlay = overlay
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.rng = random.Random(seed)
        self.root.mkdir(parents=True, exist_ok=True)
        self.stats: dict[str, int] = {"defect": 0, "near_threshold": 0, "sample": 0, "deleted": 0}

    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        if frame is None:
            return
        reason = keep_reason(result, self.defect_labels, self.margin, self.sample, self.rng)
        if not reason:
            return
        import cv2

        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(frame.timestamp))
        stem = f"{stamp}-{int(frame.timestamp * 1e6) % 1_000_000:06d}-{frame.index:08d}-{reason}"
        ok, png = cv2.imencode(".png", frame.image)
        if not ok:
            return
        (self.root / f"{stem}.png").write_bytes(png.tobytes())
        sidecar = {"reason": reason, "result": result, "frame_source": frame.source}
        if self.overlay:
            sidecar["overlay"] = self._write_overlay(stem, result, frame)
        (self.root / f"{stem}.json").write_text(json.dumps(sidecar, sort_keys=True))
        self.stats[reason] += 1
        self.enforce_retention()

    def _write_overlay(self, stem: str, result: dict[str, Any], frame: Frame) -> str | None:
        """``<stem>.overlay.jpg``: the annotated frame (with its heat map); its name, or None."""
        import cv2

        from edgetl.annotate import annotate

        ok, jpg = cv2.imencode(".jpg", annotate(frame.image, result, heatmap=frame.anomaly_map))
        if not ok:
            return None
        (self.root / f"{stem}{OVERLAY_SUFFIX}").write_bytes(jpg.tobytes())
        return f"{stem}{OVERLAY_SUFFIX}"

    def enforce_retention(self) -> None:
        """Delete captures past ``max_age_s``, then the oldest until under ``max_bytes``."""
        now = time.time()
        files = sorted(self.root.glob("*.png"), key=lambda p: (p.stat().st_mtime, p.name))
        kept: list[tuple[Path, int]] = []
        for png in files:
            if self.max_age_s and now - png.stat().st_mtime > self.max_age_s:
                self._delete(png)
            else:
                kept.append((png, sum(p.stat().st_size for p in _companions(png) if p.exists())))
        total = sum(size for _, size in kept)
        for png, size in kept:
            if total <= self.max_bytes:
                break
            self._delete(png)
            total -= size

    def _delete(self, png: Path) -> None:
        for path in _companions(png):
            path.unlink(missing_ok=True)
        self.stats["deleted"] += 1


def _companions(png: Path) -> tuple[Path, Path, Path]:
    """One capture's files: the frame, its sidecar and its overlay."""
    return png, png.with_suffix(".json"), png.with_name(png.stem + OVERLAY_SUFFIX)


class CaptureSink(Sink):
    name = "capture"
    description = ("save defects, near-threshold frames and a random sample for relabelling "
                   "(options: dir, defect_labels, margin=0.1, sample=0.01, max_mb=500, max_age_h=168, seed, "
                   "overlay=false)")
    requires = ("cv2",)

    def open(self, options: dict[str, Any]) -> SinkWriter:
        if not options.get("dir"):
            raise ConfigError("sink 'capture': option 'dir' is required (the folder to save frames in)")
        try:
            margin = float(options.get("margin", 0.1))
            sample = float(options.get("sample", 0.01))
            max_mb = float(options.get("max_mb", 500))
            max_age_h = float(options.get("max_age_h", 168))
        except (TypeError, ValueError):
            raise ConfigError("sink 'capture': margin, sample, max_mb and max_age_h must be numbers") from None
        if not 0 <= sample <= 1 or margin < 0 or max_mb <= 0 or max_age_h < 0:
            raise ConfigError("sink 'capture': expected 0 <= sample <= 1, margin >= 0, max_mb > 0, max_age_h >= 0")
        labels = options.get("defect_labels")
        defect = {str(x) for x in labels} if labels else None
        seed = options.get("seed")
        overlay = options.get("overlay", False)
        if not isinstance(overlay, bool):
            raise ConfigError(f"sink 'capture': option 'overlay' must be true or false (got {overlay!r})")
        return CaptureWriter(Path(options["dir"]), defect, margin, sample, int(max_mb * 1024 * 1024),
                             max_age_h * 3600, int(seed) if seed is not None else None, overlay)
