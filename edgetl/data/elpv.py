"""Materialise ELPV (solar-cell electroluminescence images) from the PyPI package ``elpv-dataset``.

2,624 greyscale 300x300 PNG crops of mono- and polycrystalline cells from 44
modules, each with a defect probability 0, 1/3, 2/3 or 1 (1,508 / 295 / 106 /
715). The split is stratified by (class, cell type) and fixed by the seed, so
two runs with one seed write identical folders. The images are copied
byte for byte (lossless PNG).
"""

from __future__ import annotations

import csv
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


def materialise_elpv(out: str | Path, *, classes: str = "binary", cell_type: str = "all",
                     test_size: float = 0.25, val_size: float = 0.1, seed: int = 0,
                     limit: int | None = None) -> dict[str, dict[str, int]]:
    """Write ``out/{train,val,test}/<class>/*.png``, ``out/manifest.csv`` and ``out/README.md``.

    Args:
        limit: keep only this many cells (a stratified random subset; tests).

    Returns:
        counts ``{split: {class: n}}``.

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
                "seed": seed, "limit": limit}
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
    splits = stratified_split(keys, test_size, val_size, seed)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for cell, split, (label, _) in zip(cells, splits, keys, strict=False):
        dest = tmp / split / label / cell.source.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cell.source, dest)
        rows.append({"file": dest.relative_to(tmp).as_posix(), "split": split, "label": label,
                     "probability": f"{cell.probability:.4f}", "cell_type": cell.cell_type,
                     "original": f"images/{cell.source.name}"})
    with (tmp / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts = {s: {n: 0 for n in names} for s in SPLITS}
    for (split, label), n in Counter((r["split"], r["label"]) for r in rows).items():
        counts[split][label] = n
    (tmp / "README.md").write_text(_readme(counts, classes, cell_type, test_size, val_size, seed), "utf-8")
    write_stamp(tmp, "elpv", settings, counts)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return counts


def _readme(counts, classes, cell_type, test_size, val_size, seed) -> str:
    names = list(next(iter(counts.values())))
    table = "\n".join(f"| {s} | " + " | ".join(str(counts[s][n]) for n in names) +
                      f" | {sum(counts[s].values())} |" for s in SPLITS)
    rule = "binary: `good` = defect probability < 0.5, `defect` otherwise" if classes == "binary" \
        else "four: `p000 p033 p067 p100` = defect probability 0, 1/3, 2/3, 1"
    return f"""# ELPV — solar cell electroluminescence images

Materialised by `edgetl data elpv` from the PyPI package `elpv-dataset`
(classes {classes}, cell type {cell_type}, test size {test_size}, val size {val_size} of the rest,
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
