"""Labelled image lists from an ImageFolder or a CSV manifest, with one clear error per problem.

An ImageFolder has one sub-folder per class (``train/good/…``, ``train/defect/…``);
an anomaly training set may have only ``good/`` (``allow_single_class``). A CSV
manifest has a header with ``path`` (or ``file``), ``label`` and optionally
``split``; relative paths are relative to the CSV's folder. Class indices are
the position in ``classes`` (sorted folder or label names unless given), so
train, val and test agree on them.
"""

from __future__ import annotations

import csv
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from edgetl.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


class DataWarning(UserWarning):
    """Data was usable only in part (e.g. ``--skip-bad`` dropped unreadable images)."""


@dataclass
class Sample:
    """One labelled image: ``label`` indexes :attr:`Samples.classes`."""

    path: Path
    label: int


@dataclass
class Samples:
    """A labelled image list and its class names (index order)."""

    items: list[Sample]
    classes: list[str]
    skipped: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order (classes without images count 0)."""
        out = dict.fromkeys(self.classes, 0)
        for s in self.items:
            out[self.classes[s.label]] += 1
        return out

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.items]

    def __len__(self) -> int:
        return len(self.items)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, hidden files skipped)."""
    return sorted(p for p in folder.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _check_classes(found: list[str], where: str, allow_single_class: bool) -> None:
    if len(found) < 2 and not allow_single_class:
        only = f" (only '{found[0]}')" if found else ""
        raise DataError(f"{where}: found {len(found)} class{only}; a classifier needs at least two "
                        "(an anomaly training set may have only good/: use an anomaly strategy)")


def scan_image_folder(root: str | Path, *, classes: list[str] | None = None,
                      allow_single_class: bool = False) -> Samples:
    """Read an ImageFolder: one sub-folder per class, images anywhere below it.

    Args:
        root: the folder holding the class folders.
        classes: the class list to index against (e.g. train's, for val); a
            folder not in it is an error, a class without a folder counts 0.
        allow_single_class: accept a single class (anomaly training sets).

    Raises:
        DataError: missing root, no class folders, an empty class folder, a
            folder not in ``classes``, or a single class when not allowed.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a folder with one sub-folder per class, got a file")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        stray = " (images lie directly in it: move them into class folders)" if list_images(root) else ""
        raise DataError(f"{root}: no class folders, expected one sub-folder per class{stray}")
    if classes is not None:
        unknown = [f for f in folders if f not in classes]
        if unknown:
            raise DataError(f"{root}: class folder '{unknown[0]}' is not in the class list {list(classes)}")
        names = list(classes)
    else:
        names = folders
    _check_classes(folders if classes is None else names, str(root), allow_single_class)
    items: list[Sample] = []
    for name in folders:
        images = list_images(root / name)
        if not images:
            raise DataError(f"{root / name}: empty class folder (no {', '.join(IMAGE_SUFFIXES[:4])}… images)")
        label = names.index(name)
        items.extend(Sample(p, label) for p in images)
    return Samples(items, names)


def read_csv_manifest(path: str | Path, *, split: str | None = None, classes: list[str] | None = None,
                      allow_single_class: bool = False) -> Samples:
    """Read ``path,label[,split]`` rows (``file`` is accepted for ``path``).

    Classes default to the sorted labels of the *whole* manifest, so every
    split of one manifest gets the same indices.

    Raises:
        DataError: missing file or column, an empty selection, a label not in
            ``classes``, or a listed image that does not exist (naming the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
        header = rows[0].keys() if rows else []
    col = "path" if "path" in header else "file" if "file" in header else None
    if col is None or "label" not in header:
        raise DataError(f"{path}: expected a header with columns path (or file), label[, split]; "
                        f"got {', '.join(header) or 'no rows'}")
    if split is not None and "split" not in header:
        raise DataError(f"{path}: split '{split}' asked for, but the manifest has no 'split' column")
    names = list(classes) if classes is not None else sorted({r["label"] for r in rows})
    _check_classes(names, str(path), allow_single_class)
    items: list[Sample] = []
    for line, row in enumerate(rows, start=2):
        if split is not None and row["split"] != split:
            continue
        if row["label"] not in names:
            raise DataError(f"{path}:{line}: label '{row['label']}' is not in the class list {names}")
        image = Path(row[col])
        image = image if image.is_absolute() else path.parent / image
        if not image.is_file():
            raise DataError(f"{path}:{line}: image {image} does not exist")
        items.append(Sample(image, names.index(row["label"])))
    if not items:
        raise DataError(f"{path}: no images" + (f" in split '{split}'" if split else ""))
    return Samples(items, names)


def load_split(path: str | Path, *, classes: list[str] | None = None, split: str | None = None,
               allow_single_class: bool = False) -> Samples:
    """An ImageFolder or a ``.csv`` manifest; for a folder, ``split`` picks ``path/split`` if present."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return read_csv_manifest(path, split=split, classes=classes, allow_single_class=allow_single_class)
    if split is not None and (path / split).is_dir():
        path = path / split
    return scan_image_folder(path, classes=classes, allow_single_class=allow_single_class)


def not_a_label_error(root: str | Path, folder: str, labels: list[str], model: str = "the model") -> DataError:
    """The error for a class folder that is not a model label, pointing at the split folder when
    ``root`` is a split root (``data/elpv`` holding ``train/ val/ test/``, each with the class folders)."""
    root = Path(root)
    splits = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in labels
                    and any((p / label).is_dir() for label in labels)) if root.is_dir() else []
    hint = ""
    if splits:
        best = "test" if "test" in splits else splits[0]
        hint = (f"; {root} looks like a split root: give one split, e.g. {root / best}"
                + (f" (splits here: {', '.join(splits)})" if len(splits) > 1 else ""))
    return DataError(f"{root}: class folder '{folder}' is not a label of {model} {list(labels)}{hint}")


def _bad_reason(path: Path) -> str | None:
    from edgetl.preprocess import read_image

    try:
        read_image(path)
    except DataError as exc:
        return str(exc)
    return None


def check_images(samples: Samples, *, skip_bad: bool, workers: int = 4) -> Samples:
    """Decode every image once (OpenCV, in threads); a bad one is an error unless ``skip_bad``.

    Returns:
        ``samples`` unchanged when all decode; with ``skip_bad``, a copy without
        the bad ones (listed in ``skipped``) and one :class:`DataWarning` with the count.

    Raises:
        DataError: the first unreadable, empty or corrupt file (named), or a
            class left empty after skipping.
    """
    with ThreadPoolExecutor(max_workers=workers) as pool:
        reasons = list(pool.map(_bad_reason, [s.path for s in samples.items]))
    bad = [(s, r) for s, r in zip(samples.items, reasons, strict=False) if r is not None]
    if not bad:
        return samples
    if not skip_bad:
        more = f" (+{len(bad) - 1} more bad images; --skip-bad skips them)" if len(bad) > 1 else \
            " (--skip-bad skips bad images)"
        raise DataError(bad[0][1] + more)
    names = ", ".join(str(s.path) for s, _ in bad[:5]) + (" …" if len(bad) > 5 else "")
    warnings.warn(DataWarning(f"skipped {len(bad)} unreadable image(s): {names}"), stacklevel=2)
    dropped = {id(s) for s, _ in bad}
    kept = Samples([s for s in samples.items if id(s) not in dropped], list(samples.classes),
                   skipped=[s.path for s, _ in bad])
    emptied = [c for c, n in kept.counts().items() if n == 0 and samples.counts()[c] > 0]
    if emptied:
        raise DataError(f"class '{emptied[0]}' has no readable images left after skipping bad ones")
    return kept
