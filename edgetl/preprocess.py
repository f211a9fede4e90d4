"""THE preprocessing: decode, ROI, tiling, resize mode, normalise (numpy + OpenCV, no torch).

Training decodes and resizes through :func:`prepare` and applies random
augmentation on top; evaluation, export's reference check and the device call
:func:`preprocess` as is. One implementation, so the device sees exactly the
tensor the model was validated on.

Shapes: an image is (H, W, 3) uint8 in BGR (OpenCV's order) until
:func:`prepare`, which returns it in the network's colour order; a network
input is (3, H, W) float32, normalised with the InputSpec's mean and std.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.api import RESIZE_MODES, InputSpec
from edgetl.errors import DataError

__all__ = [
    "decode_image", "read_image", "fit", "crop_roi", "split_tiles", "prepare", "normalize",
    "preprocess", "preprocess_file",
]


def _cv2():
    import cv2

    return cv2


def decode_image(data: bytes | bytearray | memoryview, name: str = "image") -> np.ndarray:
    """Decode encoded image bytes to (H, W, 3) uint8 BGR.

    Greyscale becomes three channels, alpha is dropped and the EXIF orientation
    is applied (OpenCV's ``IMREAD_COLOR`` does all three).

    Raises:
        DataError: empty or undecodable data, naming ``name``.
    """
    cv2 = _cv2()
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size == 0:
        raise DataError(f"{name}: empty file (0 bytes), expected an image")
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{name}: not a readable image (corrupt or unsupported format)")
    return image


def read_image(path: str | Path) -> np.ndarray:
    """Read and decode an image file to (H, W, 3) uint8 BGR; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return decode_image(data, str(path))


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging along an axis that shrinks, bilinear along one that grows.

    Linear interpolation alone would skip rows/columns when shrinking, and a
    thin defect could vanish; when one axis shrinks and the other grows, each
    axis is resized on its own so the shrinking one still averages.
    """
    cv2 = _cv2()
    h, w = image.shape[:2]
    if (width < w) != (height < h) and width != w and height != h:
        if width < w:
            image = cv2.resize(image, (width, h), interpolation=cv2.INTER_AREA)
        else:
            image = cv2.resize(image, (w, height), interpolation=cv2.INTER_AREA)
        h, w = image.shape[:2]
    interp = cv2.INTER_AREA if (width <= w and height <= h) else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interp)


def fit(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Bring one image to ``spec.size`` by the spec's resize mode; uint8 in, uint8 out."""
    out_h, out_w = spec.size
    h, w = image.shape[:2]
    if spec.resize == "resize":
        return _resize(image, out_w, out_h)
    if spec.resize == "center_crop":
        scale_h, scale_w = out_h / spec.crop_pct, out_w / spec.crop_pct
        scale = max(scale_h / h, scale_w / w)
        new_w, new_h = max(out_w, round(w * scale)), max(out_h, round(h * scale))
        resized = _resize(image, new_w, new_h)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        return resized[top:top + out_h, left:left + out_w]
    if spec.resize == "letterbox":
        scale = min(out_h / h, out_w / w)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        resized = _resize(image, new_w, new_h)
        pad = np.array([round(m * 255) for m in spec.mean], dtype=np.uint8)
        if spec.color == "RGB":  # the image is still BGR here; the pad is given in spec order
            pad = pad[::-1]
        canvas = np.empty((out_h, out_w, 3), dtype=np.uint8)
        canvas[:] = pad
        top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        canvas[top:top + new_h, left:left + new_w] = resized
        return canvas
    raise DataError(f"unknown resize mode '{spec.resize}' (expected one of {', '.join(RESIZE_MODES)})")


def crop_roi(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Cut (x, y, w, h) out of the frame; an ROI outside the frame is a DataError."""
    if roi is None:
        return image
    x, y, w, h = roi
    H, W = image.shape[:2]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > W or y + h > H:
        raise DataError(f"roi {list(roi)} does not fit in a {W}x{H} frame")
    return image[y:y + h, x:x + w]


def split_tiles(image: np.ndarray, tile: tuple[int, int] | None) -> list[np.ndarray]:
    """Split into rows x cols tiles, row-major; the last row/column takes the remainder."""
    if tile is None:
        return [image]
    rows, cols = tile
    H, W = image.shape[:2]
    ys = [round(i * H / rows) for i in range(rows + 1)]
    xs = [round(j * W / cols) for j in range(cols + 1)]
    return [image[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] for i in range(rows) for j in range(cols)]


def prepare(image_bgr: np.ndarray, spec: InputSpec) -> list[np.ndarray]:
    """ROI, tiling, resize mode and colour order: (H, W, 3) uint8 BGR -> tiles (h, w, 3) uint8.

    This is the geometric half that training shares; it returns one image per
    tile (one without tiling) in the network's colour order.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise DataError(f"expected an (H, W, 3) uint8 BGR image, got {image_bgr.shape} {image_bgr.dtype}")
    tiles = split_tiles(crop_roi(image_bgr, spec.roi), spec.tile)
    out = [fit(t, spec) for t in tiles]
    if spec.color == "RGB":
        out = [np.ascontiguousarray(t[..., ::-1]) for t in out]
    return out


def normalize(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(h, w, 3) uint8 in the network's colour order -> (3, h, w) float32, (x/255 - mean) / std."""
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    chw = image.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255)
    return (chw - mean) / std


def preprocess(image_bgr: np.ndarray, spec: InputSpec) -> np.ndarray:
    """A decoded frame to the network's input: (T, 3, h, w) float32, T tiles (1 without tiling)."""
    return np.stack([normalize(t, spec) for t in prepare(image_bgr, spec)])


def preprocess_file(path: str | Path, spec: InputSpec) -> np.ndarray:
    """:func:`read_image` then :func:`preprocess`."""
    return preprocess(read_image(path), spec)
