"""The bundle manifest's schema, as pydantic models (no torch).

One definition serves three purposes: :func:`edgetl.bundle.verify_bundle`
validates with it on the device (pydantic is a core dependency, so no extra
library is needed there), ``docs/schemas/manifest.schema.json`` is generated
from it (``python -m edgetl.manifest``), and tests check that the two agree.

Figures are fractions in [0, 1]; sizes in bytes; times in seconds.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from edgetl.errors import BundleError

__all__ = [
    "SCHEMA_VERSION", "Manifest", "TargetDoc", "validate_manifest", "as_manifest",
]


SCHEMA_VERSION = 1
"""The manifest's ``schema_version`` this edgetl writes and reads."""
# every path segment starts with a letter, digit, '_' or '-': no '.', '..' or empty segment
MEMBER_PATTERN = r"^(model|reference)(/[A-Za-z0-9_-][A-Za-z0-9._-]*)+$"
Member = Annotated[str, StringConstraints(pattern=MEMBER_PATTERN)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputDoc(_Strict):
    size: list[int] = Field(min_length=2, max_length=2)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    color: Literal["RGB", "BGR"] = "RGB"
    resize: Literal["resize", "letterbox", "center_crop"] = "resize"
    crop_pct: float = 0.875
    roi: list[int] | None = None
    tile: list[int] | None = None


class TargetDoc(_Open):
    """What runs the model: the target plugin, precision, files and runtime settings."""

    format: str = Field(description="target plugin name: onnx | openvino | tensorrt | …")
    precision: Literal["fp32", "fp16", "int8"]
    method: str = "default"
    files: list[Member] = Field(min_length=1, description="members under model/ the target loads")
    profile: str | None = None
    runtime: dict[str, Any] = Field(default_factory=dict)
    batch: int = Field(default=1, ge=1)
    dynamic_batch: bool = False
    build: dict[str, Any] | None = Field(default=None, description="on-device build settings (tensorrt)")


class CompatDoc(_Open):
    arch: str = Field(description="the CPU architecture the bundle is for: the device profile's, else the "
                                  "exporting host's")
    host_arch: str | None = Field(default=None, description="the architecture of the host that exported it")
    gpu: str | None = Field(default=None, description="the GPU the device profile names (part of its name), if any")
    runtimes: dict[str, str] = Field(default_factory=dict, description="library versions used on the host")
    host_cpu: dict[str, Any] = Field(default_factory=dict,
                                     description="model name and ISA flags the INT8 choice was made for")


class AttemptDoc(_Open):
    precision: Literal["fp32", "fp16", "int8"]
    method: str
    passed: bool
    reason: str | None = None
    n: int | None = None
    metric: str | None = None
    reference_metric: float | None = None
    exported_metric: float | None = None
    drop_points: float | None = None
    agreement: float | None = None


class ExportDoc(_Open):
    gate: dict[str, Any]
    attempts: list[AttemptDoc]
    stages: list[dict[str, Any]] = Field(default_factory=list)


class ToleranceDoc(_Strict):
    label_agreement: float = Field(ge=0, le=1, description="minimum fraction of reference labels that must match")
    max_abs_diff: float = Field(ge=0, description="bound on |output - stored output| over all scores")


class ReferenceDoc(_Strict):
    outputs: str = Field(pattern=r"^reference/", description="member holding images, labels and outputs")
    count: int = Field(ge=0)
    precision: Literal["fp32", "fp16", "int8"]
    tolerance: ToleranceDoc


class Manifest(_Strict):
    schema_version: Literal[1]
    name: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    created: str
    bundle_version: int | None = Field(
        default=None, ge=0,
        description="monotonic release number: milliseconds since the Unix epoch (UTC) when the bundle was "
                    "written. The agent refuses a bundle older than the serving one unless a downgrade is "
                    "allowed; a manifest without it is ordered by its 'created' time")
    task: Literal["classify", "anomaly"]
    labels: list[str] = Field(min_length=1)
    threshold: float | None = None
    positive: str | None = None
    output: Literal["probabilities", "anomaly_score"]
    input: InputDoc
    target: TargetDoc
    compat: CompatDoc
    files: dict[Member, Sha256] = Field(description="member name -> SHA-256 hex of every member but manifest and signature")
    provenance: dict[str, Any] = Field(default_factory=dict)
    export: ExportDoc | None = None
    reference: ReferenceDoc | None = None


def validate_manifest(doc: Any, source: str = "manifest.json") -> Manifest:
    """Validate a parsed manifest; a failure is one BundleError naming the field."""
    if not isinstance(doc, dict):
        raise BundleError(f"{source}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("schema_version")
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise BundleError(f"{source}: schema_version {version} is newer than this edgetl reads "
                          f"({SCHEMA_VERSION}); upgrade edgetl")
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise BundleError(f"{source}: {loc}: {err['msg']}{more}") from None


def as_manifest(doc: "Manifest | dict[str, Any]", source: str = "manifest.json") -> Manifest:
    """The validated :class:`Manifest` of ``doc`` (returned as is when it already is one)."""
    return doc if isinstance(doc, Manifest) else validate_manifest(doc, source)


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://example.invalid/edgetl/schemas/manifest.schema.json"
    return schema


if __name__ == "__main__":  # regenerate docs/schemas/manifest.schema.json
    print(json.dumps(json_schema(), indent=2))
