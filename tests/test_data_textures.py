"""`edgetl data textures`: disjoint regions, masks, determinism, and the calibration it promises."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("skimage")

from edgetl.cli import cli  # noqa: E402
from edgetl.data.textures import load_photos, make_textures, regions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_regions_partition_each_photo_without_overlap():
    photo = np.arange(512 * 512).reshape(512, 512)
    parts = regions(photo)
    values = [set(parts[s].ravel().tolist()) for s in ("train", "val", "test")]
    assert sum(len(v) for v in values) == photo.size
    assert not (values[0] & values[1] or values[0] & values[2] or values[1] & values[2])
    assert set(load_photos()) == {"brick", "grass", "gravel"}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    make_textures(tmp_path / "a", seed=7, per_class=6)
    make_textures(tmp_path / "b", seed=7, per_class=6)
    make_textures(tmp_path / "c", seed=8, per_class=6)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys() and a["train/good/brick_0000.jpg"] != c["train/good/brick_0000.jpg"]


def test_kinds_draws_only_those_defects_and_refuses_an_unknown_one(tmp_path):
    """--kinds: a set with disjoint kinds is a defect style a first model never saw (examples/line_feedback)."""
    import csv

    out = tmp_path / "stains"
    result = CliRunner().invoke(cli, ["data", "textures", str(out), "--per-class", "8", "--kinds", "stain"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    drawn = {k for r in rows if r["label"] == "defect" for k in r["defects"].split("+")}
    assert drawn == {"stain"}
    assert "--kinds stain" in (out / "README.md").read_text()
    make_textures(tmp_path / "all", seed=0, per_class=6)
    everything = {k for r in csv.DictReader((tmp_path / "all" / "manifest.csv").open()) for k in r["defects"].split("+")}
    assert everything - {""} == {"scratch", "crack", "stain", "hole"}
    bad = CliRunner().invoke(cli, ["data", "textures", str(tmp_path / "x"), "--kinds", "stain,dent"])
    assert bad.exit_code != 0 and "dent" in bad.output and "expected one or more of" in bad.output
    assert not (tmp_path / "x").exists()


def test_cli_writes_tiles_masks_and_readme(tmp_path):
    out = tmp_path / "tex"
    result = CliRunner().invoke(cli, ["data", "textures", str(out), "--per-class", "8"])
    assert result.exit_code == 0, result.output
    for split, n in (("train", 8), ("val", 10), ("test", 10)):
        for label in ("good", "defect"):
            tiles = sorted((out / split / label).glob("*.jpg"))
            assert len(tiles) == n
            assert cv2.imread(str(tiles[0])).shape == (224, 224, 3)
        masks = sorted((out / "masks" / split / "defect").glob("*.png"))
        assert [m.stem for m in masks] == [t.stem for t in sorted((out / split / "defect").glob("*.jpg"))]
        assert all(cv2.imread(str(m), cv2.IMREAD_GRAYSCALE).max() == 255 for m in masks)
    assert not (out / "masks" / "train" / "good").exists()
    readme = (out / "README.md").read_text()
    assert "linear probe" in readme and "CC0" in readme
    before = _files(out)
    again = CliRunner().invoke(cli, ["data", "textures", str(out), "--per-class", "8"])  # the tour, run twice
    assert again.exit_code == 0 and "kept it" in again.stderr and _files(out) == before, again.output
    other = CliRunner().invoke(cli, ["data", "textures", str(out), "--per-class", "9"])
    assert other.exit_code == 1 and "made with per_class=8" in other.stderr and f"rm -r {out}" in other.stderr
    (out / "train" / "good" / "brick_0000.jpg").unlink()
    changed = CliRunner().invoke(cli, ["data", "textures", str(out), "--per-class", "8"])
    assert changed.exit_code == 1 and "7 images, 8 when it was made" in changed.stderr, changed.output


@pytest.mark.slow
def test_lite0_linear_probe_sees_defects_global_statistics_do_not(tmp_path):
    """The calibration of benchmarks/textures_calibration.py at 60 of the default 200 per class (seed 0).

    At 60 (30 test images) the probe scored 0.90 and the statistics 0.57; at 100, 0.88 and 0.60 in
    2.3x the time: the claim does not need the larger set, benchmarks/textures_calibration.py runs it whole.
    """
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("textures_calibration",
                                                  ROOT / "benchmarks" / "textures_calibration.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    make_textures(tmp_path / "t", seed=0, per_class=60)
    result = bench.calibrate(tmp_path / "t")
    assert result["probe_acc"] >= 0.85, result
    assert result["stats_acc"] <= 0.70, result
