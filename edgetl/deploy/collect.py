"""``edgetl collect``: the device's capture store back into a training folder (httpx, no torch).

The frames an engineer marked on the line's page, and the close calls the
agent sampled, come down with their metadata into the layout ``edgetl train``
and ``edgetl data inspect`` read::

    OUT/train/<class>/<capture id>.png   frames with a label (from their mark)
    OUT/unlabelled/<capture id>.png      frames nobody labelled yet (sort them into train/<class>/)
    OUT/captures.jsonl                   one line per capture: id, time, frame, source, reason,
                                         mark, label, the device's prediction, margin, file

Collecting again adds what is new and moves a frame whose mark changed; a
file is written through a temp name and a rename, so an interrupted collect
leaves no half image. ``train/`` is a split folder: point a run config's
``data.train`` at it, or copy its class folders into an existing set, then
``edgetl train CONFIG --from RUN``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import DeployError

__all__ = ["CollectResult", "collect"]


LABELLED, UNLABELLED = "train", "unlabelled"


@dataclass
class CollectResult:
    """What one collect did.

    Attributes:
        out: the folder.
        labelled: ``{class: captures}`` now under ``out/train``.
        unlabelled: captures under ``out/unlabelled``.
        downloaded: images fetched by this call (the others were there already).
    """

    out: Path
    labelled: dict[str, int] = field(default_factory=dict)
    unlabelled: int = 0
    downloaded: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "labelled": self.labelled, "unlabelled": self.unlabelled,
                "downloaded": self.downloaded}


def _safe_label(label: Any) -> str | None:
    from edgetl.device.capture import LABEL_RE

    return label if isinstance(label, str) and LABEL_RE.match(label) else None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def collect(device: str, out: str | Path, token: str | None = None, token_file: str | Path | None = None,
            ca: str | Path | None = None) -> CollectResult:
    """Pull the marked and low-margin frames of the agent at ``device`` into ``out``.

    Args:
        device: the agent's URL (``https://cam1:8470``).
        out: the dataset folder (created; see the module docstring for its layout).
        token / token_file: the agent's admin token, or the file holding it.
        ca: the CA certificate of an agent with its own CA.
    """
    from edgetl.deploy.client import DeviceClient
    from edgetl.device.server import read_token

    if token is None:
        if token_file is None:
            raise DeployError("collect: give the agent's token (token=… or token_file=…)")
        token = read_token(token_file)
    out = Path(out)
    result = CollectResult(out=out)
    with DeviceClient(device, token, ca=ca) as client:
        doc = client._request("GET", "/v1/captures")
        lines = []
        for capture in doc.get("captures", []):
            capture_id = str(capture.get("id", ""))
            label = _safe_label(capture.get("label"))
            if not capture_id.replace("T", "").replace("-", "").isdigit():
                raise DeployError(f"{client.name}: capture id {capture_id!r} is not one the agent gives")
            name = f"{capture_id}.png"
            target = out / LABELLED / label / name if label else out / UNLABELLED / name
            stale = [p for p in [*(out / LABELLED).glob(f"*/{name}"), out / UNLABELLED / name]
                     if p != target and p.exists()]
            if not target.exists():
                if stale:  # the mark changed: move what we have
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(stale.pop(0), target)
                else:
                    _write(target, _image(client, capture_id))
                    result.downloaded += 1
            for path in stale:
                path.unlink()
            if label:
                result.labelled[label] = result.labelled.get(label, 0) + 1
            else:
                result.unlabelled += 1
            lines.append({k: capture.get(k) for k in ("id", "time", "frame", "source", "reason", "mark", "label",
                                                      "margin")}
                         | {"predicted": (capture.get("result") or {}).get("label"), "result": capture.get("result"),
                            "file": target.relative_to(out).as_posix()})
    _write(out / "captures.jsonl", "".join(json.dumps(line, sort_keys=True) + "\n" for line in lines).encode())
    return result


def _image(client: Any, capture_id: str) -> bytes:
    import httpx

    try:
        response = client._http.get(f"/v1/captures/{capture_id}/image")
    except httpx.HTTPError as exc:
        raise DeployError(f"{client.name}: GET capture {capture_id} failed ({type(exc).__name__}: {exc})") from None
    if response.status_code != 200 or not response.content.startswith(b"\x89PNG"):
        raise DeployError(f"{client.name}: capture {capture_id}: HTTP {response.status_code}, expected a PNG")
    return response.content
