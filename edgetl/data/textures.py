"""A fast synthetic good/defect set from the CC0 texture photos bundled in scikit-image.

Photos: ``brick``, ``grass``, ``gravel`` (512x512 greyscale). Each photo is cut
by region *before* cropping — top half for train, bottom-left quarter for
val, bottom-right for test — so no pixel is shared between splits. Inside a
region: random square crops (side 96–224 px) resized to 224, random 90°
rotations and flips. Defect tiles get one or two OpenCV-drawn defects
(scratch, crack, stain, hole; about a third of them subtle) with contrast
scaled to the tile's own texture contrast; good and defect tiles then get the
same photometric finishing (gain, offset, blur, noise, JPEG at random quality),
so neither class can be told by global brightness, contrast or compression.
Masks (0/255 PNG) go to ``masks/<split>/defect/<stem>.png``.

Everything is drawn from ``numpy.random.default_rng([seed, split, class, i])``:
one seed, one dataset, byte for byte.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np

from edgetl.data.stamp import existing, write_stamp
from edgetl.errors import DataError, MissingDependencyError

PHOTOS = ("brick", "grass", "gravel")
SPLITS = ("train", "val", "test")
CLASSES = ("good", "defect")
KINDS = ("scratch", "crack", "stain", "hole")
TILE = 224
SUBTLE_SHARE = 0.2
# measured with benchmarks/textures_calibration.py (seed 0, default --per-class); see docs/data.md
CALIBRATION = {"probe": "efficientnet_lite0 linear probe", "probe_acc": 0.90, "stats_acc": 0.59}


def _cv2():
    import cv2

    return cv2


def load_photos() -> dict[str, np.ndarray]:
    """The three texture photos as (512, 512) uint8 greyscale."""
    try:
        from skimage import data
    except ModuleNotFoundError:
        raise MissingDependencyError("skimage", "data", "edgetl data textures") from None
    out = {}
    for name in PHOTOS:
        img = getattr(data, name)()
        out[name] = img if img.ndim == 2 else _cv2().cvtColor(img, _cv2().COLOR_RGB2GRAY)
    return out


def regions(photo: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint regions per split: top half (train), bottom-left (val), bottom-right (test)."""
    h, w = photo.shape
    return {"train": photo[: h // 2], "val": photo[h // 2:, : w // 2], "test": photo[h // 2:, w // 2:]}


def random_tile(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random square crop (side 96–224 px, within the region) at 224x224, rotated/flipped; float32."""
    cv2 = _cv2()
    h, w = region.shape
    side = int(rng.integers(96, min(224, h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = region[y:y + side, x:x + side]
    tile = cv2.resize(crop, (TILE, TILE), interpolation=cv2.INTER_AREA if side > TILE else cv2.INTER_CUBIC)
    tile = np.rot90(tile, int(rng.integers(0, 4)))
    if rng.random() < 0.5:
        tile = tile[:, ::-1]
    return np.ascontiguousarray(tile, dtype=np.float32)


def _point(rng, margin=20) -> np.ndarray:
    return rng.uniform(margin, TILE - margin, size=2)


def _stroke_mask(points: np.ndarray, thickness: int) -> np.ndarray:
    cv2 = _cv2()
    mask = np.zeros((TILE, TILE), np.uint8)
    pts = np.round(points * 16).astype(np.int32).reshape(-1, 1, 2)  # 4 fractional bits
    cv2.polylines(mask, [pts], False, 255, thickness, cv2.LINE_AA, shift=4)
    return mask.astype(np.float32) / 255


def draw_defect(tile: np.ndarray, kind: str, subtle: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` on ``tile`` (224x224 float32); returns (tile, soft mask in 0..1)."""
    cv2 = _cv2()
    # Paint toward an intensity the tile already has (a dark or bright percentile), so the
    # defect is visible as *structure* while the grey-level histogram barely moves.
    strength = rng.uniform(0.6, 0.75) if subtle else rng.uniform(0.85, 1.0)
    if kind == "scratch":
        a = _point(rng)
        angle, length = rng.uniform(0, np.pi), rng.uniform(100, 200)
        b = np.clip(a + length * np.array([np.cos(angle), np.sin(angle)]), 4, TILE - 4)
        mid = (a + b) / 2 + rng.normal(0, 6, 2)
        mask = _stroke_mask(np.stack([a, mid, b]), int(rng.integers(3, 6)))
        bright = rng.random() < 0.5
    elif kind == "crack":
        p, angle, pts = _point(rng, 40), rng.uniform(0, 2 * np.pi), []
        for _ in range(int(rng.integers(25, 45))):
            pts.append(p.copy())
            angle += rng.normal(0, 0.45)
            p = np.clip(p + rng.uniform(3, 7) * np.array([np.cos(angle), np.sin(angle)]), 2, TILE - 2)
        mask = _stroke_mask(np.array(pts), int(rng.integers(3, 5)))
        bright = False
    elif kind == "stain":
        mask = np.zeros((TILE, TILE), np.uint8)
        axes = (int(rng.integers(18, 40)), int(rng.integers(12, 28)))
        c = tuple(int(v) for v in _point(rng, 35))
        cv2.ellipse(mask, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        mask = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), rng.uniform(2.5, 5))
        bright = rng.random() < 0.4
    elif kind == "hole":
        mask = np.zeros((TILE, TILE), np.uint8)
        c = tuple(int(v) for v in _point(rng))
        cv2.circle(mask, c, int(rng.integers(9, 18)), 255, -1, cv2.LINE_AA)
        mask = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 0.8)
        bright = False
    else:
        raise DataError(f"unknown defect kind '{kind}' (expected one of {', '.join(KINDS)})")
    if kind != "stain":
        mask = cv2.GaussianBlur(mask, (0, 0), 0.6)
    spread = float(np.std(tile)) * rng.uniform(1.0, 1.8)
    target = np.percentile(tile, 97) + spread if bright else np.percentile(tile, 3) - spread
    alpha = strength * mask
    return tile * (1 - alpha) + target * alpha, mask


def finish(tile: np.ndarray, rng: np.random.Generator) -> bytes:
    """Photometric finishing shared by both classes, then JPEG; returns the encoded bytes."""
    cv2 = _cv2()
    mean = float(tile.mean())
    tile = (tile - mean) * rng.uniform(0.65, 1.35) + mean + rng.uniform(-35, 35)
    if rng.random() < 0.7:  # uneven lighting: a smooth ramp across the tile
        yy, xx = np.mgrid[-1:1:TILE * 1j, -1:1:TILE * 1j].astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        tile = tile * (1 + rng.uniform(0.05, 0.25) * (np.cos(angle) * xx + np.sin(angle) * yy))
    tile = 255 * (np.clip(tile, 0, 255) / 255) ** rng.uniform(0.75, 1.33)  # camera gamma
    if rng.random() < 0.3:
        tile = cv2.GaussianBlur(tile, (0, 0), rng.uniform(0.4, 0.9))
    tile = tile + rng.normal(0, rng.uniform(1, 4), tile.shape)
    grey = np.clip(np.round(tile), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.merge([grey, grey, grey]),
                           [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(70, 96))])
    if not ok:
        raise DataError("OpenCV could not encode a JPEG tile")
    return buf.tobytes()


