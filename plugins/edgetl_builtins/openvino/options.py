"""The OpenVINO INT8 quantizers' own options (``Quantizer.options_model``).

Imported only when an export validates options (pydantic), never by ``edgetl --help``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OvInt8Options(BaseModel):
    """Options of ``openvino-int8-ptq`` and ``openvino-int8-accuracy-control``."""

    model_config = ConfigDict(extra="forbid")

    bias_correction: Literal["full", "fast"] = Field(
        default="full",
        description="nncf's BiasCorrection (full: each layer's output shift measured with the layers before it "
                    "already quantized, on a fifth of the calibration images) or FastBiasCorrection (fast: "
                    "estimated from the layer alone). ELPV recipe: 185/197 validation decisions kept with full, "
                    "176 with fast (docs/export.md)")
