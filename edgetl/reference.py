"""The reference check: does this machine's runtime reproduce the host's outputs? (no torch)

An export stores 16–32 raw validation images under ``reference/`` together with
the outputs the *exported* model gave on the host, and a tolerance for its
precision (a minimum label agreement plus a bound on the score difference).
The device, and ``edgetl bundle verify``, re-run those images through the
shared preprocessing and the installed runtime and compare. It catches a wrong
preprocessing, a runtime that computes differently on this CPU/GPU (INT8
kernels differ between ISAs), or a broken install.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import InputSpec
from edgetl.errors import BundleError
from edgetl.preprocess import preprocess_file

# Per precision: minimum fraction of matching labels and bound on |output - stored output|.
# INT8 kernels legitimately differ across CPUs (VNNI vs AVX2 accumulation), so its bound is loose
# and label agreement, not bit-equality, is what must hold.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"label_agreement": 1.0, "max_abs_diff": 1e-3},
    "fp16": {"label_agreement": 0.95, "max_abs_diff": 2e-2},
    "int8": {"label_agreement": 0.9, "max_abs_diff": 0.15},
}


def labels_of(outputs: np.ndarray) -> np.ndarray:
    """Predicted index per row: argmax of (N, K) probabilities, or score >= 0.5 for (N,) anomaly scores."""
    outputs = np.asarray(outputs)
    if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
        return (outputs.reshape(-1) >= 0.5).astype(np.int64)
    return outputs.argmax(axis=1)


def run_images(paths: list[Path], spec: InputSpec, runtime: Any) -> list[np.ndarray]:
    """Each image through :func:`edgetl.preprocess.preprocess_file` and ``runtime``: one (T, …) array per image."""
    return [np.asarray(runtime.predict(preprocess_file(p, spec)), dtype=np.float32) for p in paths]


MAP_GRID = 16  # anomaly maps are stored and compared as 16x16 block means (a 224x224 map is 50 k numbers)


def pooled_maps(outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The ``map`` output (T, 1, H, W) as (T, MAP_GRID, MAP_GRID) block means; None without a map."""
    import cv2

    amap = outputs.get("map")
    if amap is None:
        return None
    amap = np.asarray(amap, dtype=np.float32).reshape(-1, *np.asarray(amap).shape[-2:])
    return np.stack([cv2.resize(m, (MAP_GRID, MAP_GRID), interpolation=cv2.INTER_AREA) for m in amap])


def run_maps(paths: list[Path], spec: InputSpec, runtime: Any) -> list[np.ndarray | None]:
    """Each image's pooled anomaly map through ``runtime.predict_outputs`` (None for single-output models)."""
    return [pooled_maps(runtime.predict_outputs(preprocess_file(p, spec))) for p in paths]


def read_outputs_doc(extracted_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    ref = manifest.get("reference")
    if not ref:
        raise BundleError("the manifest has no reference set")
    path = Path(extracted_dir) / ref["outputs"]
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return list(doc["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable reference outputs ({exc})") from None


def check_reference(extracted_dir: str | Path, manifest: dict[str, Any], runtime: Any) -> dict[str, Any]:
    """Re-run the reference images and compare against the stored outputs.

    Returns:
        ``{passed, n, label_agreement, max_abs_diff, tolerance, failures}``;
        ``failures`` lists one line per image whose label differs or whose
        scores moved more than the bound.
    """
    extracted_dir = Path(extracted_dir)
    images = read_outputs_doc(extracted_dir, manifest)
    tolerance = dict(manifest["reference"]["tolerance"])
    spec = InputSpec.from_dict(manifest["input"])
    paths = [extracted_dir / item["file"] for item in images]
    outputs = run_images(paths, spec, runtime)
    maps = run_maps(paths, spec, runtime) if any("map" in item for item in images) else [None] * len(images)
    agree, total, worst, failures = 0, 0, 0.0, []
    for item, got, amap in zip(images, outputs, maps, strict=True):
        if "map" in item:  # anomaly models: the heat map must match too, within the same bound
            want_map = np.asarray(item["map"], dtype=np.float32)
            map_diff = float(np.max(np.abs(amap - want_map))) if amap is not None and amap.shape == want_map.shape \
                else float("inf")
            worst = max(worst, map_diff)
            if map_diff > tolerance["max_abs_diff"]:
                failures.append(f"{item['file']}: anomaly map differs by {map_diff:.3g} > {tolerance['max_abs_diff']:.3g}")
        want = np.asarray(item["output"], dtype=np.float32)
        if want.shape != got.shape:
            failures.append(f"{item['file']}: output shape {list(got.shape)}, stored {list(want.shape)}")
            total += 1
            continue
        diff = float(np.max(np.abs(got - want))) if want.size else 0.0
        worst = max(worst, diff)
        same = labels_of(got) == labels_of(want)
        agree += int(same.sum())
        total += same.size
        if not same.all():
            failures.append(f"{item['file']}: label {labels_of(got).tolist()} here, {labels_of(want).tolist()} on the host")
        elif diff > tolerance["max_abs_diff"]:
            failures.append(f"{item['file']}: scores differ by {diff:.3g} > {tolerance['max_abs_diff']:.3g}")
    agreement = agree / total if total else 1.0
    passed = bool(total) and agreement >= tolerance["label_agreement"] and worst <= tolerance["max_abs_diff"]
    return {"passed": passed, "n": len(images), "label_agreement": agreement, "max_abs_diff": worst,
            "tolerance": tolerance, "failures": failures}
