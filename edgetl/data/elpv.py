"""Materialise ELPV (solar-cell electroluminescence images) from the PyPI package ``elpv-dataset``.

2,624 greyscale 300x300 PNG crops of mono- and polycrystalline cells from 44
modules, each with a defect probability 0, 1/3, 2/3 or 1 (1,508 / 295 / 106 /
715). The split is stratified by (class, cell type) and fixed by the seed, so
two runs with one seed write identical folders. The images are copied
byte for byte (lossless PNG).

With ``folds=K`` (:func:`fold_splits`) the cells are dealt into K disjoint
test folds, stratified the same way, and each fold's training part gives up
a stratified val share: ``OUT/fold-<k>/`` is then a complete split root like
the single-split output (one number per fold: train, val, test, manifest.csv,
README.md), so ``edgetl train --set data.train=OUT/fold-<k>/train ...`` runs
a fold. Every test cell is in exactly one fold's test. The images are copied
once (into ``fold-0``) and hard-linked from the other folds.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from edgetl.data.stamp import existing, write_stamp
from edgetl.errors import DataError, MissingDependencyError

LICENSE = "CC BY-NC-SA 4.0 (https://creativecommons.org/licenses/by-nc-sa/4.0/)"
CITATIONS = (
    "Buerhop-Lutz, C.; Deitsch, S.; Maier, A.; Gallwitz, F.; Berger, S.; Doll, B.; Hauch, J.; "
    "Camus, C. & Brabec, C. J. A Benchmark for Visual Identification of Defective Solar Cells in "
    "Electroluminescence Imagery. European PV Solar Energy Conference and Exhibition (EU PVSEC), "
    "2018. DOI: 10.4229/35thEUPVSEC20182018-5CV.3.15",
    "Deitsch, S.; Christlein, V.; Berger, S.; Buerhop-Lutz, C.; Maier, A.; Gallwitz, F. & Riess, C. "
    "Automatic classification of defective photovoltaic module cells in electroluminescence "
    "images. Solar Energy, Elsevier BV, 2019, 185, 455-468. DOI: 10.1016/j.solener.2019.02.067",
)
FOUR = ("p000", "p033", "p067", "p100")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Cell:
    """One ELPV image: ``probability`` of a defect, ``cell_type`` mono|poly, ``source`` its PNG."""

    source: Path
    probability: float
    cell_type: str

    def label(self, classes: str) -> str:
        if classes == "binary":
            return "good" if self.probability < 0.5 else "defect"
        return FOUR[int(round(self.probability * 3))]


def read_cells() -> list[Cell]:
    """Every cell listed in the package's ``labels.csv``, in its order."""
    try:
        root = Path(str(resources.files("elpv_dataset") / "data"))
    except ModuleNotFoundError:
        raise MissingDependencyError("elpv_dataset", "data", "edgetl data elpv") from None
    labels = root / "labels.csv"
    if not labels.is_file():
        raise DataError(f"{labels}: the elpv-dataset package has no labels.csv (reinstall it)")
    cells = []
    for line in labels.read_text().splitlines():
        if line.strip():
            path, prob, kind = line.split()
            cells.append(Cell(root / path, float(prob), kind))
    return cells


def stratified_split(keys: list[tuple], test_size: float, val_size: float, seed: int) -> list[str]:
    """Assign each item a split so every stratum (key) is divided in the same proportions.

    Per stratum (sorted, shuffled by one ``numpy`` generator): ``round(n *
    test_size)`` go to test, then ``round(rest * val_size)`` to val.
    """
    rng = np.random.default_rng(seed)
    out = [""] * len(keys)
    for key in sorted(set(keys)):
        idx = [i for i, k in enumerate(keys) if k == key]
        order = rng.permutation(idx).tolist()
        n_test = int(round(len(order) * test_size))
        n_val = int(round((len(order) - n_test) * val_size))
        for j, i in enumerate(order):
            out[i] = "test" if j < n_test else "val" if j < n_test + n_val else "train"
    return out


