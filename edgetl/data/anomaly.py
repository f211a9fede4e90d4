"""Anomaly data: good-only training sets, good-vs-anything test sets, optional pixel masks (no torch).

Layout (what ``edgetl data textures`` writes)::

    DATA/train/good/*.png               training: good images only (other class folders
                                        there are left out, said in a warning, as anomalib does)
    DATA/val/good/…, DATA/val/<any>/…   every folder but ``good`` is anomalous
    DATA/masks/val/<class>/<stem>.png   optional 0/255 masks, same stem as the image

A ``.csv`` manifest works too (its ``label`` column, ``good`` or anything
else). Labels are binary: :data:`LABELS` = ``["good", "anomaly"]``; each
sample keeps its original class name in :attr:`AnomalySamples.kinds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgetl.api import InputSpec
from edgetl.data.folder import Sample, Samples, load_split
from edgetl.errors import DataError

GOOD = "good"
LABELS = ["good", "anomaly"]


@dataclass
class AnomalySamples(Samples):
    """Binary samples (0 good, 1 anomaly) plus each image's own class name and mask file (or None)."""

    kinds: list[str] = field(default_factory=list)
    masks: list[Path | None] = field(default_factory=list)


def mask_for(image: Path, split_root: Path, kind: str) -> Path | None:
    """``<split_root>/../masks/<split>/<kind>/<stem>.png`` when it exists."""
    path = split_root.parent / "masks" / split_root.name / kind / (image.stem + ".png")
    return path if path.is_file() else None


def load_anomaly_split(path: str | Path, *, what: str, good_only: bool = False) -> AnomalySamples:
    """Read a split as binary good/anomaly samples.

    ``good_only`` (training): only the ``good`` images are kept; the other classes' are left
    out, with a :class:`DataWarning` saying how many (a folder with ``good/`` and defect
    folders trains as it is, no good-only copy needed).

    Raises:
        DataError: no ``good`` class where one is needed.
    """
    root = Path(path)
    samples = load_split(root, allow_single_class=True)
    names = samples.classes
    if good_only and GOOD in names and names != [GOOD]:
        import warnings

        from edgetl.data.folder import DataWarning

        good = names.index(GOOD)
        left = len(samples.items) - sum(s.label == good for s in samples.items)
        warnings.warn(DataWarning(f"{what}: {root}: trained on its '{GOOD}' images only; {left} image(s) of "
                                  f"{', '.join(n for n in names if n != GOOD)} left out (an anomaly model learns "
                                  "from good images)"), stacklevel=2)
        samples = Samples([Sample(s.path, 0) for s in samples.items if s.label == good], [GOOD])
        names = samples.classes
    if GOOD not in names:
        raise DataError(f"{what}: {root}: no '{GOOD}' class (classes {names}); every class but '{GOOD}' "
                        "counts as anomalous, so good images are needed")
    items = [Sample(s.path, int(names[s.label] != GOOD)) for s in samples.items]
    kinds = [names[s.label] for s in samples.items]
    masks = ([mask_for(Path(s.path), root, k) for s, k in zip(samples.items, kinds, strict=True)]
             if root.is_dir() else [None] * len(items))
    return AnomalySamples(items, list(LABELS), kinds=kinds, masks=masks)


def read_mask(path: Path | None, spec: InputSpec, anomalous: bool) -> np.ndarray | None:
    """A mask as (H, W) bool on the network input's grid (prepared like the image); None if unknown.

    A good image without a mask file is all-good; an anomalous one is unknown.
    """
    from edgetl.preprocess import prepare, read_image

    h, w = spec.size
    if path is None:
        return None if anomalous else np.zeros((h, w), dtype=bool)
    try:
        prepared = prepare(read_image(path), spec)[0]
    except Exception as exc:
        raise DataError(f"{path}: unreadable mask ({exc})") from None
    return prepared.max(axis=2) > 127
