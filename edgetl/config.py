"""Pydantic models for the run config, the target profile and the fleet file.

Every loader names the file, the field and what was expected in a one-line
:class:`ConfigError`. ``--set a.b=value`` overrides are applied to the raw YAML
before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgetl.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- run config ---------------------------------------------------------------
class DataConfig(_Strict):
    train: str
    val: str | None = None
    val_split: float | None = Field(default=None, gt=0, lt=1)
    test: str | None = None
    target_unlabeled: str | None = None

    @model_validator(mode="after")
    def _one_val(self):
        if self.val and self.val_split:
            raise ValueError("give either 'val' (a folder) or 'val_split' (a fraction), not both")
        return self


class BackboneConfig(_Strict):
    name: str = "efficientnet_lite0"
    pretrained: bool = True
    weights: str | None = None


class StrategyConfig(_Strict):
    name: str = "finetune"
    options: dict[str, Any] = Field(default_factory=dict)


class ScheduleConfig(_Strict):
    kind: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_epochs: float = Field(default=1, ge=0)
    patience: int = Field(default=3, ge=1)


class EarlyStopping(_Strict):
    metric: Literal["balanced_accuracy", "accuracy", "loss", "roc_auc"] = "balanced_accuracy"
    patience: int | None = Field(default=5, ge=1)


class ThresholdPolicy(_Strict):
    policy: Literal["argmax", "recall"] = "argmax"
    class_: str | None = Field(default=None, alias="class")
    target: float | None = Field(default=None, gt=0, le=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _recall_needs_class(self):
        if self.policy == "recall" and (not self.class_ or self.target is None):
            raise ValueError("policy 'recall' needs 'class' (e.g. defect) and 'target' (e.g. 0.99)")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1.0e-3, gt=0)
    image_size: int | None = Field(default=None, ge=16)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(default=0.01, ge=0)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    class_weights: Literal["none", "balanced", "sqrt"] = "none"
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    grad_clip: float | None = Field(default=None, gt=0)
    threshold: ThresholdPolicy = Field(default_factory=ThresholdPolicy)
    baseline: Literal["none", "scratch", "linear-probe"] = "none"
    baseline_budget: Literal["wall_clock", "epochs"] = "wall_clock"
    seed: int = 0
    tta: list[str] = Field(default_factory=list)


class LoggerConfig(_Strict):
    """One experiment tracker: ``tensorboard``, or ``{name: mlflow, options: {tracking_uri: ...}}``."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


AUGMENTATIONS = ("hflip", "vflip", "rot90", "color_jitter", "random_resized_crop", "rotate",
                 "cutout", "mixup", "cutmix")


class RunConfig(_Strict):
    name: str
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: list[str] = Field(default_factory=lambda: ["hflip", "vflip", "rot90", "color_jitter"])
    loggers: list[LoggerConfig] = Field(default_factory=list)

    @field_validator("augment")
    @classmethod
    def _known_aug(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation '{item}' (known: {', '.join(AUGMENTATIONS)})")
        return value


# -- target profile -----------------------------------------------------------
class RuntimeSettings(_Strict):
    device: str = "CPU"
    performance_hint: Literal["LATENCY", "THROUGHPUT"] | None = None
    providers: list[str] = Field(default_factory=list)
    threads: int | None = Field(default=None, ge=1)


class InputConstraints(_Strict):
    batch: int = Field(default=1, ge=1)
    dynamic_batch: bool = False
    max_image_size: int | None = Field(default=None, ge=16)


class EngineBuild(_Strict):
    on_device: bool = True
    workspace_mb: int = Field(default=1024, ge=64)
    dla_core: int | None = Field(default=None, ge=0)
    needs: list[str] = Field(default_factory=list)
    typical_minutes: float | None = None


class TargetProfile(_Strict):
    name: str
    description: str = ""
    format: Literal["onnx", "openvino", "tensorrt"]
    arch: Literal["x86_64", "aarch64"] = "x86_64"
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    precisions: list[Literal["fp32", "fp16", "int8"]]
    fallback: list[str] = Field(description="ordered chain, e.g. int8/ptq, int8/accuracy-control, fp16, fp32")
    input: InputConstraints = Field(default_factory=InputConstraints)
    agent_port: int = Field(default=8470, ge=1, le=65535)
    engine_build: EngineBuild | None = None

    @model_validator(mode="after")
    def _chain_in_precisions(self):
        for step in self.fallback:
            precision = step.split("/", 1)[0]
            if precision not in self.precisions:
                raise ValueError(f"fallback step '{step}' uses precision '{precision}', "
                                 f"not in precisions {self.precisions}")
        return self


# -- fleet file -----------------------------------------------------------------
class FleetDevice(_Strict):
    name: str
    url: str
    token_file: str | None = None
    token_env: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_token(self):
        if bool(self.token_file) == bool(self.token_env):
            raise ValueError("give exactly one of 'token_file' or 'token_env'")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url '{self.url}' must start with https:// (or http://)")
        return self


class FleetFile(_Strict):
    devices: list[FleetDevice] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self):
        names = [d.name for d in self.devices]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"device names must be unique; repeated: {', '.join(dupes)}")
        return self


# -- loading --------------------------------------------------------------------
def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing or malformed file is a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings to nested dicts; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. train.epochs=5")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        node = data
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is not a section")
            node = child
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


def format_validation_error(source: str, exc: ValidationError) -> str:
    """``source: field.path: message`` for the first error (plus a count of others)."""
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    shown = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {msg}{shown}{more}"


def validate(model: type[M], data: Any, source: str) -> M:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def load(model: type[M], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> M:
    """Read ``path`` as YAML, apply ``--set`` overrides, validate into ``model``."""
    data = read_yaml(path)
    if overrides and isinstance(data, dict):
        data = apply_overrides(data, overrides)
    return validate(model, data, str(path))


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    return load(RunConfig, path, overrides)


def load_target_profile(path: str | Path) -> TargetProfile:
    return load(TargetProfile, path)


def load_fleet(path: str | Path) -> FleetFile:
    return load(FleetFile, path)
