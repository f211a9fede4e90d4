"""What the line's page shows: the latest frames, counters, the last rejects, a threshold preview.

:class:`LiveFeed` is a pipeline observer (``Pipeline.observers``): it is called
once per predicted frame in the pipeline's worker thread and only keeps
*references* (the frame's array, its anomaly map, its predict document), so a
frame costs a few microseconds there and no copy. Pictures are drawn
(:func:`edgetl.annotate.annotate`, downscaled, JPEG) only when a browser asks
for one, and the latest picture at most ``max_render_fps`` times a second
whatever the number of browsers: a page left open on ten tablets costs what
one costs. Nothing is kept per browser, so a browser that goes away leaves
nothing behind (the page polls; there is no stream to hold open).

Memory is bounded by frame counts: ``rejects`` + ``shown`` frames of the
camera's size, plus ``history`` small records.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl.metrics import decide, positive_index, score_classes
from edgetl.prediction import from_document


@dataclass
class FrameRecord:
    """One predicted frame as the page knows it.

    Attributes:
        id: the feed's own sequence number (frame indices restart with each pipeline).
        frame: the source's frame index; ``source`` its name (a file, a camera).
        time: when it was predicted (Unix seconds).
        doc: the predict document; ``alarm`` whether it decided the defect/anomalous class.
        score: the score compared with the threshold (None for an argmax model).
        image, amap: the frame (BGR) and its anomaly map, None once only the record is kept.
    """

    id: int
    frame: int
    source: str
    time: float
    doc: dict[str, Any]
    alarm: bool
    score: float | None
    image: np.ndarray | None = None
    amap: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "frame": self.frame, "source": self.source, "time": self.time,
                "label": str(self.doc.get("label")), "alarm": self.alarm, "score": self.score,
                "threshold": self.doc.get("threshold"), "model": self.doc.get("model")}

    def light(self) -> "FrameRecord":
        return FrameRecord(self.id, self.frame, self.source, self.time, self.doc, self.alarm, self.score)


def margin(doc: dict[str, Any], positive: str | None = None) -> float | None:
    """How far a decision was from flipping: |score - threshold|, or top-1 minus top-2 without one."""
    pred = from_document(doc, positive)
    if pred.score is not None and pred.threshold is not None:
        return abs(float(pred.score) - float(pred.threshold))
    top = sorted((float(v) for v in doc.get("scores", {}).values()), reverse=True)
    return top[0] - top[1] if len(top) >= 2 else None


class LiveFeed:
    """The pipeline's recent results for the page (thread-safe; see the module docstring).

    Args:
        history: results kept for the counters' latency and the threshold preview.
        rejects: rejected frames kept (with their image) for the gallery.
        shown: frames kept after a browser was shown them, so the one on screen can be marked.
        render_width: width of the live picture (the full-size view is not downscaled).
        max_render_fps: the most live pictures drawn per second, all browsers together.
    """

    def __init__(self, history: int = 500, rejects: int = 12, shown: int = 8, render_width: int = 640,
                 max_render_fps: float = 10.0, jpeg_quality: int = 80):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.latest: FrameRecord | None = None
        self.history: collections.deque[FrameRecord] = collections.deque(maxlen=history)
        self.rejects: collections.deque[FrameRecord] = collections.deque(maxlen=rejects)
        self.shown: collections.OrderedDict[int, FrameRecord] = collections.OrderedDict()
        self.shown_max = shown
        self.render_width, self.jpeg_quality = render_width, jpeg_quality
        self.min_render_gap = 1.0 / max_render_fps if max_render_fps > 0 else 0.0
        self._rendered: tuple[int, float, bytes] | None = None  # (record id, when, jpeg) of the live picture
        self._render_lock = threading.Lock()
        self._seconds: collections.deque[list[int]] = collections.deque(maxlen=3600)  # [second, inspected, rejected]
        self.inspected = self.rejected = self.errors = 0
        self.positive: str | None = None
        self.listeners: list[Any] = []  # called with each record after it is counted (the capture sampler)

    # -- the observer --------------------------------------------------------------------
    def __call__(self, result: dict[str, Any], frame: Any, pipeline: Any = None) -> None:
        """Pipeline observer: count and keep one predicted frame (references only)."""
        doc = {k: v for k, v in result.items() if k not in ("timestamp", "source", "frame")}
        pred = from_document(doc, self.positive)
        now = time.time()
        record = FrameRecord(id=next(self._ids), frame=int(result.get("frame", -1)),
                             source=str(result.get("source", "")), time=now, doc=doc, alarm=pred.alarm,
                             score=None if pred.score is None else float(pred.score),
                             image=getattr(frame, "image", None), amap=getattr(frame, "anomaly_map", None))
        second = int(now)
        with self._lock:
            self.inspected += 1
            self.rejected += record.alarm
            if self._seconds and self._seconds[-1][0] == second:
                self._seconds[-1][1] += 1
                self._seconds[-1][2] += record.alarm
            else:
                self._seconds.append([second, 1, int(record.alarm)])
            if self.latest is not None:  # the history keeps no image: that goes with the next frame
                self.history.append(self.latest.light())
            self.latest = record
            if record.alarm:
                self.rejects.append(record)
        for listener in self.listeners:
            listener(record)

    # -- reading ---------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        now = int(time.time())
        with self._lock:
            seconds = list(self._seconds)
            inspected, rejected = self.inspected, self.rejected
            latencies = [float(r.doc.get("latency_ms", 0.0)) for r in self.history]
            if self.latest is not None:
                latencies.append(float(self.latest.doc.get("latency_ms", 0.0)))

        def rate(span: int) -> dict[str, Any]:
            n = sum(s[1] for s in seconds if s[0] > now - span)
            bad = sum(s[2] for s in seconds if s[0] > now - span)
            return {"inspected": n, "rejected": bad, "rate": bad / n if n else None}

        p50, p99 = (float(np.percentile(latencies, q)) for q in (50, 99)) if latencies else (None, None)
        return {"inspected": inspected, "rejected": rejected, "last_minute": rate(60), "last_hour": rate(3600),
                "latency_ms": {"p50": p50, "p99": p99, "n": len(latencies)}}

    def find(self, record_id: int) -> FrameRecord | None:
        """A frame whose image is still kept: the latest, one a browser was shown, or a reject."""
        with self._lock:
            if self.latest is not None and self.latest.id == record_id:
                return self.latest
            if record_id in self.shown:
                return self.shown[record_id]
            return next((r for r in self.rejects if r.id == record_id), None)

    def reject_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.summary() for r in reversed(self.rejects)]

    # -- pictures ------------------------------------------------------------------------
    def live_picture(self) -> tuple[FrameRecord, bytes] | None:
        """The latest frame drawn (downscaled JPEG), redrawn at most ``max_render_fps`` times a second."""
        with self._render_lock:
            with self._lock:
                latest = self.latest
            if latest is None or latest.image is None:
                return None
            cached = self._rendered
            if cached is not None and (cached[0] == latest.id or time.monotonic() - cached[1] < self.min_render_gap):
                record = self.find(cached[0])
                if record is not None:
                    return record, cached[2]
            jpeg = self.draw(latest, self.render_width)
            self._rendered = (latest.id, time.monotonic(), jpeg)
            with self._lock:  # the frame on screen stays markable a while
                self.shown[latest.id] = latest
                while len(self.shown) > self.shown_max:
                    self.shown.popitem(last=False)
            return latest, jpeg

    def draw(self, record: FrameRecord, width: int | None) -> bytes:
        """``record`` with its verdict, score, threshold (and heat map) drawn, as JPEG; ``width`` None: full size."""
        import cv2

        from edgetl.annotate import annotate

        image = record.image
        if image is None:
            raise LookupError(f"frame {record.id} is no longer kept")
        h, w = image.shape[:2]
        if width and w > width:  # downscale first: the overlay and the heat map are drawn on the small copy
            image = cv2.resize(image, (width, max(1, round(h * width / w))), interpolation=cv2.INTER_AREA)
        amap = record.amap
        if amap is not None:
            small = np.asarray(amap, dtype=np.float32)
            while small.ndim > 2:
                small = small[0]
            if small.shape[1] > image.shape[1]:
                small = cv2.resize(small, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_AREA)
            amap = small
        picture = annotate(image, record.doc, amap)
        ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise RuntimeError("OpenCV could not encode the picture as JPEG")
        return jpeg.tobytes()

    # -- the threshold preview ---------------------------------------------------------------
    def preview(self, threshold: float, model: Any) -> dict[str, Any]:
        """How many of the kept results would change decision under ``threshold`` (same rule as the model)."""
        with self._lock:
            records = list(self.history) + ([self.latest] if self.latest is not None else [])
        records = [r for r in records if r.doc.get("model") == model.name]
        labels = list(model.labels)
        current = model.threshold
        if model.task == "anomaly":
            names = labels if len(labels) == 2 else ["good", "anomaly"]
            outputs = np.array([float(r.doc.get("anomaly_score", 0.0)) for r in records], dtype=np.float64)
            hi, _ = score_classes(names, model.positive)
            positive_index_ = hi
        else:
            names = labels
            positive_index_ = positive_index(labels, model.positive)
            if positive_index_ is None or current is None:
                raise ValueError("this model decides by argmax (no threshold to move)")
            outputs = np.array([[float(r.doc["scores"].get(n, 0.0)) for n in labels] for r in records],
                               dtype=np.float64).reshape(len(records), len(labels))
        if not records:
            return {"threshold": threshold, "current": current, "n": 0, "flips": 0, "to_reject": 0, "to_accept": 0,
                    "rejected_now": 0, "rejected_then": 0}
        now = decide(outputs, names, current, model.positive) == positive_index_
        then = decide(outputs, names, threshold, model.positive) == positive_index_
        return {"threshold": threshold, "current": current, "n": len(records), "flips": int((now != then).sum()),
                "to_reject": int((then & ~now).sum()), "to_accept": int((now & ~then).sum()),
                "rejected_now": int(now.sum()), "rejected_then": int(then.sum())}
