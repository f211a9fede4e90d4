"""Request and response models of the agent API: the OpenAPI document is generated from them.

Documents that carry manifests or reports stay open (``extra="allow"``): their
own shapes are defined by the bundle schema (docs/schemas/manifest.schema.json)
and the install stages.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDoc(BaseModel):
    error: str = Field(description="one line saying what went wrong and what to do")


class HealthDoc(BaseModel):
    status: Literal["ok", "degraded"] = Field(description="ok: the agent works (serving or ready for an "
                                                          "install); degraded: installed models fail to load")
    serving: bool = Field(default=False, description="whether a model answers /v1/predict")
    model: str | None = Field(default=None, description="the serving model's model_version")
    reason: str | None = Field(default=None, description="why no model serves (none installed yet, or degraded)")


class InfoDoc(_Open):
    device: dict[str, Any] = Field(description="arch, os, python, cpu, gpus, versions, runtimes")
    current: dict[str, Any] | None = Field(description="the serving bundle's manifest")
    previous: dict[str, Any] | None = Field(description="the manifest kept for rollback")
    serving: dict[str, Any] | None
    trusted_keys: list[str]
    max_bundle_bytes: int
    limits: dict[str, Any] = Field(default_factory=dict, description="the agent's input caps (docs/deploy.md)")
    pull: dict[str, Any] | None = Field(default=None, description="pull mode (--pull): channel, state, serving and "
                                                                  "tag digests, last error, counters; null otherwise")


class InstallAccepted(BaseModel):
    install_id: str
    status_url: str


class StageDoc(_Open):
    stage: str
    status: str
    seconds: float | None = None


class InstallStatusDoc(_Open):
    install_id: str
    status: Literal["receiving", "running", "installed", "failed"]
    stage: str | None
    progress: float = Field(ge=0, le=1)
    detail: str | None = Field(default=None, description="sub-step of a long stage, e.g. a TensorRT build phase")
    stages: list[StageDoc]
    report: dict[str, Any] = Field(description="verify, signature, compatibility, runtime, reference, switch")
    error: str | None
    started: float
    finished: float | None


class RollbackDoc(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(alias="from")
    to: str


class ThresholdRequest(BaseModel):
    """Strict: ``false``, ``true`` and ``"0.5"`` are refused (422), not coerced to numbers."""

    model_config = ConfigDict(strict=True, extra="forbid")

    threshold: float = Field(ge=0, le=1)


class ThresholdDoc(BaseModel):
    model: str
    threshold: float
    previous_threshold: float | None


class PredictDoc(_Open):
    label: str
    scores: dict[str, float]
    latency_ms: float
    model: str
    anomaly_score: float | None = None
    threshold: float | None = None
    heatmap_png: str | None = Field(default=None, description="base64 PNG, anomaly models, ?heatmap=true")


class SinkSpec(BaseModel):
    model_config = ConfigDict(strict=True)

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class PipelineRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    action: Literal["start", "stop"] = "start"
    source: str | None = None
    source_options: dict[str, Any] = Field(default_factory=dict)
    sinks: list[SinkSpec] = Field(default_factory=list)
    fps_limit: float | None = Field(default=None, gt=0)
    roi: list[int] | None = Field(default=None, min_length=4, max_length=4)


class PipelineStatusDoc(_Open):
    running: bool
    status: dict[str, Any] | None
    saved: dict[str, Any] | None
    autostart: bool


class TriggerDoc(_Open):
    trigger: int = Field(description="software triggers sent to the pipeline's camera so far (this one included)")
    source: str = Field(description="the pipeline's source URI")
