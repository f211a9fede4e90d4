"""Pydantic models for the run config, the target profile and the fleet file.

Every loader names the file, the field and what was expected in a one-line
:class:`ConfigError`. ``--set a.b=value`` overrides are applied to the raw YAML
before validation, so they are checked exactly like the file.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgetl.errors import ConfigError, did_you_mean

__all__ = [
    "RunConfig", "DataConfig", "BackboneConfig", "StrategyConfig", "TrainConfig", "ScheduleConfig",
    "EarlyStopping", "ThresholdPolicy", "LoggerConfig", "SliceConfig", "ContinualConfig",
    "AUGMENTATIONS", "TargetProfile", "InputConstraints", "FleetFile", "FleetDevice", "load_run_config",
    "load_target_profile", "resolve_profile", "load_fleet", "format_validation_error",
]


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
    """The operating point: ``argmax``; ``recall`` (a threshold on ``class`` for ``target`` recall on val);
    ``balanced`` (class-prior adjustment, docs/training.md "Middle grades": ``tau`` fixed, or tuned on val
    for balanced accuracy within ``max_accuracy_drop`` of the argmax's accuracy and, with ``min_recall``,
    every class at that recall)."""

    policy: Literal["argmax", "recall", "balanced"] = "argmax"
    class_: str | None = Field(default=None, alias="class")
    target: float | None = Field(default=None, gt=0, le=1)
    tau: float | None = Field(default=None, ge=0, le=5)
    max_accuracy_drop: float = Field(default=0.02, ge=0, le=1)
    min_recall: float | None = Field(default=None, gt=0, le=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """``threshold: argmax`` is short for ``threshold: {policy: argmax}`` (docs/training.md)."""
        return {"policy": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _recall_needs_class(self):
        if self.policy == "recall" and (not self.class_ or self.target is None):
            raise ValueError("policy 'recall' needs 'class' (e.g. defect) and 'target' (e.g. 0.99)")
        if self.policy != "balanced" and (self.tau is not None or self.min_recall is not None):
            raise ValueError("'tau' and 'min_recall' belong to policy 'balanced'")
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
    logit_adjustment: float = Field(default=0.0, ge=0, le=5)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    grad_clip: float | None = Field(default=None, gt=0)
    threshold: ThresholdPolicy = Field(default_factory=ThresholdPolicy)
    baseline: Literal["none", "scratch", "linear-probe", "finetune"] = "none"
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


class SliceConfig(_Strict):
    """One slice attribute of the per-slice report: a manifest column or a folder level."""

    name: str
    manifest: str | None = None
    column: str | None = None
    folder: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self):
        if (self.manifest is None) == (self.folder is None):
            raise ValueError(f"slice '{self.name}': give exactly one of manifest (with column) or folder")
        return self


class ContinualConfig(_Strict):
    """``continual``: how an ``edgetl train --from RUN`` run maps the previous run's classes.

    ``split``: each named old class (the parent) is replaced by its children,
    classes of the new training data that the previous run did not have
    (docs/training.md, "Splitting a class"). The checks that need the
    previous run and the data happen when the run starts.
    """

    split: dict[str, typing.Annotated[list[str], Field(min_length=1)]] = Field(default_factory=dict)

    @field_validator("split")
    @classmethod
    def _children(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for parent, children in value.items():
            for child in children:
                if child in value:
                    raise ValueError(f"'{child}' is split itself; a child must be a new class, not a parent")
                if child in seen:
                    raise ValueError(f"'{child}' is a child of both '{seen[child]}' and '{parent}'")
                seen[child] = parent
        return value


class RunConfig(_Strict):
    name: str
    data: DataConfig
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: list[str] = Field(default_factory=lambda: ["hflip", "vflip", "rot90", "color_jitter"])
    loggers: list[LoggerConfig] = Field(default_factory=list)
    slices: list[SliceConfig] = Field(default_factory=list)
    continual: ContinualConfig = Field(default_factory=ContinualConfig)

    @field_validator("augment")
    @classmethod
    def _known_aug(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in AUGMENTATIONS:
                raise ValueError(f"unknown augmentation '{item}' (known: {', '.join(AUGMENTATIONS)})")
        return value


# -- target profile -----------------------------------------------------------
class InputConstraints(_Strict):
    batch: int = Field(default=1, ge=1)
    dynamic_batch: bool = False
    max_image_size: int | None = Field(default=None, ge=16)


class TargetProfile(_Strict):
    """A device profile (``--target``): the keys every target shares (docs/export.md, "Device profiles").

    ``format`` names any registered target. The settings that belong to one
    runtime (``runtime``'s keys, sections such as TensorRT's ``engine_build``)
    are that target's: :func:`load_target_profile` validates them with the
    model its :meth:`edgetl.api.Target.profile_model` returns (the profile is
    then an instance of :func:`profile_class` for that target). Constructed
    directly, ``runtime`` is any mapping.
    """

    name: str
    description: str = ""
    format: str = Field(description="the registered target (edgetl plugins list): onnx, openvino, tensorrt, …")
    arch: str = Field(default="x86_64", pattern=r"^[A-Za-z0-9_]+$",
                      description="the device's CPU architecture as uname names it (x86_64, aarch64, …)")
    gpu: str | None = Field(default=None, description="part of the device GPU's name (Orin Nano, RTX 4090)")
    runtime: dict[str, Any] = Field(default_factory=dict)
    precisions: list[Literal["fp32", "fp16", "int8"]]
    fallback: list[str] = Field(description="ordered chain, e.g. int8/ptq, int8/accuracy-control, fp16, fp32")
    input: InputConstraints = Field(default_factory=InputConstraints)
    agent_port: int = Field(default=8470, ge=1, le=65535)
    quantize: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="options per quantizer name, validated by that quantizer "
                                          "(e.g. openvino-int8-ptq: {bias_correction: fast})")

    @model_validator(mode="after")
    def _chain_in_precisions(self):
        for step in self.fallback:
            precision = step.split("/", 1)[0]
            if precision not in self.precisions:
                raise ValueError(f"fallback step '{step}' uses precision '{precision}', "
                                 f"not in precisions {self.precisions}")
        return self

    def runtime_settings(self) -> dict[str, Any]:
        """``runtime`` as the manifest's ``target.runtime`` holds it (unset keys left out)."""
        runtime = self.runtime
        if isinstance(runtime, BaseModel):
            return runtime.model_dump(exclude_none=True)
        return {k: v for k, v in dict(runtime).items() if v is not None}


