"""The OpenVINO target's device-profile keys (``Target.profile_model``): its ``runtime`` section.

Imported only when a profile is loaded (pydantic), never by ``edgetl --help``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class OvRuntimeSettings(BaseModel):
    """``runtime`` of an OpenVINO profile: what ``openvino.Core.compile_model`` is given."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(default="CPU", description="OpenVINO device name: CPU, GPU, NPU, AUTO, …")
    performance_hint: Literal["LATENCY", "THROUGHPUT"] | None = Field(
        default=None, description="OpenVINO PERFORMANCE_HINT (default: the plugin's)")
    threads: int | None = Field(default=None, ge=1, description="INFERENCE_NUM_THREADS (default: OpenVINO's)")


class OpenVinoProfile(BaseModel):
    """The keys an ``openvino`` profile adds to the common ones."""

    model_config = ConfigDict(extra="forbid")

    runtime: OvRuntimeSettings = Field(default_factory=OvRuntimeSettings)
