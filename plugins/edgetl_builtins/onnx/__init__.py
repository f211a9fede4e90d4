"""Built-in ONNX target (ONNX Runtime on the device) and its quantizers.

Registration imports nothing heavy: the host half (:mod:`edgetl_builtins.onnx.export`,
:mod:`edgetl_builtins.onnx.quantize`; torch, onnx) and the device half
(:mod:`edgetl_builtins.onnx.runtime`; onnxruntime, no torch) load on use.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.api import ExportSpec, FallbackStep, QuantizeContext, Quantizer, Runtime, Target
from edgetl.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest

# What other plugins may use (docs/plugins.md, "What the built-in plugins share"): these names, from this
# package, never a submodule; each loads its module on first use. tests/test_layers.py enforces it.
_PUBLIC = {
    "export_onnx": ("export", "export_onnx"),  # host: torch -> checked ONNX (dynamo, legacy fallback)
    "load_runtime": ("runtime", "load"),  # device: ONNX Runtime session for the files of a manifest
    "run_static": ("runtime", "run_static"),  # device: any N through a static-batch model (padding)
    "run_static_all": ("runtime", "run_static_all"),
    "tail_nodes": ("quantize", "tail_nodes"),  # host: the float feature tail of a graph
    "QuantizeClock": ("quantize", "Clock"),  # host: budget and throttled progress of a quantizer
    "FIRST_PREFIX": ("quantize", "FIRST_PREFIX"),
}
__all__ = ["FIRST_PREFIX", "OnnxFileQuantizer", "QuantizeClock", "export_onnx", "load_runtime", "run_static",
           "run_static_all", "tail_nodes"]  # _PUBLIC and the class below (tests/test_layers.py reads it)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edgetl_builtins.onnx' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    return getattr(importlib.import_module(f"edgetl_builtins.onnx.{module}"), attr)


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
        from edgetl_builtins.onnx.export import export_onnx

        return [export_onnx(model, example, Path(out_dir) / "model.onnx",
                            dynamic_batch=spec.dynamic_batch, report=spec.report)]

    def load(self, files: Sequence[Path], manifest: Manifest,
             options: dict[str, Any] | None = None) -> Runtime:
        from edgetl_builtins.onnx.runtime import load

        return load(files, manifest, options)


class OnnxFileQuantizer(Quantizer):
    """Quantizes ONNX files with :mod:`edgetl_builtins.onnx.quantize` (``impl`` names the class); the TensorRT target reuses it."""

    target = "onnx"
    requires = ("onnx", "onnxruntime")
    extra = "train"
    impl = ""

    def quantize(self, files: Sequence[Path], out_dir: Path, ctx: QuantizeContext) -> list[Path]:
        from edgetl_builtins.onnx import quantize

        return getattr(quantize, self.impl)().quantize(files, Path(out_dir), ctx)


class OnnxFp16(OnnxFileQuantizer):
    name, precision, method, impl = "onnx-fp16", "fp16", "default", "Fp16"
    description = "float16 weights and compute, float32 inputs/outputs"


class OnnxInt8Ptq(OnnxFileQuantizer):
    name, precision, method, impl = "onnx-int8-ptq", "int8", "ptq", "Int8Ptq"
    description = "static INT8 QDQ, per-channel weights (reduce_range on x86 without VNNI)"


class OnnxInt8AccuracyAware(OnnxFileQuantizer):
    name, precision, method, impl = "onnx-int8-accuracy-aware", "int8", "accuracy-aware", "Int8AccuracyAware"
    description = "INT8 QDQ with the most sensitive layers left in float (per-layer sensitivity pass)"


@hookimpl
def edgetl_targets(register):
    register(OnnxTarget())


@hookimpl
def edgetl_quantizers(register):
    register(OnnxFp16())
    register(OnnxInt8Ptq())
    register(OnnxInt8AccuracyAware())
