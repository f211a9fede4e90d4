"""The install journal: an append-only JSON-lines file, fsync'ed per record.

Every install writes ``begin`` before a stage and ``ok``/``failed`` after
it, so after a crash or ``kill -9`` the agent knows which install was half
done and at which stage. The upload record and the outcome are fsync'ed; the
per-stage progress records are not (a power cut may lose them, which only
makes the recovered status name an earlier stage: recovery itself asks the
pointer). The pointer (``current.json``) says whether the
switch happened; recovery needs nothing else (see :mod:`edgetl.device.install`).
Threshold changes and rollbacks are journaled too, for the audit trail.

The journal is bounded: past :data:`MAX_BYTES` the file becomes ``journal.jsonl.1``
(replacing the one before) and a new one starts, so it takes at most twice that on
disk; records are read from both, oldest first.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

TERMINAL = ("installed", "failed")
MAX_BYTES = 4 * 1024 * 1024


class Journal:
    """Append records; read back the last state of every install."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES):
        self.path, self.max_bytes = path, max_bytes
        self.rotated = path.with_name(path.name + ".1")
        self._lock = threading.Lock()

    def append(self, durable: bool = True, **record: Any) -> dict[str, Any]:
        """Append one record; ``durable=False`` skips the fsync (the record survives a kill -9, which
        keeps the page cache, but maybe not a power cut): for progress records recovery does not need."""
        record = {"time": time.time(), **record}
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock:
            try:
                if self.path.stat().st_size + len(line) > self.max_bytes:
                    os.replace(self.path, self.rotated)
            except FileNotFoundError:
                pass
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                if durable:
                    os.fsync(out.fileno())
        return record

    def records(self) -> list[dict[str, Any]]:
        """Every complete record; a torn last line (crash mid-write) is ignored."""
        lines = []
        for path in (self.rotated, self.path):
            try:
                lines += path.read_text(encoding="utf-8").splitlines()
            except FileNotFoundError:
                pass
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def installs(self) -> dict[str, list[dict[str, Any]]]:
        """install id -> its records, in order."""
        table: dict[str, list[dict[str, Any]]] = {}
        for record in self.records():
            if record.get("install_id") and record.get("event") == "install":
                table.setdefault(record["install_id"], []).append(record)
        return table

    def unfinished(self) -> dict[str, list[dict[str, Any]]]:
        """Installs whose last record is not terminal: interrupted by a crash."""
        return {iid: recs for iid, recs in self.installs().items()
                if recs[-1].get("status") not in TERMINAL}
