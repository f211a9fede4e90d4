"""``edgetl data elpv|textures|inspect``: materialise the sample datasets, look at any dataset.

Only click at module level; numpy/OpenCV/scikit-image load inside the commands.
"""

from __future__ import annotations

import click

from edgetl.cli.common import emit_json, info, json_option


@click.group("data")
def data_group() -> None:
    """Materialise and inspect datasets."""


def _made_before(out: str) -> bool:
    from pathlib import Path

    from edgetl.data.stamp import STAMP

    return (Path(out) / STAMP).is_file()


def _done(out: str, reused: bool, note: str = "") -> None:
    if reused:
        info(f"{out}: already made with these settings; kept it (remove the folder to make it again){note}")
    else:
        info(f"wrote {out}{note}")


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    classes = list(next(iter(counts.values())))
    click.echo("split".ljust(8) + "".join(c.rjust(9) for c in classes) + "total".rjust(8))
    for split, row in counts.items():
        click.echo(split.ljust(8) + "".join(str(row[c]).rjust(9) for c in classes)
                   + str(sum(row.values())).rjust(8))


@data_group.command("elpv", short_help="Materialise the ELPV solar-cell defect set (CC BY-NC-SA 4.0).")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--classes", type=click.Choice(["binary", "four"]), default="binary", show_default=True,
              help="binary: good (defect probability < 0.5) / defect; four: p000 p033 p067 p100.")
@click.option("--cell-type", type=click.Choice(["all", "mono", "poly"]), default="all", show_default=True)
@click.option("--test-size", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.25,
              show_default=True, help="Share of each (class, cell type) stratum held out for test.")
@click.option("--val-size", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Share of the rest used for validation.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--folds", type=click.IntRange(2, 20), default=None, metavar="K",
              help="K disjoint stratified test folds instead of one split: OUT/fold-<k>/{train,val,test}/ per fold "
                   "(val: --val-size of the other folds; replaces --test-size). Images are hard links to one copy.")
@click.option("--limit", type=click.IntRange(4), default=None, hidden=True,
              help="Keep a stratified subset of about N cells (tests, quick looks).")
def elpv_cmd(out: str, classes: str, cell_type: str, test_size: float, val_size: float, seed: int,
             folds: int | None, limit: int | None) -> None:
    """Write the ELPV solar-cell set to OUT/{train,val,test}/<class>/ (+ manifest.csv, README.md).

    2,624 greyscale 300x300 electroluminescence images of mono- and
    polycrystalline solar cells from 44 modules (PyPI package elpv-dataset),
    each with a defect probability 0, 1/3, 2/3 or 1. The split is stratified by
    class and cell type and fixed by --seed. Use val to select; test only to report.
    --folds K writes K such split roots, OUT/fold-0 ... OUT/fold-<K-1>, whose
    test parts are disjoint and cover every cell (cross-split evaluation).

    \b
    Licence: CC BY-NC-SA 4.0 (non-commercial, attribution, share alike).
    Please cite:
      Buerhop-Lutz et al., A Benchmark for Visual Identification of Defective
      Solar Cells in Electroluminescence Imagery, EU PVSEC 2018.
      Deitsch et al., Automatic classification of defective photovoltaic
      module cells in electroluminescence images, Solar Energy 185, 2019.
    """
    from edgetl.data.elpv import materialise_elpv

    reused = _made_before(out)
    counts = materialise_elpv(out, classes=classes, cell_type=cell_type, test_size=test_size,
                              val_size=val_size, seed=seed, limit=limit, folds=folds)
    _print_counts(counts)
    if folds:
        info(f"counts summed over the {folds} folds (each cell is in one fold's test): {out}/fold-0 ... "
             f"{out}/fold-{folds - 1}")
    _done(out, reused, f" (licence CC BY-NC-SA 4.0; see {out}/README.md for the citations)")


@data_group.command("textures", short_help="Generate a synthetic good/defect texture set (seconds).")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--per-class", type=click.IntRange(4), default=200, show_default=True,
              help="Tiles per class in train; val and test get a quarter of it each (at least 10).")
@click.option("--kinds", default="scratch,crack,stain,hole", show_default=True, metavar="KIND,...",
              help="Defect kinds to draw (of scratch, crack, stain, hole): disjoint kinds in two sets make a "
                   "defect style a first model never saw.")
def textures_cmd(out: str, seed: int, per_class: int, kinds: str) -> None:
    """Write a synthetic good/defect set from scikit-image's CC0 texture photos (seconds).

    224x224 tiles of brick, grass and gravel with drawn scratches, cracks,
    stains and holes; masks in OUT/masks/<split>/defect/. For smoke runs: an
    efficientnet_lite0 linear probe separates it, global image statistics do not.
    """
    from edgetl.data.textures import make_textures

    reused = _made_before(out)
    _print_counts(make_textures(out, seed=seed, per_class=per_class,
                                kinds=tuple(k.strip() for k in kinds.split(",") if k.strip())))
    _done(out, reused)


@data_group.command("inspect", short_help="Counts, sizes, corrupt files, imbalance, contact sheet.")
@click.argument("directory", metavar="DIR", type=click.Path())
@click.option("--sheet", type=click.Path(dir_okay=False), default=None,
              help="Write a PNG contact sheet (one row of samples per class).")
@json_option
def inspect_cmd(directory: str, sheet: str | None, as_json: bool) -> None:
    """Counts per class and split, image sizes, corrupt files, imbalance; DIR is a split root or an ImageFolder."""
    from edgetl.data.inspect import format_report, inspect_dataset

    doc = inspect_dataset(directory, sheet=sheet)
    if as_json:
        emit_json(doc)
    else:
        click.echo(format_report(doc))
