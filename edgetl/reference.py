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
from edgetl.manifest import Manifest, as_manifest
from edgetl.metrics import decide, flips
from edgetl.preprocess import preprocess_file

# Per precision: minimum fraction of matching labels and bound on |output - stored output|.
# INT8 kernels legitimately differ across CPUs (VNNI vs AVX2 accumulation), so its bound is loose
# and label agreement, not bit-equality, is what must hold.
TOLERANCES: dict[str, dict[str, float]] = {
    "fp32": {"label_agreement": 1.0, "max_abs_diff": 1e-3},
    "fp16": {"label_agreement": 0.95, "max_abs_diff": 2e-2},
    "int8": {"label_agreement": 0.9, "max_abs_diff": 0.15},
}


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


def _map_diff(item: dict[str, Any], amap: np.ndarray | None) -> float:
    """Largest |difference| between the stored pooled map and this runtime's (inf if missing or reshaped)."""
    want = np.asarray(item["map"], dtype=np.float32)
    if amap is None or amap.shape != want.shape:
        return float("inf")
    return float(np.max(np.abs(amap - want)))


def run_maps(paths: list[Path], spec: InputSpec, runtime: Any) -> list[np.ndarray | None]:
    """Each image's pooled anomaly map through ``runtime.predict_outputs`` (None for single-output models)."""
    return [pooled_maps(runtime.predict_outputs(preprocess_file(p, spec))) for p in paths]


def read_outputs_doc(extracted_dir: Path, manifest: Manifest) -> list[dict[str, Any]]:
    if manifest.reference is None:
        raise BundleError("the manifest has no reference set")
    path = Path(extracted_dir) / manifest.reference.outputs
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return list(doc["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{path}: unreadable reference outputs ({exc})") from None


def _compare(item: dict[str, Any], got: np.ndarray, manifest: Manifest, bound: float) -> tuple[int, int, float, str | None]:
    """One image: (agreeing decisions, decisions, max |diff|, failure line or None).

    Decisions follow :func:`edgetl.metrics.decide` under the manifest's
    operating point; a changed decision whose stored output was a tie
    (within :data:`edgetl.metrics.TIE_MARGIN` of the boundary) is not a disagreement.
    """
    want = np.asarray(item["output"], dtype=np.float32)
    if want.shape != got.shape:
        return 0, 1, 0.0, f"{item['file']}: output shape {list(got.shape)}, stored {list(want.shape)}"
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    rule = (manifest.labels, manifest.threshold, manifest.positive)
    real, _ = flips(got, want, *rule)
    if real.any():
        return (int((~real).sum()), real.size, diff, f"{item['file']}: label {decide(got, *rule).tolist()} here, "
                f"{decide(want, *rule).tolist()} on the host")
    if diff > bound:
        return real.size, real.size, diff, f"{item['file']}: scores differ by {diff:.3g} > {bound:.3g}"
    return real.size, real.size, diff, None


def check_reference(extracted_dir: str | Path, manifest: Manifest | dict[str, Any], runtime: Any) -> dict[str, Any]:
    """Re-run the reference images and compare against the stored outputs.

    Returns:
        ``{passed, n, label_agreement, max_abs_diff, tolerance, failures}``;
        ``failures`` lists one line per image whose label differs or whose
        scores moved more than the bound.
    """
    extracted_dir = Path(extracted_dir)
    manifest = as_manifest(manifest)
    images = read_outputs_doc(extracted_dir, manifest)
    tolerance = manifest.reference.tolerance.model_dump()
    spec = InputSpec.from_dict(manifest.input.model_dump())
    paths = [extracted_dir / item["file"] for item in images]
    outputs = run_images(paths, spec, runtime)
    maps = run_maps(paths, spec, runtime) if any("map" in item for item in images) else [None] * len(images)
    agree, total, worst, failures = 0, 0, 0.0, []
    for item, got, amap in zip(images, outputs, maps, strict=True):
        same, count, diff, failure = _compare(item, got, manifest, tolerance["max_abs_diff"])
        agree, total, worst = agree + same, total + count, max(worst, diff)
        if failure:
            failures.append(failure)
        if "map" in item:  # anomaly models: the heat map must match too, within the same bound
            map_diff = _map_diff(item, amap)
            worst = max(worst, map_diff)
            if map_diff > tolerance["max_abs_diff"]:
                failures.append(f"{item['file']}: anomaly map differs by {map_diff:.3g} > "
                                f"{tolerance['max_abs_diff']:.3g}")
    agreement = agree / total if total else 1.0
    passed = bool(total) and agreement >= tolerance["label_agreement"] and worst <= tolerance["max_abs_diff"]
    return {"passed": passed, "n": len(images), "label_agreement": agreement, "max_abs_diff": worst,
            "tolerance": tolerance, "failures": failures}
