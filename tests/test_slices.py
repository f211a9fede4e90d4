"""Per-slice bias report: a deliberately worse slice is flagged, folder levels and manifest columns, eval --slice."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl.config import SliceConfig
from edgetl.errors import DataError
from edgetl.slices import slice_table, slice_values


def synthetic(n_per=200, bad_acc=0.6, good_acc=0.95, seed=0):
    """Two-class predictions where slice 'line2' is right only ``bad_acc`` of the time."""
    rng = np.random.default_rng(seed)
    values = ["line1"] * n_per + ["line2"] * n_per
    y = rng.integers(0, 2, 2 * n_per)
    right = np.r_[rng.random(n_per) < good_acc, rng.random(n_per) < bad_acc]
    pred = np.where(right, y, 1 - y)
    probs = np.eye(2)[pred] * 0.8 + 0.1
    return y, probs, values


def test_the_worse_slice_is_flagged_and_the_better_one_is_not():
    y, probs, values = synthetic()
    rows = {r["slice"]: r for r in slice_table(y, probs, ["good", "defect"], values)}
    assert rows["line2"]["flag_accuracy"] and rows["line2"]["flag_recall"]
    assert not rows["line1"]["flag_accuracy"] and not rows["line1"]["flag_recall"]
    lo, hi = rows["line2"]["accuracy_ci95"]
    assert lo < rows["line2"]["accuracy"] < hi < rows["line2"]["rest_accuracy"]
    assert rows["line1"]["n"] + rows["line2"]["n"] == 400


def test_equal_slices_are_not_flagged():
    y, probs, values = synthetic(bad_acc=0.95)
    assert not any(r["flag_accuracy"] or r["flag_recall"] for r in slice_table(y, probs, ["good", "defect"], values))


def test_small_slices_are_not_flagged_on_noise():
    y, probs, values = synthetic(n_per=6, bad_acc=0.5, seed=3)  # 6 images: the interval is wide
    rows = {r["slice"]: r for r in slice_table(y, probs, ["good", "defect"], values)}
    assert rows["line2"]["accuracy_ci95"][1] - rows["line2"]["accuracy_ci95"][0] > 0.4


def test_folder_level_and_manifest_column(tmp_path):
    paths = [tmp_path / "cam1" / "defect" / "a.png", tmp_path / "cam2" / "good" / "b.png"]
    for p in paths:
        p.parent.mkdir(parents=True)
        p.write_bytes(b"")
    assert slice_values(SliceConfig(name="camera", folder=2), paths) == ["cam1", "cam2"]
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,label,cell_type\ncam1/defect/a.png,defect,mono\ncam2/good/b.png,good,poly\n")
    assert slice_values(SliceConfig(name="cell_type", manifest=str(manifest)), paths) == ["mono", "poly"]
    with pytest.raises(DataError, match="slices.cell_type.manifest: .* does not list"):
        slice_values(SliceConfig(name="cell_type", manifest=str(manifest)), [tmp_path / "x.png"])
    with pytest.raises(ValueError, match="exactly one of manifest"):
        SliceConfig(name="x")


def test_eval_slice_option_and_run_report(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("timm")
    from bundle_factory import make_tiny_run

    from edgetl.cli import cli as main

    run = make_tiny_run(tmp_path)
    data = tmp_path / "data" / "val" if (tmp_path / "data" / "val").is_dir() else None
    data = data or next(p for p in tmp_path.rglob("val") if p.is_dir())
    result = CliRunner().invoke(main, ["eval", str(run), str(data), "--slice", "cls=folder:1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((Path(__file__).resolve().parents[1] / "docs" / "schemas" / "eval.schema.json").read_text())
    jsonschema.validate(doc, schema)
    assert {r["slice"] for r in doc["slices"]["cls"]} == {"good", "defect"}
    assert sum(r["n"] for r in doc["slices"]["cls"]) == doc["n"]
    bad = CliRunner().invoke(main, ["eval", str(run), str(data), "--slice", "cls"])
    assert bad.exit_code == 2 and "--slice cls: expected" in bad.output
