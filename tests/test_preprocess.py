"""THE preprocessing (edgetl/preprocess.py) against hand-computed examples, and train == eval."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from edgetl.api import InputSpec
from edgetl.errors import DataError
from edgetl.preprocess import (
    crop_roi,
    decode_image,
    fit,
    normalize,
    prepare,
    preprocess,
    preprocess_file,
    read_image,
    split_tiles,
)

BGR = InputSpec(size=(2, 2), mean=(0.0,) * 3, std=(1.0,) * 3, color="BGR")


def grey(values) -> np.ndarray:
    """A (H, W, 3) uint8 image whose three channels all hold ``values``."""
    a = np.asarray(values, dtype=np.uint8)
    return np.repeat(a[..., None], 3, axis=2)


def test_resize_mode_averages_blocks_when_shrinking():
    image = grey([[0, 0, 100, 100], [0, 0, 100, 100], [40, 40, 8, 8], [40, 40, 8, 8]])
    assert fit(image, BGR)[..., 0].tolist() == [[0, 100], [40, 8]]


def test_resize_mode_averages_a_shrinking_axis_even_when_the_other_grows():
    image = grey(np.zeros((1, 8)))  # 1x8 -> 2x2: width shrinks 4x, height doubles
    image[:, -1] = 200  # a one-pixel defect on the right edge
    out = fit(image, BGR)[..., 0]
    assert out.tolist() == [[0, 50], [0, 50]]  # averaged in (200 / 4), not skipped


def test_center_crop_takes_the_middle_after_scaling_the_short_side():
    spec = replace(BGR, resize="center_crop", crop_pct=0.5)  # short side -> 2 / 0.5 = 4
    image = grey(np.arange(32).reshape(4, 8))  # already short side 4: no resize
    # 2x2 crop from the middle: rows 1..2, columns 3..4
    assert fit(image, spec)[..., 0].tolist() == [[11, 12], [19, 20]]


def test_center_crop_resizes_the_short_side_first():
    spec = replace(BGR, size=(2, 2), resize="center_crop", crop_pct=1.0)
    image = grey(np.repeat(np.repeat([[10, 20, 30, 40]], 2, axis=1), 4, axis=0))  # 4x8, 2-px columns
    # short side 4 -> 2: image becomes 2x4 = [10,20,30,40]; middle 2 columns: 20, 30
    assert fit(image, spec)[..., 0].tolist() == [[20, 30], [20, 30]]


def test_letterbox_keeps_aspect_and_pads_with_the_mean_in_spec_order():
    spec = InputSpec(size=(4, 4), mean=(1.0, 0.5, 0.0), std=(1.0,) * 3, color="RGB", resize="letterbox")
    image = grey(np.full((2, 4), 7))
    out = prepare(image, spec)[0]  # RGB order
    assert out[0, 0].tolist() == [255, 128, 0] and out[3, 3].tolist() == [255, 128, 0]
    assert out[1:3, :, 0].tolist() == [[7] * 4] * 2


def test_prepare_swaps_bgr_to_rgb_and_normalize_scales():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0] = 255  # blue in BGR
    spec = InputSpec(size=(2, 2), mean=(0.5,) * 3, std=(0.5,) * 3, color="RGB")
    x = preprocess(image, spec)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    assert x[0, 2].tolist() == [[1.0, 1.0]] * 2 and x[0, 0].tolist() == [[-1.0, -1.0]] * 2
    rgb = np.array([[[51, 102, 204]]], np.uint8)
    imagenet = InputSpec(size=(1, 1), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert normalize(rgb, imagenet)[:, 0, 0] == pytest.approx(
        [(0.2 - 0.485) / 0.229, (0.4 - 0.456) / 0.224, (0.8 - 0.406) / 0.225], abs=1e-6)


def test_roi_and_tiles():
    image = grey(np.arange(24).reshape(4, 6))
    assert crop_roi(image, (1, 2, 3, 2))[..., 0].tolist() == [[13, 14, 15], [19, 20, 21]]
    tiles = split_tiles(image, (2, 3))
    assert len(tiles) == 6 and tiles[4][..., 0].tolist() == [[14, 15], [20, 21]]
    x = preprocess(image, replace(BGR, size=(2, 2), tile=(2, 3)))
    assert x.shape == (6, 3, 2, 2) and (x[5, 0] * 255).round().tolist() == [[16, 17], [22, 23]]
    with pytest.raises(DataError, match="does not fit in a 6x4 frame"):
        crop_roi(image, (4, 0, 4, 2))


def test_decode_expands_grey_drops_alpha(tmp_path):
    g = np.array([[0, 255], [128, 64]], np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), g)
    assert read_image(tmp_path / "g.png").tolist() == grey(g).tolist()
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 10  # red, nearly transparent
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    out = read_image(tmp_path / "a.png")
    assert out.shape == (2, 2, 3) and out[0, 0].tolist() == [0, 0, 200]


def test_decode_applies_exif_orientation(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    pixels = np.zeros((16, 32, 3), np.uint8)
    pixels[:, 16:] = 255  # left black, right white (landscape)
    im = Image.fromarray(pixels)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    im.save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "o.jpg")
    assert out.shape == (32, 16, 3)  # portrait after orientation
    assert out[:8].mean() < 40 and out[-8:].mean() > 215  # black on top, white below


def test_bad_bytes_name_the_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_image(tmp_path / "empty.png")
    with pytest.raises(DataError, match=r"junk\.jpg: not a readable image"):
        read_image(tmp_path / "junk.jpg")
    with pytest.raises(DataError, match=r"missing\.png: cannot read"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="x: empty file"):
        decode_image(b"", "x")


@pytest.mark.parametrize("mode", ["resize", "letterbox", "center_crop"])
def test_training_path_without_augmentation_equals_evaluation_path(tmp_path, mode):
    torch = pytest.importorskip("torch")
    from edgetl.data.folder import Sample, Samples
    from edgetl.training.datasets import ImageDataset

    rng = np.random.default_rng(0)
    paths = []
    for i, shape in enumerate([(50, 70, 3), (64, 64, 3), (33, 90, 3)]):
        cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 256, shape, dtype=np.uint8))
        paths.append(tmp_path / f"{i}.png")
    spec = InputSpec(size=(32, 40), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), resize=mode)
    samples = Samples([Sample(p, i % 2) for i, p in enumerate(paths)], ["a", "b"])
    train = ImageDataset(samples, spec, augment=[], train=True, seed=3)
    switched_off = ImageDataset(samples, spec, augment=["hflip", "color_jitter", "cutout"], train=False)
    augmented = ImageDataset(samples, spec, augment=["hflip", "vflip", "color_jitter", "cutout"], train=True)
    for i, path in enumerate(paths):
        reference = torch.from_numpy(preprocess_file(path, spec)[0])
        for ds in (train, switched_off):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 40) and y == i % 2
            assert torch.equal(x, reference)
        assert augmented[i][0].shape == (3, 32, 40)
    assert any(not torch.equal(augmented[i][0], train[i][0]) for i in range(3))  # augmentation does act
