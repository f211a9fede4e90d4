"""Host half of the OpenVINO target: torch -> ONNX (dynamo) -> OpenVINO IR (FP32 weights).

Converting the dynamo ONNX graph (rather than tracing torch again) reuses the
clean graph the ONNX target gates, and takes under a second for EfficientNet-Lite0.
``save_model`` compresses weights to FP16 *by default*; the FP32 export turns
that off, and FP16 is the explicit ``fp16/weights`` quantizer instead.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgetl.errors import ExportError


def export_ir(model: Any, example: Any, out_dir: Path, *, dynamic_batch: bool, report: dict[str, Any]) -> list[Path]:
    import openvino as ov

    from edgetl.onnxtools import export_onnx

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgetl-ov-") as tmp:
        onnx_path = export_onnx(model, example, Path(tmp) / "model.onnx", dynamic_batch=dynamic_batch,
                                report=report)
        try:
            ov_model = ov.convert_model(str(onnx_path))
        except Exception as exc:
            raise ExportError(f"openvino.convert_model failed on the exported ONNX: {exc}") from exc
    xml = out_dir / "model.xml"
    ov.save_model(ov_model, str(xml), compress_to_fp16=False)
    report.update(ir="OpenVINO IR", converted_from="onnx", openvino=ov.get_version())
    return [xml, xml.with_suffix(".bin")]
