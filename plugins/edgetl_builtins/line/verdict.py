"""What a PLC needs from a result document: the verdict, the frame id, and the sink's running counters.

A part is rejected when its label is one of ``reject_labels``; when a sink
names none, every label except ``accept_labels`` (default ``good``, ``ok``,
``normal``, ``pass``) rejects, so a new defect class is never waved through.
"""

from __future__ import annotations

import threading
from typing import Any

from edgetl.errors import ConfigError

DEFAULT_ACCEPT = ("good", "ok", "normal", "pass")


class Verdicts:
    """The reject rule of one sink and its counters (inspected, rejected, errors)."""

    def __init__(self, options: dict[str, Any], sink: str):
        reject, accept = options.get("reject_labels"), options.get("accept_labels")
        for key, value in (("reject_labels", reject), ("accept_labels", accept)):
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"sink '{sink}' option {key}: expected a list of labels (got {value!r})")
        self.reject = set(reject) if reject is not None else None
        self.accept = set(accept) if accept is not None else set(DEFAULT_ACCEPT)
        self.inspected = self.rejected = self.errors = 0
        self._lock = threading.Lock()

    def judge(self, result: dict[str, Any]) -> dict[str, Any]:
        """Count ``result`` and return the facts a PLC reads (label, score, reject, frame ids, times)."""
        label = str(result.get("label", ""))
        rejected = label in self.reject if self.reject is not None else label not in self.accept
        scores = result.get("scores") or {}
        score = result.get("anomaly_score", scores.get(label, 0.0))
        with self._lock:
            self.inspected += 1
            self.rejected += int(rejected)
            counts = {"inspected": self.inspected, "rejected": self.rejected, "errors": self.errors}
        frame_id = result.get("camera_frame_id", result.get("frame", 0))
        return {"label": label, "score": float(score or 0.0), "reject": rejected,
                "decision": "reject" if rejected else "accept", "frame_id": int(frame_id or 0),
                "device_timestamp_ns": int(result.get("device_timestamp_ns") or 0),
                "host_received": float(result.get("host_received") or result.get("timestamp") or 0.0),
                **counts}

    def error(self) -> None:
        with self._lock:
            self.errors += 1


def read_users(path: Any, sink: str, option: str = "users_file") -> dict[str, str]:
    """``user:password`` lines (``#`` comments) from ``path``; one-line ConfigError when unusable."""
    from pathlib import Path

    if not path:
        return {}
    file = Path(str(path))
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"sink '{sink}' option {option}: cannot read {file} ({exc.strerror or exc})") from None
    users = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            raise ConfigError(f"sink '{sink}' option {option}: {file} line {number}: expected user:password")
        users[user] = password
    if not users:
        raise ConfigError(f"sink '{sink}' option {option}: {file} holds no user:password line")
    return users


def read_secret(path: Any, sink: str, option: str) -> str:
    """The first line of a password file (kept out of the pipeline config itself)."""
    from pathlib import Path

    try:
        return Path(str(path)).read_text(encoding="utf-8").splitlines()[0].strip()
    except (OSError, IndexError) as exc:
        raise ConfigError(f"sink '{sink}' option {option}: cannot read a password from {path} ({exc})") from None