def fold_splits(keys: list[tuple], folds: int, val_size: float, seed: int) -> list[list[str]]:
    """K disjoint, stratified test folds; per fold, each item's split (``train``/``val``/``test``).

    Per stratum (sorted, shuffled by one ``numpy`` generator) the items are
    dealt round-robin into the folds, the deal continuing from stratum to
    stratum, so every stratum's count differs by at most one between folds
    and so do the fold sizes. Then, per fold and stratum of the remaining
    items (shuffled), ``round(rest * val_size)`` go to val, the rest to train.

    Returns:
        ``folds`` lists of len(keys) split names; item i is ``test`` in exactly one.
    """
    if folds < 2:
        raise DataError(f"--folds {folds}: expected at least 2")
    rng = np.random.default_rng(seed)
    test_fold = [0] * len(keys)
    dealt = 0
    strata = {key: [i for i, k in enumerate(keys) if k == key] for key in sorted(set(keys))}
    for idx in strata.values():
        for i in rng.permutation(idx).tolist():
            test_fold[i] = dealt % folds
            dealt += 1
    out = []
    for fold in range(folds):
        splits = ["test" if f == fold else "train" for f in test_fold]
        for idx in strata.values():
            rest = rng.permutation([i for i in idx if test_fold[i] != fold]).tolist()
            for i in rest[:int(round(len(rest) * val_size))]:
                splits[i] = "val"
        out.append(splits)
    return out


def materialise_elpv(out: str | Path, *, classes: str = "binary", cell_type: str = "all",
                     test_size: float = 0.25, val_size: float = 0.1, seed: int = 0,
                     limit: int | None = None, folds: int | None = None) -> dict[str, dict[str, int]]:
    """Write ``out/{train,val,test}/<class>/*.png``, ``out/manifest.csv`` and ``out/README.md``.

    Args:
        limit: keep only this many cells (a stratified random subset; tests).
        folds: K: write ``out/fold-<k>/`` (each as above) for K disjoint test
            folds (:func:`fold_splits`) and ``out/README.md``; ``test_size`` is
            then 1/K.

    Returns:
        counts ``{split: {class: n}}``; with ``folds``, summed over the folds
        (test then counts every cell once).

    Raises:
        DataError: ``out`` holds something other than this set made with these settings (that
            one is reused), or an option is out of range.
    """
    if classes not in ("binary", "four"):
        raise DataError(f"--classes {classes!r}: expected binary or four")
    if cell_type not in ("all", "mono", "poly"):
        raise DataError(f"--cell-type {cell_type!r}: expected all, mono or poly")
    if not (0 < test_size < 1 and 0 <= val_size < 1):
        raise DataError(f"--test-size {test_size} / --val-size {val_size}: expected fractions in (0, 1)")
    out = Path(out)
    settings = {"classes": classes, "cell_type": cell_type, "test_size": test_size, "val_size": val_size,
                "seed": seed, "limit": limit, "folds": folds}
    same = existing(out, "elpv", settings)
    if same is not None:  # made before with the same settings: reuse it (docs/data.md)
        return same
    cells = [c for c in read_cells() if cell_type == "all" or c.cell_type == cell_type]
    names = ["good", "defect"] if classes == "binary" else list(FOUR)
    if limit is not None:
        keep = stratified_split([(c.label(classes), c.cell_type) for c in cells],
                                1 - min(1.0, limit / len(cells)) or 1e-9, 0, seed + 1)
        cells = [c for c, s in zip(cells, keep, strict=False) if s == "train"]
    keys = [(c.label(classes), c.cell_type) for c in cells]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if folds is None:
        counts = _write_split(tmp, cells, keys, stratified_split(keys, test_size, val_size, seed), names)
        (tmp / "README.md").write_text(_readme(counts, classes, cell_type, test_size, val_size, seed), "utf-8")
    else:
        per_fold = []
        for k, splits in enumerate(fold_splits(keys, folds, val_size, seed)):
            root = tmp / f"fold-{k}"
            per_fold.append(_write_split(root, cells, keys, splits, names, link_from=tmp / "fold-0" if k else None))
            (root / "README.md").write_text(
                _readme(per_fold[-1], classes, cell_type, 1 / folds, val_size, seed, fold=(k, folds)), "utf-8")
        counts = {s: {n: sum(c[s][n] for c in per_fold) for n in names} for s in SPLITS}
        (tmp / "README.md").write_text(_folds_readme(per_fold, classes, cell_type, val_size, seed), "utf-8")
    write_stamp(tmp, "elpv", settings, counts)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return counts


