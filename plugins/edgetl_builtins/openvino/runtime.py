"""Device half of the OpenVINO target: ``openvino.Core`` with the profile's device and hint (no torch).

Inference precision is pinned so the device computes what the host gated:
FP32 and INT8 models run their float parts in f32 (OpenVINO would otherwise
pick bf16 on CPUs with AMX/AVX512-BF16), FP16 models in f16 where the device
advertises FP16, else f32.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.api import Runtime
from edgetl.errors import BundleError
from edgetl.onnxtools import run_static, run_static_all

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest


class OpenVinoModel(Runtime):
    def __init__(self, xml: Path, runtime: dict[str, Any], precision: str):
        import openvino as ov

        core = ov.Core()
        device = str(runtime.get("device") or "CPU")
        base = device.split(":")[-1].split(",")[0] if device.startswith(("AUTO", "MULTI", "HETERO")) else device
        if not device.startswith(("AUTO", "MULTI", "HETERO")) and base.split(".")[0] not in {
                d.split(".")[0] for d in core.available_devices}:
            raise BundleError(f"OpenVINO device '{device}' is not available here "
                              f"(available: {', '.join(core.available_devices) or 'none'})")
        config: dict[str, Any] = {}
        if runtime.get("performance_hint"):
            config["PERFORMANCE_HINT"] = runtime["performance_hint"]
        if runtime.get("threads"):
            config["INFERENCE_NUM_THREADS"] = int(runtime["threads"])
        inference_precision = "f32"
        if precision == "fp16":
            try:
                caps = core.get_property(base, "OPTIMIZATION_CAPABILITIES")
            except Exception:
                caps = []
            inference_precision = "f16" if "FP16" in caps else "f32"
        config["INFERENCE_PRECISION_HINT"] = inference_precision
        try:
            self.compiled = core.compile_model(core.read_model(str(xml)), device, config)
        except Exception as exc:
            raise BundleError(f"{xml}: OpenVINO cannot compile the model for {device}: {exc}") from exc
        self.request = self.compiled.create_infer_request()
        shape = self.compiled.inputs[0].get_partial_shape()
        self.fixed_batch = shape[0].get_length() if shape[0].is_static else None
        self.output = self.compiled.outputs[0]
        self.device, self.precision, self.inference_precision = device, precision, inference_precision
        self.version = ov.get_version()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.request.infer({0: batch})[self.output]).copy()

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(run_static(self._run, batch, self.fixed_batch), dtype=np.float32)

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        outputs = list(self.compiled.outputs)

        def run_one(chunk: np.ndarray) -> list[np.ndarray]:
            result = self.request.infer({0: chunk})
            return [np.asarray(result[o]).copy() for o in outputs]

        outs = run_static_all(run_one, batch, self.fixed_batch)
        names = ["output"] + [o.get_any_name() if o.get_names() else f"output_{i}" for i, o in enumerate(outputs)][1:]
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(names, outs, strict=True)}

    def info(self) -> dict[str, Any]:
        return {"runtime": "openvino", "version": self.version, "device": self.device,
                "precision": self.precision, "inference_precision": self.inference_precision,
                "batch": self.fixed_batch or "dynamic"}

    def close(self) -> None:
        self.request = None
        self.compiled = None


def load(files: Sequence[Path], manifest: Manifest, options: dict[str, Any] | None = None) -> Runtime:
    runtime = {**manifest.target.runtime, **(options or {})}
    xml = [Path(f) for f in files if str(f).endswith(".xml")]
    if not xml:
        raise BundleError("the bundle's target files hold no OpenVINO .xml model")
    if not xml[0].with_suffix(".bin").exists():
        raise BundleError(f"{xml[0].with_suffix('.bin')}: the IR weights file is missing")
    return OpenVinoModel(xml[0], runtime, manifest.target.precision)