def split_sizes(per_class: int) -> dict[str, int]:
    """Tiles per class in each split: ``per_class`` for train, a quarter of it (>= 10) for val and test."""
    if per_class < 4:
        raise DataError(f"--per-class {per_class}: expected at least 4")
    small = max(10, per_class // 4)
    return {"train": per_class, "val": small, "test": small}


def make_textures(out: str | Path, *, seed: int = 0, per_class: int = 200,
                  kinds: tuple[str, ...] | list[str] = KINDS) -> dict[str, dict[str, int]]:
    """Write the texture set under ``out``; returns counts ``{split: {class: n}}``.

    ``kinds`` draws defects of those kinds only (default: all four). Two sets
    with disjoint kinds give a defect *style* a first model never saw: the
    line-feedback example (examples/line_feedback/loop.py) trains on
    ``scratch, crack`` and meets ``stain`` on the line.

    Raises:
        DataError: ``out`` holds something other than this set made with these settings (that
            one is reused), ``per_class`` is too small, or a kind is unknown.
    """
    cv2 = _cv2()
    allowed = tuple(kinds)
    unknown = [k for k in allowed if k not in KINDS]
    if not allowed or unknown:
        raise DataError(f"textures kinds: {', '.join(unknown) or 'none given'}; expected one or more of "
                        f"{', '.join(KINDS)}")
    out = Path(out)
    settings = {"seed": seed, "per_class": per_class, "kinds": list(allowed)}
    same = existing(out, "textures", settings)
    if same is not None:  # made before with the same settings: reuse it (docs/data.md)
        return same
    sizes = split_sizes(per_class)
    photos = {name: regions(img) for name, img in load_photos().items()}
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for s, split in enumerate(SPLITS):
        for c, label in enumerate(CLASSES):
            (tmp / split / label).mkdir(parents=True, exist_ok=True)
            for i in range(sizes[split]):
                rng = np.random.default_rng([seed, s, c, i])
                photo = PHOTOS[i % len(PHOTOS)]
                tile = random_tile(photos[photo][split], rng)
                stem, kinds, subtle = f"{photo}_{i:04d}", [], False
                mask = np.zeros((TILE, TILE), np.float32)
                if label == "defect":
                    subtle = bool(rng.random() < SUBTLE_SHARE)
                    for _ in range(1 + int(rng.random() < 0.5)):
                        kind = allowed[int(rng.integers(0, len(allowed)))]
                        tile, m = draw_defect(tile, kind, subtle, rng)
                        mask, kinds = np.maximum(mask, m), kinds + [kind]
                    (tmp / "masks" / split / label).mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(tmp / "masks" / split / label / f"{stem}.png"),
                                np.where(mask > 0.25, 255, 0).astype(np.uint8))
                path = tmp / split / label / f"{stem}.jpg"
                path.write_bytes(finish(tile, rng))
                rows.append({"file": path.relative_to(tmp).as_posix(), "split": split, "label": label,
                             "texture": photo, "defects": "+".join(kinds), "subtle": int(subtle)})
    with (tmp / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    counts = {split: {label: (sizes[split]) for label in CLASSES} for split in SPLITS}
    (tmp / "README.md").write_text(_readme(counts, seed, per_class, allowed), "utf-8")
    write_stamp(tmp, "textures", settings, counts)
    if out.exists():
        out.rmdir()
    tmp.rename(out)
    return counts


def _readme(counts, seed, per_class, kinds=KINDS) -> str:
    table = "\n".join(f"| {s} | {counts[s]['good']} | {counts[s]['defect']} |" for s in SPLITS)
    if CALIBRATION["probe_acc"] is not None:
        cal = (f"At seed 0 and the default `--per-class`, an {CALIBRATION['probe']} reaches "
               f"{CALIBRATION['probe_acc']:.3f} test accuracy, while the best classifier on global "
               f"statistics (mean, std, 32-bin histogram) reaches {CALIBRATION['stats_acc']:.3f} "
               "(measured by `benchmarks/textures_calibration.py`; rerun it to check).")
    else:
        cal = "Calibration not measured yet: run `benchmarks/textures_calibration.py`."
    kinds_opt = "" if tuple(kinds) == KINDS else f", --kinds {','.join(kinds)}"
    return f"""# Synthetic textures — good/defect tiles

Made by `edgetl data textures` (seed {seed}, --per-class {per_class}{kinds_opt}) from the CC0 texture photos
bundled in scikit-image (`brick`, `grass`, `gravel`). Splits come from disjoint regions of
each photo (train: top half, val: bottom-left, test: bottom-right), so nothing leaks between
them. Defects ({', '.join(kinds)}; about {round(SUBTLE_SHARE * 100)} % subtle) are drawn
with OpenCV; masks are in `masks/<split>/defect/`. Good and defect tiles share the same
photometric and JPEG finishing.

| split | good | defect |
|---|---|---|
{table}

## Calibration

{cal}

## Licence

The source photos are public domain (CC0), as distributed with scikit-image.
"""
