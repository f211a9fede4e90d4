"""The TensorRT target's device-profile keys (``Target.profile_model``): ``runtime`` and ``engine_build``.

Imported only when a profile is loaded (pydantic), never by ``edgetl --help``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrtRuntimeSettings(BaseModel):
    """``runtime`` of a TensorRT profile."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(default="GPU", description="informative: the engine runs on the GPU (or a DLA core)")
    engine_cache: str | None = Field(default=None, description="folder for built engines (default: "
                                                               "$EDGETL_TRT_CACHE or ~/.cache/edgetl/tensorrt)")


class EngineBuild(BaseModel):
    """``engine_build``: how the device builds the engine from the bundle's ONNX (the manifest's ``target.build``)."""

    model_config = ConfigDict(extra="forbid")

    on_device: bool = Field(default=True, description="the engine is built on the device (always, today)")
    workspace_mb: int = Field(default=1024, ge=64, description="TensorRT workspace memory pool, MiB")
    dla_core: int | None = Field(default=None, ge=0, description="run on this DLA core (Jetson AGX), GPU fallback")
    needs: list[str] = Field(default_factory=list, description="what the device must have (documentation)")
    typical_minutes: float | None = Field(default=None, description="how long a first build takes (documentation)")


class TensorRtProfile(BaseModel):
    """The keys a ``tensorrt`` profile adds to the common ones."""

    model_config = ConfigDict(extra="forbid")

    runtime: TrtRuntimeSettings = Field(default_factory=TrtRuntimeSettings)
    engine_build: EngineBuild | None = None
