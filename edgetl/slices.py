"""Per-slice metrics: is the model worse on one product, cell type or camera than on the rest?

A run config names slice attributes (``slices:``): a column of a CSV manifest
(e.g. ELPV's ``cell_type``), matched to each image by its path, or a folder
level of the image path (``folder: 2`` = the folder above the class folder).
For every value of an attribute, accuracy and the recall of the positive class
at the run's operating point get a 95 % Wilson interval
(:func:`edgetl.metrics.wilson_interval`); a slice is **flagged** when the rest
of the images' figure lies above the slice's interval, i.e. the slice is
significantly below the rest at the 5 % level (the rest taken as reference).
Numpy only: ``edgetl eval`` of a bundle may use it without torch.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import DataError
from edgetl.metrics import decide, positive_index, wilson_interval


def slice_values(spec: Any, paths: Sequence[Path]) -> list[str]:
    """The attribute value of each image: ``spec`` has ``name``, ``manifest``/``column`` or ``folder``."""
    if spec.folder is not None:
        out = []
        for p in paths:
            parents = Path(p).parents
            if spec.folder > len(parents) - 1:
                raise DataError(f"slices.{spec.name}: folder level {spec.folder} is above {p}")
            out.append(parents[spec.folder - 1].name)
        return out
    manifest = Path(spec.manifest)
    if not manifest.is_file():
        raise DataError(f"slices.{spec.name}.manifest: {manifest}: no such file (expected a CSV with a "
                        f"path or file column and a '{spec.column or spec.name}' column)")
    column = spec.column or spec.name
    with manifest.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    header = rows[0].keys() if rows else []
    key = "path" if "path" in header else "file" if "file" in header else None
    if key is None or column not in header:
        raise DataError(f"slices.{spec.name}.manifest: {manifest}: expected columns path (or file) and "
                        f"'{column}', got {', '.join(header) or 'no rows'}")
    by_path = {(manifest.parent / r[key]).resolve(): r[column] for r in rows}
    by_name: dict[str, str] = {}
    for path, value in by_path.items():  # images copied elsewhere keep their name: match on the tail
        by_name.setdefault("/".join(path.parts[-2:]), value)
    values = []
    for p in paths:
        p = Path(p).resolve()
        value = by_path.get(p, by_name.get("/".join(p.parts[-2:])))
        if value is None:
            raise DataError(f"slices.{spec.name}.manifest: {manifest} does not list the image {p}")
        values.append(value)
    return values


def _figure(hits: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    n = int(mask.sum())
    k = int(hits[mask].sum())
    return {"n": n, "value": k / n if n else None, "ci95": list(wilson_interval(k, n))}


def slice_table(y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str], values: Sequence[str],
                threshold: float | None = None, positive: str | None = None) -> list[dict[str, Any]]:
    """One dict per slice value: accuracy and positive-class recall (with Wilson intervals), flags.

    ``flag_accuracy`` / ``flag_recall``: the rest's figure is above the slice's
    95 % interval. Recall is None where the slice has no positive image (or
    the labels have no positive class).
    """
    y = np.asarray(y_true, dtype=int)
    pred = decide(probs, labels, threshold, positive)
    correct = pred == y
    pos = positive_index(labels, positive)
    values = np.asarray(values, dtype=object)
    rows = []
    for value in sorted(set(values.tolist())):
        mine = values == value
        acc, rest_acc = _figure(correct, mine), _figure(correct, ~mine)
        row: dict[str, Any] = {"slice": str(value), "n": acc["n"], "accuracy": acc["value"],
                               "accuracy_ci95": acc["ci95"], "rest_accuracy": rest_acc["value"]}
        row["flag_accuracy"] = bool(rest_acc["value"] is not None and rest_acc["value"] > acc["ci95"][1])
        row["recall"] = row["recall_ci95"] = row["rest_recall"] = None
        row["flag_recall"] = False
        if pos is not None and (y[mine] == pos).any():
            is_pos = y == pos
            rec, rest_rec = _figure(correct, mine & is_pos), _figure(correct, ~mine & is_pos)
            row.update(recall=rec["value"], recall_ci95=rec["ci95"], rest_recall=rest_rec["value"],
                       flag_recall=bool(rest_rec["value"] is not None and rest_rec["value"] > rec["ci95"][1]))
        rows.append(row)
    return rows


def slice_report(specs: Sequence[Any], y_true: Sequence[int], probs: np.ndarray, labels: Sequence[str],
                 paths: Sequence[Path], threshold: float | None = None,
                 positive: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """``{attribute name: slice_table(...)}`` for every configured attribute."""
    return {spec.name: slice_table(y_true, probs, labels, slice_values(spec, paths), threshold, positive)
            for spec in specs}


def markdown(report: dict[str, list[dict[str, Any]]], split: str) -> list[str]:
    """report.md lines: one table per attribute, flagged slices in bold with a note."""
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    def ci(c: list[float] | None) -> str:
        return "" if c is None else f" ({100 * c[0]:.1f}–{100 * c[1]:.1f})"

    lines = []
    for name, rows in report.items():
        lines += [f"### `{name}` ({split})", "",
                  "| slice | n | accuracy (95 % CI) | rest | recall at threshold (95 % CI) | rest | flag |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            flags = [w for w, f in (("accuracy", r["flag_accuracy"]), ("recall", r["flag_recall"])) if f]
            label = f"**{r['slice']}**" if flags else r["slice"]
            lines.append(f"| {label} | {r['n']} | {pct(r['accuracy'])}{ci(r['accuracy_ci95'])} | "
                         f"{pct(r['rest_accuracy'])} | {pct(r['recall'])}{ci(r['recall_ci95'])} | "
                         f"{pct(r['rest_recall'])} | {'below the rest: ' + ', '.join(flags) if flags else ''} |")
        lines.append("")
    return lines
