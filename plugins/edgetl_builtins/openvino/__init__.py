"""Built-in OpenVINO target (OpenVINO IR run by ``openvino.Core``) and its quantizers.

Registration imports nothing heavy: the host half (:mod:`edgetl_builtins.openvino.export`,
:mod:`edgetl_builtins.openvino.quantize`; torch, onnx, openvino, nncf) and the device
half (:mod:`edgetl_builtins.openvino.runtime`; openvino, no torch) load on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.api import ExportSpec, FallbackStep, QuantizeContext, Quantizer, Runtime, Target
from edgetl.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest


class OpenVinoTarget(Target):
    name = "openvino"
    description = "OpenVINO IR (from the dynamo ONNX graph) run by openvino.Core"
    precisions = ("fp32", "fp16", "int8")
    fallback = (FallbackStep("int8", "ptq"), FallbackStep("int8", "accuracy-control"),
                FallbackStep("fp16", "weights"), FallbackStep("fp32"))
    requires = ("openvino",)
    extra = "openvino"
    runtime_packages = ("openvino",)
    bound_to = ("cpu_features",)  # IR is compiled for the device when it loads; INT8 kernels follow its ISA

    def profile_model(self) -> Any:
        from edgetl_builtins.openvino.profile import OpenVinoProfile

        return OpenVinoProfile
    export_requires = ("torch", "onnx", "onnxscript", "openvino")

    def export(self, model: Any, example: Any, out_dir: Path, spec: ExportSpec) -> list[Path]:
        from edgetl_builtins.openvino.export import export_ir

        return export_ir(model, example, Path(out_dir), dynamic_batch=spec.dynamic_batch, report=spec.report)

    def load(self, files: Sequence[Path], manifest: Manifest,
             options: dict[str, Any] | None = None) -> Runtime:
        from edgetl_builtins.openvino.runtime import load

        return load(files, manifest, options)


class _OvQuantizer(Quantizer):
    target = "openvino"
    requires = ("openvino", "nncf")
    extra = "train"
    impl = ""

    def quantize(self, files: Sequence[Path], out_dir: Path, ctx: QuantizeContext) -> list[Path]:
        from edgetl_builtins.openvino import quantize

        return getattr(quantize, self.impl)(files, Path(out_dir), ctx)


class OvFp16Weights(_OvQuantizer):
    name, precision, method, impl = "openvino-fp16-weights", "fp16", "weights", "fp16_weights"
    description = "FP16-compressed weights (half the file; inference precision per device)"


class _OvInt8(_OvQuantizer):
    def options_model(self) -> Any:
        from edgetl_builtins.openvino.options import OvInt8Options

        return OvInt8Options


class OvInt8Ptq(_OvInt8):
    name, precision, method, impl = "openvino-int8-ptq", "int8", "ptq", "int8_ptq"
    description = "nncf.quantize: INT8 post-training quantization"


class OvInt8AccuracyControl(_OvInt8):
    name, precision, method, impl = "openvino-int8-accuracy-control", "int8", "accuracy-control", "int8_accuracy_control"
    description = "nncf.quantize_with_accuracy_control: INT8, reverting layers until the drop fits the gate"


@hookimpl
def edgetl_targets(register):
    register(OpenVinoTarget())


@hookimpl
def edgetl_quantizers(register):
    register(OvFp16Weights())
    register(OvInt8Ptq())
    register(OvInt8AccuracyControl())
