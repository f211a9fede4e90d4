"""The device's capture store: frames an engineer marked, and a sample of close calls, for retraining.

Layout (under the agent's state directory, so it stays inside its confinement)::

    STATE/capture/<id>.png    the raw frame, as the camera gave it (lossless)
    STATE/capture/<id>.json   {id, time, frame, source, reason, mark, label, result, margin}

``<id>`` is ``<UTC time>-<microseconds>``: the names sort oldest first. A capture
is written PNG first, then its sidecar through a temp file and a rename, so a
capture without its sidecar is never listed (and is removed at the next
start). The store is bounded: past ``max_bytes`` the oldest *unmarked*
captures go first, then the oldest marked ones; a write that would leave
less than ``min_free_bytes`` free on the disk is skipped (counted, logged
once), so the store never fills the disk. Marks persist across restarts: they
are files.

Which frames are sampled: a frame whose decision was within ``margin`` of
flipping (:func:`edgetl.device.live.margin`), at most one every
``sample_every_s`` seconds. The sampling writes in a short-lived thread of its
own (a queue of a few frames; a frame arriving while it is full is not
sampled), never in the pipeline's thread.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError

log = logging.getLogger("edgetl.agent.capture")
MARKS = ("false_reject", "missed_defect", "label")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a class folder name, nothing else
ID_RE = re.compile(r"^\d{8}T\d{6}-\d{6}$")
MIB = 1024 * 1024


def check_label(label: Any) -> str:
    """A class name usable as a folder name (letters, digits, ``_ . -``; at most 64), or ConfigError."""
    if not isinstance(label, str) or not LABEL_RE.match(label):
        raise ConfigError(f"label: expected a class name of letters, digits, '_', '.', '-' (at most 64), "
                          f"got {label!r}")
    return label


class CaptureStore:
    """Marked and low-margin frames on the device's disk (see the module docstring).

    Args:
        root: the folder (``STATE/capture``).
        max_bytes: the store's quota [``edgetl agent serve --capture-mb``].
        min_free_bytes: never write when the disk would keep less than this free.
        margin: a frame this close to its decision boundary is a close call (0 turns sampling off).
        sample_every_s: at most one close call is sampled per this many seconds.
    """

    def __init__(self, root: str | Path, max_bytes: int = 256 * MIB, min_free_bytes: int = 512 * MIB,
                 margin: float = 0.05, sample_every_s: float = 10.0):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes, self.min_free_bytes = max_bytes, min_free_bytes
        self.margin, self.sample_every_s = margin, sample_every_s
        self.stats = {"written": 0, "dropped_quota": 0, "skipped_disk": 0, "skipped_busy": 0}
        self._lock = threading.Lock()
        self._last_id = ""
        self._last_sample: float | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=4)
        self._writer: threading.Thread | None = None
        self._warned_disk = False
        self._clean_orphans()

    # -- writing --------------------------------------------------------------------------
    def _new_id(self, when: float) -> str:
        """``<UTC second>-<microseconds>``; the next free microsecond if taken (ids sort by time)."""
        micro = int(when * 1e6)
        with self._lock:
            while True:
                capture_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime(micro // 1_000_000)) + f"-{micro % 1_000_000:06d}"
                if not (self.root / f"{capture_id}.json").exists() and capture_id != self._last_id:
                    self._last_id = capture_id
                    return capture_id
                micro += 1

    def add(self, record: Any, reason: str, mark: str | None = None, label: str | None = None,
            positive: str | None = None) -> dict[str, Any] | None:
        """Store one frame (a :class:`edgetl.device.live.FrameRecord` with its image); its sidecar, or None
        when the disk is too full."""
        import cv2

        from edgetl.device.live import margin

        ok, png = cv2.imencode(".png", record.image)
        if not ok:
            raise RuntimeError("OpenCV could not encode the frame as PNG")
        data = png.tobytes()
        if not self._room_for(len(data)):
            return None
        capture_id = self._new_id(record.time)
        sidecar = {"id": capture_id, "time": record.time, "frame": record.frame, "source": record.source,
                   "feed_id": record.id, "reason": reason, "mark": mark, "label": label,
                   "result": record.doc, "margin": margin(record.doc, positive)}
        (self.root / f"{capture_id}.png").write_bytes(data)
        self._write_sidecar(sidecar)
        self.stats["written"] += 1
        self.enforce_quota()
        return sidecar

    def _write_sidecar(self, sidecar: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(sidecar, out, sort_keys=True)
            os.replace(tmp, self.root / f"{sidecar['id']}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _room_for(self, size: int) -> bool:
        free = shutil.disk_usage(self.root).free
        if free - size >= self.min_free_bytes:
            self._warned_disk = False
            return True
        self.stats["skipped_disk"] += 1
        if not self._warned_disk:
            log.warning("capture store: not writing, the disk would keep less than %d MiB free (%d MiB free)",
                        self.min_free_bytes // MIB, free // MIB)
            self._warned_disk = True
        return False

    def mark(self, record: Any, mark: str, label: str | None, positive: str | None = None) -> dict[str, Any] | None:
        """Mark a frame (stored now if the sampler did not keep it already); the capture's sidecar."""
        if mark not in MARKS:
            raise ConfigError(f"mark: expected one of {', '.join(MARKS)}, got {mark!r}")
        if label is not None:
            check_label(label)
        existing = next((c for c in self.list() if c.get("feed_id") == record.id
                         and abs(float(c.get("time", 0)) - record.time) < 1e-6), None)
        if existing is not None:
            existing.update(mark=mark, label=label)
            self._write_sidecar(existing)
            return existing
        return self.add(record, "marked", mark=mark, label=label, positive=positive)

    def enforce_quota(self) -> None:
        """Drop the oldest unmarked captures, then the oldest marked ones, until under ``max_bytes``."""
        with self._lock:
            entries = []
            for sidecar in sorted(self.root.glob("*.json")):
                png = sidecar.with_suffix(".png")
                try:
                    size = sidecar.stat().st_size + (png.stat().st_size if png.exists() else 0)
                    marked = bool(json.loads(sidecar.read_text(encoding="utf-8")).get("mark"))
                except (OSError, ValueError):
                    continue
                entries.append((marked, sidecar.stem, size))
            total = sum(size for _, _, size in entries)
            for _, stem, size in sorted(entries, key=lambda e: (e[0], e[1])):  # unmarked first, oldest first
                if total <= self.max_bytes:
                    break
                self._delete(stem)
                total -= size
                self.stats["dropped_quota"] += 1

    def _delete(self, stem: str) -> None:
        (self.root / f"{stem}.json").unlink(missing_ok=True)
        (self.root / f"{stem}.png").unlink(missing_ok=True)

    def _clean_orphans(self) -> None:
        """A PNG without its sidecar (a crash between the two writes) and temp files are removed."""
        for tmp in self.root.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        for png in self.root.glob("*.png"):
            if not png.with_suffix(".json").exists():
                png.unlink(missing_ok=True)

    # -- sampling close calls (a LiveFeed listener) -------------------------------------------
    def sample(self, record: Any, positive: str | None = None) -> None:
        """Queue ``record`` if it is a close call and none was sampled for ``sample_every_s``."""
        from edgetl.device.live import margin

        if self.margin <= 0 or record.image is None:
            return
        now = time.monotonic()
        if self._last_sample is not None and now - self._last_sample < self.sample_every_s:
            return
        m = margin(record.doc, positive)
        if m is None or m > self.margin:
            return
        try:
            self._queue.put_nowait((record, positive))
        except queue.Full:
            self.stats["skipped_busy"] += 1
            return
        self._last_sample = now
        with self._lock:
            if self._writer is None or not self._writer.is_alive():
                self._writer = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
                self._writer.start()

    def _write_loop(self) -> None:
        """Write queued samples; end after two idle seconds (no thread is left behind an idle store)."""
        while True:
            try:
                record, positive = self._queue.get(timeout=2.0)
            except queue.Empty:
                return
            try:
                self.add(record, "low_margin", positive=positive)
            except Exception as exc:  # a failed sample must not take anything else down
                log.warning("capture store: sample not written (%s)", exc)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until queued samples are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while (not self._queue.empty()) and time.monotonic() < deadline:
            time.sleep(0.02)

    # -- reading ------------------------------------------------------------------------------
    def list(self) -> list[dict[str, Any]]:
        """Every capture's sidecar, oldest first."""
        out = []
        for sidecar in sorted(self.root.glob("*.json")):
            try:
                out.append(json.loads(sidecar.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return out

    def get(self, capture_id: str) -> dict[str, Any] | None:
        if not ID_RE.match(capture_id or ""):
            return None
        try:
            return json.loads((self.root / f"{capture_id}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def image_path(self, capture_id: str) -> Path | None:
        """The PNG of one capture, or None (an id that is not one, never a path outside the store)."""
        if not ID_RE.match(capture_id or ""):
            return None
        path = self.root / f"{capture_id}.png"
        return path if path.is_file() else None

    def usage(self) -> dict[str, Any]:
        files = list(self.root.glob("*.json")) + list(self.root.glob("*.png"))
        used = sum(p.stat().st_size for p in files if p.exists())
        return {"captures": len(list(self.root.glob("*.json"))), "bytes": used, "max_bytes": self.max_bytes,
                "min_free_bytes": self.min_free_bytes, **self.stats}