def _write_split(root: Path, cells: list[Cell], keys: list[tuple], splits: list[str], names: list[str],
                 link_from: Path | None = None) -> dict[str, dict[str, int]]:
    """``root/<split>/<label>/<cell>.png`` + ``root/manifest.csv``; counts ``{split: {class: n}}``.

    ``link_from``: a fold already written with the same cells: hard-link its
    copies (same bytes, no extra disk) instead of copying from the package.
    """
    rows = []
    first = {}
    if link_from is not None:
        with (link_from / "manifest.csv").open(newline="", encoding="utf-8") as fh:
            first = {r["original"]: link_from / r["file"] for r in csv.DictReader(fh)}
    for cell, split, (label, _) in zip(cells, splits, keys, strict=True):
        dest = root / split / label / cell.source.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        original = f"images/{cell.source.name}"
        try:
            os.link(first[original], dest)
        except (KeyError, OSError):  # the first fold, or a file system without hard links
            shutil.copyfile(cell.source, dest)
        rows.append({"file": dest.relative_to(root).as_posix(), "split": split, "label": label,
                     "probability": f"{cell.probability:.4f}", "cell_type": cell.cell_type,
                     "original": original})
    with (root / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: {n: 0 for n in names} for s in SPLITS}
    for (split, label), n in Counter((r["split"], r["label"]) for r in rows).items():
        counts[split][label] = n
    return counts


def _table(counts: dict[str, dict[str, int]]) -> str:
    names = list(next(iter(counts.values())))
    return "\n".join(f"| {s} | " + " | ".join(str(counts[s][n]) for n in names) +
                     f" | {sum(counts[s].values())} |" for s in SPLITS)


def _folds_readme(per_fold, classes, cell_type, val_size, seed) -> str:
    names = list(per_fold[0]["test"])
    table = "\n".join(f"| fold-{k} | " + " | ".join(f"{c['train'][n]}/{c['val'][n]}/{c['test'][n]}" for n in names)
                      + " |" for k, c in enumerate(per_fold))
    return f"""# ELPV — solar cell electroluminescence images, {len(per_fold)} cross-validation folds

Materialised by `edgetl data elpv --folds {len(per_fold)}` from the PyPI package `elpv-dataset`
(classes {classes}, cell type {cell_type}, val size {val_size} of each training part, seed {seed}).
The cells are dealt into {len(per_fold)} disjoint test folds stratified by class and cell type;
`fold-<k>/` is a split root whose `test/` is fold k and whose `train/` and `val/` are the
other folds (val: a stratified {val_size} of them). Every cell is in exactly one fold's test.
Images are hard links to one copy. Train and report per fold, then the mean and spread:
`python benchmarks/experiments/elpv_folds.py` (docs/training.md, "Cross-split evaluation (K-fold)").

train/val/test images per class:

| fold | {' | '.join(names)} |
|---|{'---|' * len(names)}
{table}

Each fold has its own `manifest.csv` and `README.md` (licence and citations below).

## Licence

The images are licensed {LICENSE}: non-commercial use, attribution, share alike.

## Citation

- {CITATIONS[0]}
- {CITATIONS[1]}
"""


def _readme(counts, classes, cell_type, test_size, val_size, seed, fold: tuple[int, int] | None = None) -> str:
    names = list(next(iter(counts.values())))
    table = _table(counts)
    rule = "binary: `good` = defect probability < 0.5, `defect` otherwise" if classes == "binary" \
        else "four: `p000 p033 p067 p100` = defect probability 0, 1/3, 2/3, 1"
    how = (f"test = fold {fold[0]} of {fold[1]} disjoint stratified folds, val size {val_size} of the rest"
           if fold else f"test size {test_size}, val size {val_size} of the rest")
    return f"""# ELPV — solar cell electroluminescence images

Materialised by `edgetl data elpv` from the PyPI package `elpv-dataset`
(classes {classes}, cell type {cell_type}, {how},
seed {seed}; stratified by class and cell type). Images are the original lossless
300x300 greyscale PNGs. {rule}.

| split | {' | '.join(names)} | total |
|---|{'---|' * (len(names) + 1)}
{table}

`manifest.csv`: file, split, label, probability, cell_type, original (name in the package).

The **test** split is for final reporting only: everything that selects
(early stopping, thresholds, export gates) uses **val**.

## Licence

The images are licensed {LICENSE}: non-commercial use, attribution, share alike.

## Citation

- {CITATIONS[0]}
- {CITATIONS[1]}
"""
