"""Host-side OpenVINO quantizers: FP16 weights, nncf INT8 PTQ, nncf INT8 with accuracy control.

``nncf.quantize_with_accuracy_control`` quantizes, measures the validation
metric, and reverts the most harmful layers to float until the drop is within
``max_drop``; it is given the gate's own budget (``--gate`` points) and the
run's validation images. The gate then re-measures the result independently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import ExportError


def _xml(files: Sequence[Path]) -> Path:
    found = [Path(f) for f in files if str(f).endswith(".xml")]
    if not found:
        raise ExportError("no OpenVINO .xml model to quantize among " + ", ".join(map(str, files)))
    return found[0]


def _save(model: Any, out_dir: Path, compress: bool) -> list[Path]:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=compress)
    return [xml, xml.with_suffix(".bin")]


def fp16_weights(files: Sequence[Path], out_dir: Path, batches: list[np.ndarray], options: dict[str, Any]) -> list[Path]:
    import openvino as ov

    options.setdefault("report", {}).update(weights="fp16", compress_to_fp16=True)
    return _save(ov.Core().read_model(str(_xml(files))), out_dir, compress=True)


def int8_ptq(files: Sequence[Path], out_dir: Path, batches: list[np.ndarray], options: dict[str, Any]) -> list[Path]:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(_xml(files)))
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                              target_device=nncf.TargetDevice.CPU)
    options.setdefault("report", {}).update(tool="nncf.quantize", nncf=nncf.__version__,
                                            calibration_images=sum(len(b) for b in batches))
    return _save(quantized, out_dir, compress=False)


def int8_accuracy_control(files: Sequence[Path], out_dir: Path, batches: list[np.ndarray],
                          options: dict[str, Any]) -> list[Path]:
    import nncf
    import openvino as ov

    validation = options.get("validation")
    if not validation:
        raise ExportError("accuracy-control needs the validation set (options['validation'])")
    x, y, decide = validation["x"], validation["y"], validation["decide"]
    items = [(x[i:i + 1], int(y[i])) for i in range(len(y))]

    def validate(compiled: Any, data: Any) -> tuple[float, list[float]]:
        output = compiled.outputs[0]
        per_item = [float(decide(np.asarray(compiled(item[0])[output]))[0] == item[1]) for item in data]
        return float(np.mean(per_item)) if per_item else 0.0, per_item

    model = ov.Core().read_model(str(_xml(files)))
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(batches), nncf.Dataset(items, lambda item: item[0]), validate,
        max_drop=float(options.get("gate", 1.0)) / 100.0, drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(batches), target_device=nncf.TargetDevice.CPU)
    options.setdefault("report", {}).update(tool="nncf.quantize_with_accuracy_control", nncf=nncf.__version__,
                                            max_drop=float(options.get("gate", 1.0)) / 100.0,
                                            validation_images=len(items))
    return _save(quantized, out_dir, compress=False)
