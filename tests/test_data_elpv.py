"""`edgetl data elpv`: the package's full counts, and materialisation on a stratified subset."""

from __future__ import annotations

import csv
from collections import Counter

import pytest
from click.testing import CliRunner

pytest.importorskip("elpv_dataset")

from edgetl.cli import cli  # noqa: E402
from edgetl.data.elpv import fold_splits, materialise_elpv, read_cells  # noqa: E402
from edgetl.errors import DataError  # noqa: E402


def _manifest(root):
    with (root / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_package_holds_the_documented_counts():
    cells = read_cells()
    assert len(cells) == 2624
    assert Counter(c.label("four") for c in cells) == {"p000": 1508, "p033": 295, "p067": 106, "p100": 715}
    assert Counter(c.cell_type for c in cells) == {"mono": 1074, "poly": 1550}


def test_cli_writes_stratified_splits_manifest_and_licence(tmp_path):
    out = tmp_path / "elpv"
    result = CliRunner().invoke(cli, ["data", "elpv", str(out), "--limit", "120", "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "CC BY-NC-SA 4.0" in result.output
    rows = _manifest(out)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == sorted(r["file"] for r in rows) and 100 <= len(rows) <= 120
    for split in ("train", "val", "test"):
        labels = Counter(r["label"] for r in rows if r["split"] == split)
        assert set(labels) == {"good", "defect"}, split  # stratified: both classes everywhere
    assert all((r["label"] == "good") == (float(r["probability"]) < 0.5) for r in rows)
    n_test = sum(r["split"] == "test" for r in rows)
    assert abs(n_test / len(rows) - 0.25) < 0.05
    source = {c.source.name: c.source for c in read_cells()}
    first = rows[0]
    assert (out / first["file"]).read_bytes() == source[first["original"].split("/")[-1]].read_bytes()
    readme = (out / "README.md").read_text()
    assert "CC BY-NC-SA 4.0" in readme and "Buerhop-Lutz" in readme and "Deitsch" in readme


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    a = materialise_elpv(tmp_path / "a", limit=60, seed=3)
    b = materialise_elpv(tmp_path / "b", limit=60, seed=3)
    c = materialise_elpv(tmp_path / "c", limit=60, seed=4)
    assert a == b and _manifest(tmp_path / "a") == _manifest(tmp_path / "b")
    assert _manifest(tmp_path / "a") != _manifest(tmp_path / "c") or a != c


def test_four_classes_and_cell_type_filter(tmp_path):
    counts = materialise_elpv(tmp_path / "m", classes="four", cell_type="mono", limit=80)
    assert list(counts["train"]) == ["p000", "p033", "p067", "p100"]
    rows = _manifest(tmp_path / "m")
    assert {r["cell_type"] for r in rows} == {"mono"}
    assert {r["label"] for r in rows} == {"p000", "p033", "p067", "p100"}


def test_existing_output_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="already exists and is not empty"):
        materialise_elpv(tmp_path / "x", limit=20)
    result = CliRunner().invoke(cli, ["data", "elpv", str(tmp_path / "x")])
    assert result.exit_code == 1 and "already exists" in result.output


def test_help_states_licence_and_citations():
    result = CliRunner().invoke(cli, ["data", "elpv", "--help"])
    assert "CC BY-NC-SA 4.0" in result.output and "Buerhop-Lutz" in result.output and "Deitsch" in result.output


def _keys():
    return [(c.label("four"), c.cell_type) for c in read_cells()]


def test_folds_on_the_real_labels_are_disjoint_cover_every_cell_and_stay_stratified():
    keys = _keys()
    folds = fold_splits(keys, 5, 0.1, seed=0)
    assert len(folds) == 5 and all(len(f) == len(keys) for f in folds)
    test_of = [[k for k in range(5) if folds[k][i] == "test"] for i in range(len(keys))]
    assert all(len(t) == 1 for t in test_of)  # every cell in exactly one test fold
    sizes = Counter(t[0] for t in test_of)
    assert max(sizes.values()) - min(sizes.values()) <= 1
    for stratum in set(keys):  # each (grade, cell type) dealt evenly over the folds
        per_fold = Counter(t[0] for t, key in zip(test_of, keys, strict=True) if key == stratum)
        assert max(per_fold.get(k, 0) for k in range(5)) - min(per_fold.get(k, 0) for k in range(5)) <= 1
    for splits in folds:  # val: ~10 % of each stratum's training part, never a test cell
        for stratum in set(keys):
            part = Counter(s for s, key in zip(splits, keys, strict=True) if key == stratum)
            rest = part["train"] + part["val"]
            assert part["val"] == round(rest * 0.1), stratum
        p067 = Counter(s for s, key in zip(splits, keys, strict=True) if key[0] == "p067")
        assert p067["test"] >= 21 and p067["val"] >= 7 and p067["train"] >= 76
    assert fold_splits(keys, 5, 0.1, seed=0) == folds and fold_splits(keys, 5, 0.1, seed=1) != folds


def test_cli_folds_writes_one_split_root_per_fold_with_hard_links(tmp_path):
    out = tmp_path / "folds"
    result = CliRunner().invoke(cli, ["data", "elpv", str(out), "--classes", "four", "--folds", "3",
                                      "--limit", "90"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [".edgetl-dataset.json", "README.md", "fold-0", "fold-1", "fold-2"]
    again = CliRunner().invoke(cli, ["data", "elpv", str(out), "--classes", "four", "--folds", "3", "--limit", "90"])
    assert again.exit_code == 0, again.output  # the same folds: kept (counts checked over every fold)
    tests, originals = [], None
    for k in range(3):
        rows = _manifest(out / f"fold-{k}")
        files = sorted(p.relative_to(out / f"fold-{k}").as_posix() for p in (out / f"fold-{k}").rglob("*.png"))
        assert files == sorted(r["file"] for r in rows)
        assert {r["split"] for r in rows} == {"train", "val", "test"}
        names = {r["original"] for r in rows}
        assert originals is None or names == originals  # every fold holds every cell once
        originals = names
        tests += [r["original"] for r in rows if r["split"] == "test"]
        assert "fold " + str(k) in (out / f"fold-{k}" / "README.md").read_text()
    assert sorted(tests) == sorted(originals)  # the test folds partition the cells
    one = _manifest(out / "fold-1")[0]
    a, b = out / "fold-1" / one["file"], next((out / "fold-0").rglob(one["original"].split("/")[-1]))
    assert a.stat().st_ino == b.stat().st_ino  # a hard link, not a copy
    assert "3 cross-validation folds" in (out / "README.md").read_text()
    with pytest.raises(DataError, match="--folds 1"):
        materialise_elpv(tmp_path / "one", limit=20, folds=1)
