"""The agent's state directory: one place for everything that must survive a restart.

Layout::

    STATE/
      current.json     {"current": ID | null, "previous": ID | null}: THE pointer.
                       Replaced by rename, so a crash leaves the old or the new
                       pointer, never a torn one.
      models/ID/       an installed bundle, extracted (ID = its install id)
      staging/ID/      an install in progress (deleted on failure or recovery)
      uploads/ID.edgetl the uploaded bundle until its install ends
      journal.jsonl    the install journal (see journal.py)
      threshold.json   an operating threshold set through the API, for one model
      pipeline.json    the last pipeline config and whether it was running
      engines/         runtime caches (TensorRT engines, keyed by the target)
      capture/         the line page's capture store (edgetl.device.capture)
      quarantine/      damaged state files, set aside (never deleted) by :func:`recover_pointer`

Pipeline sources and sinks may never use a path in here, whatever ``--data-root`` says
(:func:`edgetl.device.pipeline.confine_path`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgetl.errors import ConfigError
from edgetl.manifest import Manifest, validate_manifest

log = logging.getLogger("edgetl.agent.state")


def atomic_write_json(path: Path, document: Any) -> None:
    """Write ``document`` to ``path`` through a temp file, fsync and ``os.replace`` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(document, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(path: Path) -> None:
    """fsync a folder, so the names in it (a rename, a new file) survive a power cut."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def fsync_tree(root: Path, files: list[str]) -> None:
    """fsync ``files`` (relative to ``root``) and every folder under ``root``: an extracted model is
    on disk before the pointer names it."""
    for name in files:
        fd = os.open(root / name, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder, _dirs, _files in os.walk(root):
        fsync_dir(Path(folder))


def read_json(path: Path, default: Any = None) -> Any:
    """Parse a JSON file, or ``default`` when it does not exist."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: unreadable agent state ({exc}); fix or remove the file") from None


def read_manifest(folder: Path) -> Manifest:
    """The validated manifest.json of an extracted bundle: the device reads fields as attributes, not keys."""
    path = Path(folder) / "manifest.json"
    return validate_manifest(json.loads(path.read_text(encoding="utf-8")), source=f"{path.parent.name}/{path.name}")


class StateDir:
    """Paths and the atomic pointer of one agent's state directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        for sub in ("models", "staging", "uploads", "engines"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.pointer_path = self.root / "current.json"
        self.journal_path = self.root / "journal.jsonl"
        self.threshold_path = self.root / "threshold.json"
        self.pipeline_path = self.root / "pipeline.json"

    def model_dir(self, install_id: str) -> Path:
        return self.root / "models" / install_id

    def staging_dir(self, install_id: str) -> Path:
        return self.root / "staging" / install_id

    def upload_path(self, install_id: str) -> Path:
        return self.root / "uploads" / f"{install_id}.edgetl"

    @property
    def engines_dir(self) -> Path:
        return self.root / "engines"

    # -- the pointer ---------------------------------------------------------
    def pointer(self) -> dict[str, str | None]:
        doc = read_json(self.pointer_path, {}) or {}
        return {"current": doc.get("current"), "previous": doc.get("previous")}

    def set_pointer(self, current: str | None, previous: str | None) -> None:
        """Switch models: one rename replaces both ``current`` and ``previous`` at once."""
        atomic_write_json(self.pointer_path, {"current": current, "previous": previous})

    def manifest(self, install_id: str | None) -> dict[str, Any] | None:
        if not install_id:
            return None
        return read_json(self.model_dir(install_id) / "manifest.json")

    def model_manifest(self, install_id: str | None) -> Manifest | None:
        """The validated manifest of an installed model (None without an id or a manifest file);
        :meth:`manifest` is the same document as JSON, as ``/v1/info`` sends it."""
        if not install_id or not (self.model_dir(install_id) / "manifest.json").exists():
            return None
        return read_manifest(self.model_dir(install_id))

    def prune(self, keep: set[str], uploads: bool = False) -> list[str]:
        """Remove models and staging dirs not in ``keep``; with ``uploads`` (at start-up) also every
        upload and the temp files of an atomic write a crash interrupted (``.current.json.*.tmp``)."""
        removed = []
        for tmp in self.root.glob(".*.tmp") if uploads else ():
            tmp.unlink(missing_ok=True)
            removed.append(tmp.name)
        for folder in ("models", "staging"):
            for child in (self.root / folder).iterdir():
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(f"{folder}/{child.name}")
        for upload in (self.root / "uploads").iterdir() if uploads else ():
            upload.unlink(missing_ok=True)
            removed.append(f"uploads/{upload.name}")
        return removed


def _pointer_problem(path: Path, models: list[str]) -> str | None:
    """Why the pointer file cannot be trusted, or None when it is fine (or absent with no models)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "missing while models are installed" if models else None
    except (OSError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if not isinstance(doc, dict) or any(not (doc.get(k) is None or isinstance(doc.get(k), str))
                                        for k in ("current", "previous")):
        return "not a {current, previous} object"
    return None


def pointer_from_journal(records: list[dict[str, Any]], models: set[str]) -> tuple[str | None, str | None]:
    """(current, previous) replayed from the journal's installs and rollbacks, kept only where the
    model is on disk; with no usable history, the two newest models (install ids sort by time)."""
    current = previous = None
    for record in records:
        event = record.get("event")
        if event == "install" and record.get("status") == "installed":
            switch = (record.get("report") or {}).get("switch") or {}
            if not switch.get("unchanged") and record.get("install_id") != current:
                current, previous = record.get("install_id"), current
        elif event == "rollback":
            if record.get("to") is not None:
                current, previous = record.get("to"), record.get("from")
            else:
                current, previous = previous, current
    current = current if current in models else None
    previous = previous if previous in models and previous != current else None
    if current is None:
        newest = sorted(models, reverse=True)
        current, previous = (newest + [None, None])[:2]
    return current, previous


def recover_pointer(state: StateDir, journal: Any) -> dict[str, Any] | None:
    """A damaged or missing ``current.json`` while models are installed: move it to ``quarantine/``
    (never delete it, nor any model), rebuild the pointer from the journal, journal what was done.

    Without this, a corrupt pointer stopped the agent, and removing the file made the next start
    prune every installed model. Returns the journaled record, or None when the pointer was fine.
    """
    models_dir = state.root / "models"
    models = sorted(p.name for p in models_dir.iterdir() if p.is_dir())
    problem = _pointer_problem(state.pointer_path, models)
    if problem is None:
        return None
    kept = None
    if state.pointer_path.exists():
        quarantine = state.root / "quarantine"
        quarantine.mkdir(exist_ok=True)
        kept = quarantine / f"current.json.{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}.{os.getpid()}"
        os.replace(state.pointer_path, kept)
    current, previous = pointer_from_journal(journal.records(), set(models))
    state.set_pointer(current, previous)
    record = journal.append(event="pointer_recovered", problem=problem, current=current, previous=previous,
                            quarantined=f"quarantine/{kept.name}" if kept else None)
    log.error("the pointer current.json was %s: rebuilt from the journal (current %s, previous %s)%s", problem,
              current, previous, f"; the damaged file is kept as {kept}" if kept else "")
    return record
