"""Built-in ONNX target (ONNX Runtime on the device) and its quantizers.

Export, the runtime and the quantization passes it shares with the OpenVINO and
TensorRT targets are :mod:`edgetl.onnxtools` (the public ONNX SDK); what is this
target's own is its profile keys (:mod:`edgetl_builtins.onnx.profile`) and its
INT8 methods (:mod:`edgetl_builtins.onnx.quantize`: the shared calibration of
the plain and accuracy-aware steps, the float-prefix and sensitivity searches).
Registration imports nothing heavy: those load on use.
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

__all__: list[str] = []  # nothing for other plugins: what the built-in targets share is edgetl.onnxtools


class OnnxTarget(Target):
    name = "onnx"
    description = "ONNX (dynamo exporter, opset 20) run by ONNX Runtime"
    precisions = ("fp32", "fp16", "int8")
    fallback = (FallbackStep("int8", "ptq"), FallbackStep("int8", "accuracy-aware"),
                FallbackStep("fp16"), FallbackStep("fp32"))
    requires = ("onnxruntime",)
    extra = "onnxruntime"
    runtime_packages = ("onnxruntime",)
    export_requires = ("torch", "onnx", "onnxscript")
    # an ONNX file runs on any CPU architecture ONNX Runtime supports; its INT8 steps follow the host's VNNI
    bound_to = ("cpu_features",)

    def runtime_distributions(self) -> dict[str, tuple[str, ...]]:
        return {"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}

    def profile_model(self) -> Any:
        from edgetl_builtins.onnx.profile import OnnxProfile

        return OnnxProfile

    def export(self, model: Any, example: Any, out_dir: Path, spec: ExportSpec) -> list[Path]:
        from edgetl.onnxtools import export_onnx

        return [export_onnx(model, example, Path(out_dir) / "model.onnx",
                            dynamic_batch=spec.dynamic_batch, report=spec.report)]

    def load(self, files: Sequence[Path], manifest: Manifest,
             options: dict[str, Any] | None = None) -> Runtime:
        from edgetl.onnxtools import load_runtime

        return load_runtime(files, manifest, options)


class _OnnxQuantizer(OnnxFileQuantizer):
    """This target's quantizers: ``impl`` names the function of :mod:`edgetl_builtins.onnx.quantize` that runs."""

    target = "onnx"
    impl = ""

    def quantize_file(self, src: Path, dst: Path, ctx: QuantizeContext) -> None:
        from edgetl_builtins.onnx import quantize

        getattr(quantize, self.impl)(src, dst, ctx)


class OnnxFp16(_OnnxQuantizer):
    name, precision, method, impl = "onnx-fp16", "fp16", "default", "fp16"
    description = "float16 weights and compute, float32 inputs/outputs"


class OnnxInt8Ptq(_OnnxQuantizer):
    name, precision, method, impl = "onnx-int8-ptq", "int8", "ptq", "int8_ptq"
    description = "static INT8 QDQ, per-channel weights (reduce_range on x86 without VNNI)"


class OnnxInt8AccuracyAware(_OnnxQuantizer):
    name, precision, method, impl = "onnx-int8-accuracy-aware", "int8", "accuracy-aware", "int8_accuracy_aware"
    description = "INT8 QDQ with the most sensitive layers left in float (per-layer sensitivity pass)"


@hookimpl
def edgetl_targets(register):
    register(OnnxTarget())


@hookimpl
def edgetl_quantizers(register):
    register(OnnxFp16())
    register(OnnxInt8Ptq())
    register(OnnxInt8AccuracyAware())
