"""The ONNX target's device-profile keys (``Target.profile_model``): its ``runtime`` section.

Imported only when a profile is loaded (pydantic), never by ``edgetl --help``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class OrtRuntimeSettings(BaseModel):
    """``runtime`` of an ONNX Runtime profile: what the device's session is created with."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(default="CPU", description="CPU or GPU (informative; the providers decide)")
    providers: list[str] = Field(default_factory=list,
                                 description="ONNX Runtime execution providers in order, e.g. [CPUExecutionProvider]")
    threads: int | None = Field(default=None, ge=1, description="intra-op threads (default: ONNX Runtime's)")


class OnnxProfile(BaseModel):
    """The keys an ``onnx`` profile adds to the common ones."""

    model_config = ConfigDict(extra="forbid")

    runtime: OrtRuntimeSettings = Field(default_factory=OrtRuntimeSettings)
