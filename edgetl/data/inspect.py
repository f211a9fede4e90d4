"""Look at a dataset before training on it: counts, sizes, corrupt files, imbalance, a contact sheet.

Accepts a split root (``DIR/train``, ``DIR/val``, ``DIR/test``, each an
ImageFolder — what the ``data`` commands write) or a plain ImageFolder. Every
image is decoded once (OpenCV, in threads), so a corrupt file is named here
rather than halfway through training.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.data.folder import Samples, scan_image_folder
from edgetl.errors import DataError

SPLITS = ("train", "val", "test")
IMBALANCE_RATIO = 3.0


def find_splits(root: Path) -> dict[str, Path]:
    """``{split: folder}`` for a split root; ``{"all": root}`` for a plain ImageFolder."""
    if not root.is_dir():
        raise DataError(f"{root}: folder not found" if not root.exists() else f"{root}: not a folder")
    present = {s: root / s for s in SPLITS if (root / s).is_dir()}
    return present or {"all": root}


def _probe(path: Path) -> tuple[str | None, tuple[int, int] | None]:
    """(error, (width, height)) of one image."""
    from edgetl.preprocess import read_image

    try:
        image = read_image(path)
    except DataError as exc:
        return str(exc), None
    return None, (image.shape[1], image.shape[0])


def inspect_dataset(root: str | Path, *, sheet: str | Path | None = None, per_class: int = 8,
                    workers: int = 4) -> dict[str, Any]:
    """Describe the dataset at ``root``; write a contact sheet PNG to ``sheet`` if given.

    Returns:
        ``{root, layout: splits|folder, classes, splits: {split: {counts, n}},
        image_sizes: {"WxH": n}, corrupt: [{path, error}], warnings: [..], sheet}``.
    """
    root = Path(root)
    found = find_splits(root)
    scanned: dict[str, Samples] = {}
    classes: list[str] = []
    for split, folder in found.items():
        samples = scan_image_folder(folder, allow_single_class=True)
        scanned[split] = samples
        classes += [c for c in samples.classes if c not in classes]
    everything = [s.path for samples in scanned.values() for s in samples.items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        probes = list(pool.map(_probe, everything))
    sizes = Counter(f"{wh[0]}x{wh[1]}" for _, wh in probes if wh)
    corrupt = [{"path": str(p), "error": err} for p, (err, _) in zip(everything, probes, strict=False) if err]
    doc: dict[str, Any] = {
        "root": str(root), "layout": "folder" if "all" in found else "splits", "classes": classes,
        "splits": {}, "n": len(everything), "image_sizes": dict(sizes.most_common()),
        "corrupt": corrupt, "warnings": [], "sheet": None,
    }
    for split, samples in scanned.items():
        counts = {c: samples.counts().get(c, 0) for c in classes}
        doc["splits"][split] = {"counts": counts, "n": len(samples)}
        doc["warnings"] += _balance_warnings(split, counts)
    if len(classes) == 1:
        doc["warnings"].append(f"only one class ('{classes[0]}'): usable for anomaly detection, "
                               "not for a classifier")
    if corrupt:
        doc["warnings"].append(f"{len(corrupt)} corrupt or unreadable image(s); "
                               "remove them or train with --skip-bad")
    if len(sizes) > 1:
        doc["warnings"].append(f"{len(sizes)} different image sizes: every image is brought to the "
                               "backbone's input size by the resize mode")
    if sheet is not None:
        bad = {c["path"] for c in corrupt}
        first = scanned.get("train") or next(iter(scanned.values()))
        doc["sheet"] = str(contact_sheet(first, Path(sheet), per_class=per_class, skip=bad))
    return doc


def _balance_warnings(split: str, counts: dict[str, int]) -> list[str]:
    out = [f"{split}: class '{c}' has no images" for c, n in counts.items() if n == 0]
    present = {c: n for c, n in counts.items() if n > 0}
    if len(present) > 1:
        big, small = max(present, key=present.get), min(present, key=present.get)
        ratio = present[big] / present[small]
        if ratio > IMBALANCE_RATIO:
            out.append(f"{split}: imbalanced, {present[big]} '{big}' vs {present[small]} '{small}' "
                       f"({ratio:.1f}:1); consider train.class_weights: balanced")
    return out


def contact_sheet(samples: Samples, out: Path, *, per_class: int = 8, thumb: int = 96,
                  skip: set[str] = frozenset()) -> Path:
    """One row per class of up to ``per_class`` evenly spaced samples (letterboxed thumbnails), as PNG."""
    import cv2

    from edgetl.api import InputSpec
    from edgetl.preprocess import prepare, read_image

    spec = InputSpec(size=(thumb, thumb), mean=(0.2,) * 3, color="BGR", resize="letterbox")
    label_w, gap = 150, 4
    rows = []
    for k, name in enumerate(samples.classes):
        paths = [s.path for s in samples.items if s.label == k and str(s.path) not in skip]
        picks = [paths[int(i)] for i in np.linspace(0, len(paths) - 1, min(per_class, len(paths)))] if paths else []
        row = np.full((thumb + 2 * gap, label_w + per_class * (thumb + gap) + gap, 3), 255, np.uint8)
        cv2.putText(row, f"{name} ({len(paths)})", (6, thumb // 2 + gap + 5), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for j, path in enumerate(picks):
            x = label_w + j * (thumb + gap)
            row[gap:gap + thumb, x:x + thumb] = prepare(read_image(path), spec)[0]
        rows.append(row)
    if not rows:
        raise DataError(f"{out}: no classes to draw")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), np.vstack(rows)):
        raise DataError(f"{out}: cannot write the contact sheet (expected a .png path in a writable folder)")
    return out


def format_report(doc: dict[str, Any]) -> str:
    """The human-readable summary ``edgetl data inspect`` prints."""
    classes = doc["classes"]
    width = max([len(c) for c in classes] + [5]) + 2
    lines = [f"{doc['root']}: {doc['n']} images, {len(classes)} classes ({doc['layout']})",
             "split".ljust(8) + "".join(c.rjust(width) for c in classes) + "total".rjust(8)]
    for split, info in doc["splits"].items():
        lines.append(split.ljust(8) + "".join(str(info["counts"][c]).rjust(width) for c in classes)
                     + str(info["n"]).rjust(8))
    sizes = ", ".join(f"{k} ({v})" for k, v in list(doc["image_sizes"].items())[:5])
    lines.append(f"image sizes: {sizes or '-'}")
    lines.append(f"corrupt: {len(doc['corrupt'])}")
    lines += [f"  {c['error']}" for c in doc["corrupt"][:20]]
    lines += [f"warning: {w}" for w in doc["warnings"]]
    if doc["sheet"]:
        lines.append(f"contact sheet: {doc['sheet']}")
    return "\n".join(lines)
