"""ImageFolder / CSV manifest reading, every bad-data error, --skip-bad, and the torch dataset."""

from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest

from edgetl.api import InputSpec
from edgetl.data.folder import DataWarning, check_images, load_split, read_csv_manifest, scan_image_folder
from edgetl.errors import DataError


def _png(path, value=0, shape=(24, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "train"
    for i in range(3):
        _png(root / "good" / f"g{i}.png", 10 * i)
    for i in range(2):
        _png(root / "defect" / "sub" / f"d{i}.png", 200)
    (root / "good" / "notes.txt").write_text("not an image")
    return root


def test_scan_image_folder_sorts_classes_and_counts(folder):
    samples = scan_image_folder(folder)
    assert samples.classes == ["defect", "good"]
    assert samples.counts() == {"defect": 2, "good": 3} and len(samples) == 5
    assert {s.path.name for s in samples.items if s.label == 1} == {"g0.png", "g1.png", "g2.png"}
    assert load_split(folder.parent, split="train").counts() == samples.counts()
    val = scan_image_folder(folder, classes=["good", "defect", "extra"])
    assert val.counts() == {"good": 3, "defect": 2, "extra": 0} and val.items[0].label == 1


def test_missing_root_empty_class_single_class_and_foreign_class_are_errors(tmp_path, folder):
    with pytest.raises(DataError, match=r"nope: folder not found"):
        scan_image_folder(tmp_path / "nope")
    (folder / "scratch").mkdir()
    with pytest.raises(DataError, match=r"scratch: empty class folder"):
        scan_image_folder(folder)
    (folder / "scratch").rmdir()
    with pytest.raises(DataError, match=r"class folder 'good' is not in the class list"):
        scan_image_folder(folder, classes=["defect", "ok"])
    only_good = tmp_path / "anomaly"
    _png(only_good / "good" / "a.png")
    with pytest.raises(DataError, match=r"found 1 class \(only 'good'\).*at least two"):
        scan_image_folder(only_good)
    assert scan_image_folder(only_good, allow_single_class=True).classes == ["good"]
    flat = tmp_path / "flat"
    _png(flat / "a.png")
    with pytest.raises(DataError, match="no class folders.*directly in it"):
        scan_image_folder(flat)


def test_csv_manifest_splits_share_class_indices(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / "img" / f"{name}.png")
    csv = tmp_path / "m.csv"
    csv.write_text("path,label,split\nimg/a.png,good,train\nimg/b.png,defect,train\nimg/c.png,good,val\n")
    train = read_csv_manifest(csv, split="train")
    val = load_split(csv, split="val")
    assert train.classes == val.classes == ["defect", "good"]
    assert [s.label for s in train.items] == [1, 0] and val.counts() == {"defect": 0, "good": 1}
    assert val.items[0].path == tmp_path / "img" / "c.png"
    (tmp_path / "f.csv").write_text("file,label\nimg/a.png,good\nimg/b.png,defect\n")
    assert len(read_csv_manifest(tmp_path / "f.csv")) == 2


def test_csv_manifest_errors_name_file_and_line(tmp_path):
    _png(tmp_path / "a.png")
    bad_label = tmp_path / "l.csv"
    bad_label.write_text("path,label\na.png,good\na.png,scratch\n")
    with pytest.raises(DataError, match=r"l\.csv:3: label 'scratch' is not in the class list \['defect', 'good'\]"):
        read_csv_manifest(bad_label, classes=["defect", "good"])
    missing = tmp_path / "p.csv"
    missing.write_text("path,label\na.png,good\nb.png,defect\n")
    with pytest.raises(DataError, match=r"p\.csv:3: image .*b\.png does not exist"):
        read_csv_manifest(missing)
    no_col = tmp_path / "c.csv"
    no_col.write_text("image,class\na.png,good\n")
    with pytest.raises(DataError, match="expected a header with columns path"):
        read_csv_manifest(no_col)
    with pytest.raises(DataError, match="no 'split' column"):
        read_csv_manifest(missing, split="train")
    with pytest.raises(DataError, match="manifest not found"):
        load_split(tmp_path / "none.csv")


def test_bad_images_are_named_or_skipped_with_a_count(folder):
    (folder / "good" / "zero.png").write_bytes(b"")
    (folder / "defect" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    samples = scan_image_folder(folder)
    with pytest.raises(DataError, match=r"corrupt\.jpg: not a readable image.*\+1 more bad"):
        check_images(samples, skip_bad=False)
    with pytest.warns(DataWarning, match=r"skipped 2 unreadable image\(s\):.*corrupt\.jpg.*zero\.png"):
        kept = check_images(samples, skip_bad=True)
    assert kept.counts() == {"defect": 2, "good": 3}
    assert sorted(p.name for p in kept.skipped) == ["corrupt.jpg", "zero.png"]


def test_skipping_that_empties_a_class_is_an_error(tmp_path):
    _png(tmp_path / "good" / "a.png")
    (tmp_path / "defect").mkdir()
    (tmp_path / "defect" / "x.png").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        with pytest.raises(DataError, match="class 'defect' has no readable images left"):
            check_images(scan_image_folder(tmp_path), skip_bad=True)


def test_all_good_images_pass_unchanged(folder):
    samples = scan_image_folder(folder)
    assert check_images(samples, skip_bad=False) is samples


def test_dataset_augmentation_is_reproducible_and_mixing_gives_soft_labels(folder):
    torch = pytest.importorskip("torch")
    from edgetl.errors import ConfigError
    from edgetl.training.datasets import ImageDataset, batch_mix

    rng = np.random.default_rng(1)
    for p in (folder / "good").glob("*.png"):
        cv2.imwrite(str(p), rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    spec = InputSpec(size=(16, 16))
    samples = scan_image_folder(folder)
    aug = ["random_resized_crop", "hflip", "vflip", "rot90", "rotate", "color_jitter", "cutout", "mixup"]
    a, b = ImageDataset(samples, spec, aug, train=True, seed=5), ImageDataset(samples, spec, aug, train=True, seed=5)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    b.set_epoch(1)
    assert any(not torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    x, y = next(iter(torch.utils.data.DataLoader(a, batch_size=5)))
    assert x.shape == (5, 3, 16, 16) and y.dtype == torch.int64
    mix = batch_mix(["cutmix", "mixup"], num_classes=2)
    mx, my = mix(x, y)
    assert mx.shape == x.shape and my.shape == (5, 2) and torch.allclose(my.sum(1), torch.ones(5))
    assert batch_mix(["hflip"], 2) is None
    with pytest.raises(ConfigError, match="unknown augmentation 'blur'"):
        ImageDataset(samples, spec, ["blur"], train=True)
