"""A made dataset remembers how it was made, so making it again reuses it (the tour reruns as written).

``edgetl data textures DIR`` and ``edgetl data elpv DIR`` write
``DIR/.edgetl-dataset.json`` (the generator, its settings and the counts per
split and class) as their last step before the folder appears. Asked again
for the same folder with the same settings, they check the image counts on
disk against it and keep the folder; with other settings, or for a folder
they did not make, they refuse with one line saying how to replace it. A
dataset is never changed in place (a run trained on it would silently mean
something else).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetl.errors import DataError

STAMP = ".edgetl-dataset.json"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def write_stamp(folder: Path, kind: str, settings: dict[str, Any], counts: dict[str, dict[str, int]]) -> None:
    (folder / STAMP).write_text(json.dumps({"kind": kind, "settings": settings, "counts": counts}, indent=2) + "\n",
                                encoding="utf-8")


def existing(out: Path, kind: str, settings: dict[str, Any]) -> dict[str, dict[str, int]] | None:
    """The counts of the identical dataset already in ``out``; None when ``out`` is missing or empty.

    Raises:
        DataError: ``out`` holds something else (other settings, files edgetl did not write, missing images).
    """
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return None
    replace = f"remove it (rm -r {out}) to make it again, or choose another folder"
    try:
        stamp = json.loads((out / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise DataError(f"{out}: already exists and is not empty (not a dataset made by 'edgetl data'); "
                        f"{replace}") from None
    if stamp.get("kind") != kind or stamp.get("settings") != settings:
        differ = {k: v for k, v in (stamp.get("settings") or {}).items() if settings.get(k) != v}
        raise DataError(f"{out}: already exists and is not empty: a {stamp.get('kind')} set made with "
                        f"{', '.join(f'{k}={v}' for k, v in differ.items()) or 'other settings'}; {replace}")
    counts = stamp["counts"]
    roots = sorted(p for p in out.glob("fold-*") if p.is_dir()) or [out]  # --folds: counts summed over folds
    for split, row in counts.items():
        for label, n in row.items():
            have = sum(1 for root in roots for p in (root / split / label).glob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES)
            if have != n:
                raise DataError(f"{out}/{split}/{label}: {have} images, {n} when it was made (changed since); "
                                f"{replace}")
    return counts