def profile_class(target: Any) -> type[TargetProfile]:
    """:class:`TargetProfile` with ``target``'s own profile keys (:meth:`edgetl.api.Target.profile_model`)."""
    settings = target.profile_model()
    if settings is None:
        return TargetProfile
    # the target's fields first: its 'runtime' replaces the free mapping
    return type(f"TargetProfile[{target.name}]", (settings, TargetProfile), {"model_config": ConfigDict(extra="forbid")})


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


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that holds the keys at ``loc`` (list indexes skipped), or None."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        inner = [a for a in (field.annotation, *_flat_args(field.annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            return None
        model = inner[0]
    return model


def _flat_args(annotation: Any) -> list[Any]:
    args = list(typing.get_args(annotation))
    return args + [b for a in args for b in _flat_args(a)]


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    holder = _model_at(model, loc)
    return [] if holder is None else [f.alias or name for name, f in holder.model_fields.items()]


def format_validation_error(source: str, exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """``source: field.path: message`` for the first error (plus a count of others).

    An unknown key names the nearest known key ("did you mean") and the keys
    that section accepts, rather than pydantic's wording.
    """
    errors = exc.errors()
    # an unknown key first: a renamed section (data: -> dataset:) also makes "data: Field required",
    # and the unknown key is the one that says what to fix
    first = min(errors, key=lambda e: e["type"] != "extra_forbidden")
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    got = first.get("input")
    if first["type"] == "extra_forbidden" and model is not None:
        known = _known_keys(model, tuple(first["loc"][:-1]))
        msg = (f"unknown key '{first['loc'][-1]}'{did_you_mean(str(first['loc'][-1]), known)}"
               + (f" (known here: {', '.join(known)})" if known else ""))
    elif first["type"] == "model_type" and isinstance(got, str) and model is not None:
        known = _known_keys(model, tuple(first["loc"]))
        msg = ("expected a mapping" + (f", e.g. {first['loc'][-1]}: {{name: {got}}}" if "name" in known else "")
               + (f" (keys: {', '.join(known)})" if known else ""))
    shown = "" if first["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {loc}: {msg}{shown}{more}"


def _blamed_override(exc: ValidationError, overrides: list[str] | tuple[str, ...]) -> str | None:
    """The ``--set`` item the first error is about (its key is, or holds, the failing field), if any."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"] if not isinstance(p, int)]
    for item in reversed(overrides):  # the last --set of a key wins, so it is the one to blame
        key = [p for p in item.split("=", 1)[0].strip().split(".") if p]
        # the failing field is the key or below it; or an unknown section the --set itself created
        if key and (loc[: len(key)] == key or (first["type"] == "extra_forbidden" and key[: len(loc)] == loc)):
            return item
    return None


def validate(model: type[M], data: Any, source: str, overrides: list[str] | tuple[str, ...] = ()) -> M:
    """Validate ``data`` into ``model``; an error names ``source`` or the ``--set`` option that caused it."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        item = _blamed_override(exc, overrides)
        where = f"--set {item}" if item else source
        raise ConfigError(format_validation_error(where, exc, model)) from None


PACKAGE_DIR = Path(__file__).resolve().parent


def shipped(folder: str) -> list[str]:
    """Names of the YAML files edgetl ships in ``edgetl/<folder>/`` (``targets``, ``configs``)."""
    return sorted(p.stem for p in (PACKAGE_DIR / folder).glob("*.yaml"))


def resolve_named(path: str | Path, folder: str, what: str) -> Path:
    """``path`` itself when it exists or looks like a path, else the shipped file of that name.

    ``--target x86-openvino-cpu`` finds ``targets/x86-openvino-cpu.yaml`` shipped
    with edgetl (package data, so it works from a wheel too).
    """
    given = Path(path)
    if given.exists() or given.suffix in (".yaml", ".yml") or len(given.parts) > 1:
        return given
    candidate = PACKAGE_DIR / folder / f"{given.name}.yaml"
    if candidate.is_file():
        return candidate
    names = shipped(folder)
    raise ConfigError(f"{path}: no such file, and no shipped {what} of that name"
                      f"{did_you_mean(given.name, names)} (shipped: {', '.join(names) or 'none'})")


def load(model: type[M], path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> M:
    """Read ``path`` as YAML, apply ``--set`` overrides, validate into ``model``."""
    data = read_yaml(path)
    if overrides and isinstance(data, dict):
        data = apply_overrides(data, overrides)
    return validate(model, data, str(path), overrides)


def load_run_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A run config from a file, or by the name of a shipped example (``textures-linear-probe``)."""
    return load(RunConfig, resolve_named(path, "configs", "example config"), overrides)


def plugin_profiles() -> dict[str, Path]:
    """Device profiles the target plugins ship (:meth:`edgetl.api.Target.profiles`): name -> file."""
    from edgetl.plugins import get_manager

    found: dict[str, Path] = {}
    for target in get_manager().all("target"):
        for name, file in target.profiles().items():
            found.setdefault(name, Path(file))
    return found


def resolve_profile(path: str | Path) -> Path:
    """A profile file: ``path`` itself, a profile shipped with edgetl, or one a target plugin ships."""
    given = Path(path)
    if given.exists() or given.suffix in (".yaml", ".yml") or len(given.parts) > 1 \
            or (PACKAGE_DIR / "targets" / f"{given.name}.yaml").is_file():
        return resolve_named(path, "targets", "device profile")
    plugins = plugin_profiles()
    if given.name in plugins:
        return plugins[given.name]
    names = sorted({*shipped("targets"), *plugins})
    raise ConfigError(f"{path}: no such file, and no shipped device profile of that name"
                      f"{did_you_mean(given.name, names)} (shipped: {', '.join(names) or 'none'})")


def load_target_profile(path: str | Path) -> TargetProfile:
    """A device profile from a file, or by name: shipped with edgetl (``x86-openvino-cpu``) or by a plugin.

    The common keys and the target's own (:func:`profile_class`) are validated
    in one pass, so any unknown or misspelt key is one line naming it.
    """
    from edgetl.errors import UnknownComponentError
    from edgetl.plugins import get_manager

    path = resolve_profile(path)
    data = read_yaml(path)
    model: type[TargetProfile] = TargetProfile
    fmt = data.get("format") if isinstance(data, dict) else None
    if isinstance(fmt, str):
        try:
            model = profile_class(get_manager().get("target", fmt))
        except UnknownComponentError as exc:
            raise ConfigError(f"{path}: format: {exc}") from None
    return validate(model, data, str(path))


def load_fleet(path: str | Path) -> FleetFile:
    return load(FleetFile, path)
