"""Built-in TensorRT target: ONNX + build settings in the bundle, engine built on the device.

A TensorRT engine is tied to the GPU model and the TensorRT/CUDA version
(NVIDIA/TensorRT#2105), so the host never ships one: it ships the ONNX model
(float, FP16, or explicit INT8 Q/DQ) and the build settings; the device builds
a strongly typed engine on first load, with progress, and caches it keyed by
(GPU, TensorRT version, bundle hash). The host gates the ONNX it ships with
ONNX Runtime (``load_for_gate``: :func:`edgetl.onnxtools.load_runtime`); the
device's reference check is the gate that counts for this target. Export and
quantization are :mod:`edgetl.onnxtools` too.

Registration imports nothing heavy; :mod:`edgetl_builtins.tensorrt.engine`
(tensorrt, cuda-python; no torch) loads on the device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.api import ExportSpec, FallbackStep, QuantizeContext, Runtime, Target
from edgetl.hookspecs import hookimpl
from edgetl.onnxtools import OnnxFileQuantizer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest

MIN_TENSORRT = "10.0"  # strongly typed networks + explicit (Q/DQ) INT8 without implicit calibration


class TensorRtTarget(Target):
    name = "tensorrt"
    description = "ONNX + build settings; strongly typed TensorRT engine built and cached on the device"
    precisions = ("fp32", "fp16", "int8")
    fallback = (FallbackStep("int8", "qdq"), FallbackStep("fp16"), FallbackStep("fp32"))
    requires = ("tensorrt",)
    extra = "tensorrt"
    runtime_packages = ("onnxruntime",)  # the host gates with ONNX Runtime; TensorRT is the device's business
    export_requires = ("torch", "onnx", "onnxscript")
    gate_requires = ("onnxruntime",)
    # The bundle holds ONNX: the engine plan (tied to GPU and TensorRT version) is built on the device,
    # so an x86 host exports for an aarch64 Jetson. The ONNX Runtime version recorded is the host's gate.
    bound_to = ()

    def runtime_distributions(self) -> dict[str, tuple[str, ...]]:
        return {}

    def profile_model(self) -> Any:
        from edgetl_builtins.tensorrt.profile import TensorRtProfile

        return TensorRtProfile

    def export(self, model: Any, example: Any, out_dir: Path, spec: ExportSpec) -> list[Path]:
        from edgetl.onnxtools import export_onnx

        return [export_onnx(model, example, Path(out_dir) / "model.onnx", dynamic_batch=spec.dynamic_batch,
                            report=spec.report)]

    def build_settings(self, profile: Any, step: FallbackStep, spec: ExportSpec) -> dict[str, Any]:
        """What the device builds: typing, workspace, DLA, explicit optimisation profile (shapes: batch)."""
        engine = getattr(profile, "engine_build", None)
        batch = spec.batch
        max_batch = max(batch, 8) if spec.dynamic_batch else batch
        return {
            "network": "strongly_typed", "precision": step.precision,
            "quantization": "explicit-qdq" if step.precision == "int8" else None,
            "workspace_mb": engine.workspace_mb if engine else 1024,
            "dla_core": engine.dla_core if engine else None,
            "optimization_profile": {"min_batch": 1 if spec.dynamic_batch else batch,
                                     "opt_batch": batch, "max_batch": max_batch},
            "min_tensorrt": MIN_TENSORRT, "cache": "(gpu, tensorrt version, bundle hash)",
        }

    def load_for_gate(self, files: Sequence[Path], manifest: Manifest,
                      options: dict[str, Any] | None = None) -> Runtime:
        """Host stand-in: ONNX Runtime on the exact ONNX the device will build from."""
        from edgetl.onnxtools import load_runtime

        return load_runtime(files, manifest, {"providers": ["CPUExecutionProvider"]})

    def load(self, files: Sequence[Path], manifest: Manifest,
             options: dict[str, Any] | None = None) -> Runtime:
        from edgetl_builtins.tensorrt.engine import load

        return load(files, manifest, options)


class TrtInt8Qdq(OnnxFileQuantizer):
    """Symmetric Q/DQ for TensorRT's explicit quantization: signed INT8 activations and weights, zero points 0,
    per-channel weights, float bias, only the weighted ops (the device builds a strongly typed engine from it)."""

    name, target, precision, method = "tensorrt-int8-qdq", "tensorrt", "int8", "qdq"
    description = "explicit INT8: symmetric per-channel Q/DQ ONNX (quantize_static) for a strongly typed build"

    def quantize_file(self, src: Path, dst: Path, ctx: QuantizeContext) -> None:
        import tempfile

        from edgetl.onnxtools import WEIGHTED_OPS, preprocess, quantize_int8

        batches = list(ctx.calibration)
        with tempfile.TemporaryDirectory(prefix="edgetl-qdq-") as tmp:
            prep = preprocess(src, Path(tmp) / "prep.onnx")
            quantize_int8(prep, dst, batches, symmetric=True)
        ctx.report.update(format="QDQ", symmetric=True, per_channel=True, activations="int8", weights="int8",
                          ops=list(WEIGHTED_OPS), calibration_images=sum(len(b) for b in batches))


class TrtFp16(OnnxFileQuantizer):
    """Float16 ONNX, as the onnx target's ``onnx-fp16`` makes it: the device builds from ONNX."""

    name, target, precision, method = "tensorrt-fp16", "tensorrt", "fp16", "default"
    description = "float16 ONNX (float32 I/O) for a strongly typed FP16 build"

    def quantize_file(self, src: Path, dst: Path, ctx: QuantizeContext) -> None:
        from edgetl.onnxtools import to_fp16

        to_fp16(src, dst)
        ctx.report.update(keep_io_types=True)


@hookimpl
def edgetl_targets(register):
    register(TensorRtTarget())


@hookimpl
def edgetl_quantizers(register):
    register(TrtInt8Qdq())
    register(TrtFp16())
