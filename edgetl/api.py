"""Component types: the contracts every plugin implements.

A plugin registers *instances* of these classes through the hooks in
:mod:`edgetl.hookspecs`; the plugin manager stamps each with ``plugin`` (the name
of the plugin that registered it) so every listing and error can name it.

Nothing here imports an ML framework: types such as ``torch.nn.Module`` appear
only in annotations. Shapes and units are stated in each docstring.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import torch

    from edgetl.manifest import Manifest

__all__ = [
    "BASELINE_KINDS", "BINDINGS", "COMPONENT_TYPES", "OUTPUTS", "PRECISIONS", "RESIZE_MODES", "TASKS",
    "Backbone", "Component", "DistInfo", "ExportSpec", "FallbackStep", "FitContext", "Frame",
    "FrameStream", "GateSettings", "InputSpec", "Logger", "LoggerRun", "ModelFacts", "PipelineControl",
    "PreviousRun", "QuantizeContext", "Quantizer", "Runtime", "Sink", "SinkWriter", "Source",
    "Strategy", "Target", "TrainedModel", "ValidationSet",
]

RESIZE_MODES = ("resize", "letterbox", "center_crop")
"""How a frame becomes the network's input size (:attr:`InputSpec.resize`)."""


def _tie_margin() -> float:
    """:data:`edgetl.metrics.TIE_MARGIN`; :mod:`edgetl.metrics` (numpy) is imported on use so ``edgetl --help``
    stays light."""
    from edgetl.metrics import TIE_MARGIN

    return TIE_MARGIN

TASKS = ("classify", "anomaly")
"""What a model does (:attr:`TrainedModel.task`, :attr:`Strategy.task`)."""
OUTPUTS = ("probabilities", "anomaly_score")
"""What a model returns: (N, K) class probabilities or (N,) normalised anomaly scores."""
PRECISIONS = ("fp32", "fp16", "int8")
"""The precisions a target may hold (:attr:`Target.precisions`)."""
BINDINGS = ("arch", "gpu", "runtime", "cpu_features")
"""What a target's shipped files may be tied to (:attr:`Target.bound_to`)."""


@dataclass(frozen=True)
class InputSpec:
    """What a network expects as input, and how a raw frame gets there.

    Attributes:
        size: (height, width) in pixels of the network input.
        mean: per-channel mean, in the 0..1 scale, in ``color`` order.
        std: per-channel standard deviation, in the 0..1 scale.
        color: channel order the network expects, ``"RGB"`` or ``"BGR"``.
        resize: one of :data:`RESIZE_MODES`; ``resize`` (whole frame, the
            default for inspection), ``letterbox`` or ``center_crop``.
        crop_pct: for ``center_crop``: the crop is ``size / crop_pct`` before
            cropping (ImageNet convention 0.875).
        roi: optional (x, y, w, h) region cut from the frame before resizing.
        tile: optional (rows, cols): split the (ROI of the) frame into tiles,
            each preprocessed as its own image.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    color: str = "RGB"
    resize: str = "resize"
    crop_pct: float = 0.875
    roi: tuple[int, int, int, int] | None = None
    tile: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size), "mean": list(self.mean), "std": list(self.std),
            "color": self.color, "resize": self.resize, "crop_pct": self.crop_pct,
            "roi": list(self.roi) if self.roi else None,
            "tile": list(self.tile) if self.tile else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSpec":
        def tup(v: Any) -> tuple[Any, ...] | None:
            return tuple(v) if v is not None else None

        return cls(
            size=tuple(data["size"]), mean=tuple(data["mean"]), std=tuple(data["std"]),
            color=data.get("color", "RGB"), resize=data.get("resize", "resize"),
            crop_pct=float(data.get("crop_pct", 0.875)), roi=tup(data.get("roi")),
            tile=tup(data.get("tile")),
        )


class Component(ABC):
    """Base of every registered component.

    Attributes:
        kind: the registry a component lives in (``backbone``, ``strategy``, …).
        name: unique per kind; what users type in configs and on the command line.
        description: one line for ``edgetl plugins show``.
        requires: importable module names this component needs to be used.
        extra: the ``edgetl[extra]`` that installs ``requires``.
        install_hint: what to run to get ``requires`` when they are not edgetl's
            (e.g. ``"pip install 'edgetl-foo[gpu]'"``); shown instead of the
            extra when a required module is missing.
        plugin: stamped by the plugin manager at registration.
    """

    kind: ClassVar[str] = ""
    name: str = ""
    description: str = ""
    requires: tuple[str, ...] = ()
    extra: str | None = None
    install_hint: str | None = None
    plugin: str | None = None

    def missing_modules(self) -> list[str]:
        """Required modules that cannot be imported here (checked without importing)."""
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


class Backbone(Component):
    """A pretrained feature extractor (host side, torch).

    Attributes:
        input: the :class:`InputSpec` its weights were trained with.
        feature_dim: D, the width of the pooled features.
    """

    kind = "backbone"
    input: InputSpec = InputSpec()
    feature_dim: int = 0

    @abstractmethod
    def build(self, pretrained: bool = True, weights: str | Path | None = None) -> "torch.nn.Module":
        """Return a module mapping a normalised batch (N, 3, H, W) float32 to pooled features (N, D)."""

    @abstractmethod
    def layer_groups(self, module: "torch.nn.Module") -> list["torch.nn.Module"]:
        """Trainable blocks of ``module`` ordered from input (stem) to output (head)."""

    @abstractmethod
    def feature_maps(self, module: "torch.nn.Module", x: "torch.Tensor") -> list["torch.Tensor"]:
        """Intermediate feature maps (N, C_i, H_i, W_i), shallow to deep, for patch-level methods."""

    def variant(self, name: str) -> "Backbone":
        """For a family registered as ``prefix:*``: the backbone for ``prefix:name``."""
        raise NotImplementedError(f"backbone {self.name!r} has no variants")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a ``--nproc N`` run: ``rank`` of ``world`` processes.

    Attributes:
        rank: 0..world-1; rank 0 writes files and prints.
        world: number of processes (1 when not distributed).
        local_rank: rank on this machine (the CUDA device index).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """True when more than one process trains."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


@dataclass
class TrainedModel:
    """What a strategy's ``fit`` returns.

    Attributes:
        module: any ``torch.nn.Module`` (no base class, no extra methods) mapping
            a normalised (N, 3, H, W) float32 batch to, for ``classify``, (N, K)
            probabilities (rows sum to 1, K = ``len(labels)``) or, for
            ``anomaly``, a tuple ``(score (N,), map (N, 1, H, W))`` of
            normalised anomaly scores (0.5 is the threshold). It must be traceable by ``torch.export``
            (no data-dependent Python control flow): the run directory saves it
            as an ExportedProgram, see ``docs/plugins.md``.
        task: ``classify`` or ``anomaly``.
        labels: class names, index order of the output.
        threshold: optional operating point: the probability of ``positive``
            above which it is predicted. Honoured unless the run config sets
            ``train.threshold.policy: recall`` (the config wins, and the log
            and ``metrics.json`` say so). Requires ``positive``.
        output: ``probabilities`` or ``anomaly_score``.
        positive: the label the threshold applies to (e.g. ``defect``), if any.
        best_epoch: the 1-based epoch whose weights ``module`` holds (None:
            no epochs, e.g. a closed-form strategy).
        timings: named durations in seconds for the report, e.g.
            ``{"feature_seconds": 3.2}``.
        extra: free-form facts, saved in ``metrics.json`` under ``strategy_extra``
            (JSON-serialisable values only).
    """

    module: Any
    task: str
    labels: list[str]
    threshold: float | None = None
    output: str = "probabilities"
    positive: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    best_epoch: int | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class PreviousRun:
    """The trained run a ``--from`` run continues (continual learning; ``docs/training.md``).

    Attributes:
        run_dir: the previous run's directory.
        labels: its class names in its index order; without ``split`` they are
            the first ``len(labels)`` entries of ``FitContext.labels`` (new
            classes follow); with it, the unsplit ones are (see :meth:`parent`).
        new_labels: the classes of this run that the previous one did not have
            (a split class's children among them).
        model: the previous run's saved module (eval only, cannot be trained):
            (N, 3, H, W) -> (N, len(labels)) probabilities; the teacher for
            distillation and the "before" of the forgetting report.
        state_dict: the previous module's weights (plain tensors).
        classifier: an :class:`edgetl.training.Classifier` on ``FitContext.module``
            (which already holds the previous backbone weights) whose head is the
            previous head expanded to ``FitContext.labels``: old rows copied, new
            rows freshly initialised (seeded); :func:`edgetl.training.build_classifier`
            returns it. None when the previous module is not a Classifier the engine
            can read (then only the backbone weights carry over).
        exemplars: ``(image path, label name)`` pairs stored in the previous run
            (``exemplars/index.json``, written by a rehearsal strategy), checked
            against their SHA-256; empty when it stored none.
        threshold: the previous run's operating point (None: argmax).
        positive: the label that threshold is about.
        strategy: the strategy that trained it.
        split: the run config's ``continual.split``: old class -> the classes of
            this run that replace it (empty when none is split).
    """

    run_dir: Path
    labels: list[str]
    new_labels: list[str]
    model: Any
    state_dict: dict[str, Any] = field(default_factory=dict)
    classifier: Any = None
    exemplars: list[tuple[Path, str]] = field(default_factory=list)
    threshold: float | None = None
    positive: str | None = None
    strategy: str = ""
    split: dict[str, list[str]] = field(default_factory=dict)

    def parent(self, label: str) -> str | None:
        """The previous run's class a class of this run belongs to: itself, its split parent, or None (new)."""
        if label in self.labels and label not in self.split:
            return label
        return next((p for p, children in self.split.items() if label in children), None)


@dataclass
class FitContext:
    """Everything a strategy's ``fit`` may use (types and meanings: ``docs/plugins.md``).

    Attributes:
        backbone: the :class:`Backbone` component of the run.
        module: ``torch.nn.Module``, the built backbone: (N, 3, H, W)
            normalised float32 -> pooled features (N, ``backbone.feature_dim``),
            pretrained unless the config says otherwise; on the CPU.
        train: the training split, an :class:`edgetl.training.Split`: a torch
            dataset of ``(x (3, H, W) float32 normalised, y int)`` pairs with the
            run's per-image augmentation, plus ``.plain`` (the same images never
            augmented), ``.labels`` (N,) int and ``.paths``.
        val: the validation split (a Split, never augmented): select on it.
        labels: class names in index order (K of them).
        options: the strategy's ``options`` mapping from the run config, as written.
        config: the whole resolved run config (:class:`edgetl.config.RunConfig`).
        device: the ``torch.device`` to train on.
        unlabeled: optional Split of unlabeled images (labels are -1), or None.
        progress: callback(stage: str, done: int, total: int) for the log.
        log_epoch: callback(row) for one row of ``history.csv``: a
            :class:`edgetl.training.HistoryRow` or a dict (missing keys are fine).
        dist: this process's :class:`DistInfo` (rank 0 of 1 when not distributed).
        input: the :class:`InputSpec` images were prepared with.
        checkpoint: where :func:`edgetl.training.fit_epochs` writes its resume
            checkpoint, or None (baselines: no checkpoint).
        resume_state: the checkpoint ``--resume`` loaded, or None; only
            ``fit_epochs`` reads it.
        time_budget_s: stop training after the epoch that passes this wall-clock
            budget (the scratch baseline gets the main run's time), or None.
        cache_dir: a folder a strategy may keep caches in (frozen features), or
            None for memory only.
        history: the rows logged so far (read only; e.g. plateau rules).
        feature_passes: filled by :func:`edgetl.training.extract_features`, one
            dict per backbone pass (split, images, views, seconds), for the report.
        previous: the run this one continues (``edgetl train --from RUN``), a
            :class:`PreviousRun`, or None.
        run_dir: the run directory being written (it exists), where a strategy
            may store files that belong to the run (a rehearsal buffer); None for
            baselines, which must not write there. Write only on the main process.
    """

    backbone: Backbone
    module: Any
    train: Any
    val: Any
    labels: list[str]
    options: dict[str, Any]
    config: Any
    device: Any
    unlabeled: Any = None
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None
    log_epoch: Callable[[Any], None] = lambda row: None
    dist: DistInfo = field(default_factory=DistInfo)
    input: InputSpec | None = None
    checkpoint: Path | None = None
    resume_state: dict[str, Any] | None = None
    time_budget_s: float | None = None
    cache_dir: Path | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    feature_passes: list[dict[str, Any]] = field(default_factory=list)
    previous: PreviousRun | None = None
    run_dir: Path | None = None


BASELINE_KINDS = ("scratch", "linear-probe", "finetune")
"""Kinds of negative-transfer baseline (``train.baseline``) a strategy may offer."""


class Strategy(Component):
    """An adaptation method: how a pretrained backbone becomes a model for this data.

    Attributes:
        task: the task of the models it returns, ``classify`` or ``anomaly``.
    """

    kind = "strategy"
    task: str = "classify"

    @abstractmethod
    def fit(self, ctx: FitContext) -> TrainedModel:
        """Train on ``ctx.train``, select on ``ctx.val``, return the :class:`TrainedModel`."""

    def options_model(self) -> Any:
        """The pydantic model class of this strategy's ``options``, or None (the default: any mapping).

        When given, :meth:`check_options` validates the run config's
        ``strategy.options`` with it before anything is written (an unknown key
        is one line with "did you mean"), and :meth:`parse_options` returns the
        typed instance in ``fit``. Import pydantic inside the method.
        """
        return None

    def parse_options(self, options: dict[str, Any]) -> Any:
        """``options`` validated by :meth:`options_model` (an instance of it), or as given when there is none.

        Raises:
            ConfigError: one line naming ``strategy.options`` and the key.
        """
        model = self.options_model()
        if model is None:
            return options
        from pydantic import ValidationError

        from edgetl.config import format_validation_error
        from edgetl.errors import ConfigError

        try:
            return model.model_validate(options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(f"strategy.options ({self.name})", exc, model)) from None

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse bad ``options`` before the run starts: ``edgetl train`` calls it before the run
        directory exists, so a typo costs no run and leaves nothing behind.

        The default validates with :meth:`options_model` (nothing when there is
        none). Override it to check options you read from ``ctx.options`` by
        hand; raise :class:`edgetl.errors.ConfigError` naming the key
        (``edgetl.training.resolve_options`` does, for a dict of defaults).
        """
        self.parse_options(options)

    def baseline_options(self, kind: str) -> dict[str, Any] | None:
        """Options with which this strategy trains the ``kind`` baseline (one of :data:`BASELINE_KINDS`).

        The engine asks the registry for a strategy answering the run's
        ``train.baseline``: ``scratch`` (the same architecture from random
        weights, given the main run's time as ``ctx.time_budget_s``) or
        ``linear-probe`` (a frozen pretrained backbone) or ``finetune`` (the
        pretrained backbone fine-tuned on the labelled data alone: the
        source-only baseline of a domain-adaptation strategy). None (the default):
        this strategy does not offer that baseline.
        """
        return None


class Runtime(ABC):
    """A loaded model on this machine (device side: numpy in, numpy out, no torch).

    Returned by :meth:`Target.load` (and :meth:`Target.load_for_gate` on the host).
    """

    @abstractmethod
    def predict(self, batch: "np.ndarray") -> "np.ndarray":
        """Run the model on any number of preprocessed images.

        Args:
            batch: (N, 3, H, W) float32, normalised as the manifest's ``input`` says.

        Returns:
            float32, batch first: (N, K) probabilities, or (N,) normalised
            anomaly scores (:data:`edgetl.metrics.ANOMALY_THRESHOLD` = 0.5 unless
            a threshold is stored). A target exported with a static batch pads
            or loops so that any N works. For a graph with several outputs,
            the first one (anomaly models: the scores).
        """

    def predict_outputs(self, batch: "np.ndarray") -> dict[str, "np.ndarray"]:
        """Every output by name: ``{"output": …}`` plus, for anomaly models, ``"map"`` (N, 1, H, W).

        The default wraps :meth:`predict`; runtimes of multi-output graphs override it.
        """
        return {"output": self.predict(batch)}

    def info(self) -> dict[str, Any]:
        """Facts for reports and ``/v1/info``: ``runtime``, ``version``, ``device``, ``precision``, …"""
        return {}

    def close(self) -> None:
        """Release the runtime's resources."""


@dataclass(frozen=True)
class FallbackStep:
    """One step of a target's precision chain, e.g. (int8, ptq) or (fp16, weights)."""

    precision: str
    method: str = "default"


@dataclass
class ExportSpec:
    """What :meth:`Target.export` is asked to write.

    Attributes:
        batch: the batch dimension of ``example`` (the profile's batch, else 1).
        dynamic_batch: export a dynamic batch axis (``--dynamic-batch`` or the profile).
        profile: the ``--target`` device profile (:class:`edgetl.config.TargetProfile`), or None.
        report: facts the exporter records (opset, exporter, fallback_reason, …);
            they land in the manifest's ``provenance.exporter`` and the export log.
    """

    batch: int = 1
    dynamic_batch: bool = False
    profile: Any = None
    report: dict[str, Any] = field(default_factory=dict)


class Target(Component):
    """An export format plus the runtime that runs it on a device.

    The host half (:meth:`export`) may import torch; the device half
    (:meth:`load`) must not. ``requires``/``extra`` describe the device half;
    ``export_requires``/``export_extra`` the host half.

    Attributes:
        precisions: the precisions this target can hold (``fp32``, ``fp16``, ``int8``).
        fallback: the chain ``--precision auto`` walks, best first.
        export_requires: modules the host needs to export (checked before anything runs).
        export_extra: the ``edgetl[extra]`` that installs them.
        gate_requires: modules the host needs to run :meth:`load_for_gate`;
            None means ``requires`` (the gate runs the device runtime itself).
        runtime_packages: distributions whose versions go into the manifest's ``compat.runtimes``.
        bound_to: what the shipped files are tied to, beyond the format itself
            (:data:`BINDINGS`): ``"arch"`` (native code for one CPU architecture:
            a device of another one is refused), ``"gpu"`` (a plan for one GPU
            model: refused on a device whose GPUs do not match the profile's
            ``gpu``), ``"runtime"`` (a runtime major.minor other than the
            host's is refused, not just warned about), ``"cpu_features"`` (INT8
            kernels chosen for the exporting host's CPU features such as VNNI:
            a device lacking them gets a warning, a refusal under
            ``agent serve --strict-int8``). ONNX and OpenVINO IR declare
            ``("cpu_features",)``: portable files, CPU INT8 kernels; the TensorRT
            target ``()``: it ships ONNX and builds its engine on the device. The
            default, ``("arch", "cpu_features")``, is the cautious one for a
            target that does not say.
    """

    kind = "target"
    precisions: tuple[str, ...] = ("fp32",)
    fallback: tuple[FallbackStep, ...] = (FallbackStep("fp32"),)
    export_requires: tuple[str, ...] = ("torch",)
    export_extra: str | None = "train"
    gate_requires: tuple[str, ...] | None = None
    runtime_packages: tuple[str, ...] = ()
    bound_to: tuple[str, ...] = ("arch", "cpu_features")

    def profile_model(self) -> Any:
        """The pydantic model class that validates a device profile's settings for this target, or None.

        Its fields are the profile keys this target adds to the common ones
        (docs/export.md, "Device profiles"): ``runtime`` (what lands in the
        manifest's ``target.runtime`` and reaches :meth:`load`) and any
        top-level section such as TensorRT's ``engine_build``. A profile for
        this target is validated against the common keys plus these, with
        unknown keys refused ("did you mean"). None (the default): ``runtime``
        is any mapping and no other key is allowed. Import pydantic inside the
        method: ``edgetl --help`` loads every plugin.
        """
        return None

    def runtime_distributions(self) -> dict[str, tuple[str, ...]]:
        """Per ``compat.runtimes`` key (a name of :attr:`runtime_packages`): the distributions that carry
        that runtime on a device, whose version the compatibility check compares with the host's.

        The default: each package is its own distribution. ONNX Runtime answers
        ``{"onnxruntime": ("onnxruntime", "onnxruntime-gpu")}``; a target whose
        recorded versions are host-side facts only (TensorRT records the ONNX
        Runtime that gated it) answers ``{}``: nothing to compare on the device.
        """
        return {package: (package,) for package in self.runtime_packages}

    def profiles(self) -> dict[str, Path]:
        """Named device profiles this target's plugin ships: name -> YAML file.

        ``edgetl export --target NAME`` finds them after the profiles shipped
        with edgetl. Default: none.
        """
        return {}

    @abstractmethod
    def export(self, model: "torch.nn.Module", example: "torch.Tensor", out_dir: Path,
               spec: ExportSpec) -> list[Path]:
        """Write the FP32 model files under ``out_dir`` (created by the target) and return their paths.

        Args:
            model: FP32, eval mode; (N, 3, H, W) float32 normalised -> (N, K)
                probabilities or (N,) anomaly scores.
            example: a (batch, 3, H, W) float32 tensor of real validation images.
            out_dir: a fresh folder inside the export's temporary folder.
            spec: the :class:`ExportSpec`; record facts in ``spec.report``.

        Returns:
            The files the bundle ships under ``model/`` (names must be unique).
        """

    @abstractmethod
    def load(self, files: Sequence[Path], manifest: "Manifest",
             options: dict[str, Any] | None = None) -> Runtime:
        """Load exported (maybe quantized) files into a :class:`Runtime` (device side: no torch).

        Args:
            files: the extracted ``manifest.target.files``, in that order.
            manifest: the validated :class:`edgetl.manifest.Manifest`; read
                ``manifest.target.precision``, ``.runtime``, ``.build`` and so on.
            options: runtime settings that override ``manifest.target.runtime``
                (``threads``, ``device``, ``providers``, ``engine_cache``) and
                ``progress``, a callback(phase: str, done: int, total: int)
                for a slow first load.
        """

    def load_for_gate(self, files: Sequence[Path], manifest: "Manifest",
                      options: dict[str, Any] | None = None) -> Runtime:
        """The runtime the host's gate measures: :meth:`load` unless the device runtime cannot run here.

        A target whose device runtime needs hardware the host may lack (TensorRT)
        returns a faithful stand-in on the same files, and names its modules in
        ``gate_requires``.
        """
        return self.load(files, manifest, options)

    def build_settings(self, profile: Any, step: FallbackStep, spec: ExportSpec) -> dict[str, Any] | None:
        """Settings the device needs to build the model (the manifest's ``target.build``); None when none."""
        return None

    def missing_for_export(self) -> list[str]:
        """Modules the host lacks to export and gate to this target (checked without importing)."""
        gate = self.requires if self.gate_requires is None else self.gate_requires
        return [m for m in (*self.export_requires, *gate) if importlib.util.find_spec(m) is None]

    def facts(self) -> dict[str, Any]:
        """Compatibility facts for the manifest: the installed version of each ``runtime_packages``.

        Read from package metadata, so nothing is imported just to learn a version.
        """
        from importlib.metadata import PackageNotFoundError, version

        found = {}
        for package in self.runtime_packages:
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                pass
        return found


@dataclass(frozen=True)
class ModelFacts:
    """What an exported model is, as its manifest will say (no torch).

    Attributes:
        name: the run's name.
        task: ``classify`` or ``anomaly``.
        labels: class names in output order.
        threshold: the stored operating point, or None.
        positive: the class the threshold applies to, or None.
        output: ``probabilities`` (N, K) or ``anomaly_score`` (N,).
        input: the preprocessing the model expects.
    """

    name: str
    task: str
    labels: list[str]
    threshold: float | None
    positive: str | None
    output: str
    input: InputSpec

    def decide(self, outputs: "np.ndarray") -> "np.ndarray":
        """Class indices (N,) from model outputs under the operating point (:func:`edgetl.metrics.decide`)."""
        from edgetl.metrics import decide  # numpy: imported on use

        return decide(outputs, self.labels, self.threshold, self.positive)


@dataclass(frozen=True)
class GateSettings:
    """The gate every attempt must pass (``edgetl export --gate/--min-agreement``).

    Attributes:
        max_drop_points: most the task metric may drop, in percentage points.
        min_agreement: least fraction of images whose decision matches FP32.
        tie_margin: decisions this close to the boundary are ties, not flips
            (:data:`edgetl.metrics.TIE_MARGIN`).
    """

    max_drop_points: float = 1.0
    min_agreement: float = 0.98
    tie_margin: float = field(default_factory=_tie_margin)


@dataclass
class ValidationSet:
    """The run's validation images, for quantizers that tune against accuracy (never the test set).

    Attributes:
        x: (N, 3, H, W) float32, normalised, one row per image.
        y: (N,) int true class indices.
        reference: the FP32 torch model's outputs on ``x``: (N, K) or (N,).
        model: the facts needed to decide (:meth:`ModelFacts.decide`).
    """

    x: "np.ndarray"
    y: "np.ndarray"
    reference: "np.ndarray"
    model: ModelFacts

    def decide(self, outputs: "np.ndarray") -> "np.ndarray":
        """Class indices of outputs on ``x`` (or a slice of it) under the model's operating point."""
        return self.model.decide(outputs)

    @property
    def reference_decisions(self) -> "np.ndarray":
        """(N,) the FP32 model's decisions: what "agreement" is measured against."""
        return self.decide(self.reference)


@dataclass
class QuantizeContext:
    """Everything :meth:`Quantizer.quantize` may use.

    Attributes:
        calibration: (B, 3, H, W) float32 normalised batches from the training
            set (stratified; ``--calib-count`` images; B is the profile's batch).
        model: facts about the model being exported.
        fp32_files: the target's FP32 files (what ``files`` holds for most quantizers).
        gate: the gate the result must pass; an accuracy-aware method aims at it.
        validation: the validation set with FP32 reference outputs; None when
            the images are tiled (rows are tiles, not images).
        profile: the ``--target`` device profile, or None.
        progress: callback(stage: str, done: int, total: int) for long steps.
        time_budget_s: wall time the quantizer should aim to stay within
            (None: no budget); the gate re-measures whatever it returns.
        report: facts to record (tool, versions, settings); they land in the
            attempt's ``details`` in the manifest and ``export --json``.
        shared: one dict for every attempt of one export (each attempt gets a
            fresh context, this same dict): a later step may reuse what an
            earlier one made from the same FP32 files and calibration — the
            accuracy-controlled INT8 step starts from the plain INT8 step's
            model instead of calibrating again. Keys are the quantizer's own
            (prefixed with its target); files named in it live until the export ends.
        options: this quantizer's own settings, validated by the model its
            :meth:`Quantizer.options_model` returns (an instance of it, defaults
            filled), from the profile's ``quantize`` section and
            ``--quantizer-option NAME.KEY=VALUE``; an empty dict for a quantizer
            that declares none.
    """

    calibration: list["np.ndarray"]
    model: ModelFacts
    fp32_files: list[Path]
    gate: GateSettings = field(default_factory=GateSettings)
    validation: ValidationSet | None = None
    profile: Any = None
    progress: Callable[[str, int, int], None] = lambda stage, done, total: None
    time_budget_s: float | None = None
    report: dict[str, Any] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)
    options: Any = field(default_factory=dict)


class Quantizer(Component):
    """Turns a target's FP32 files into a lower precision, keyed by (target, precision, method)."""

    kind = "quantizer"
    target: str = ""
    precision: str = "int8"
    method: str = "ptq"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.target, self.precision, self.method)

    def options_model(self) -> Any:
        """The pydantic model class of this quantizer's own options, or None (it takes none).

        Users set them in the device profile (``quantize: {NAME: {key: value}}``)
        or with ``edgetl export --quantizer-option NAME.KEY=VALUE``; the export
        validates them before any work (an unknown key is one line with "did
        you mean") and hands the instance to :meth:`quantize` as
        ``ctx.options``. Import pydantic inside the method: ``edgetl --help``
        loads every plugin.
        """
        return None

    @abstractmethod
    def quantize(self, files: Sequence[Path], out_dir: Path, ctx: QuantizeContext) -> list[Path]:
        """Write the quantized model files under ``out_dir`` and return them.

        Args:
            files: the target's FP32 files.
            out_dir: a fresh folder path (the quantizer creates it).
            ctx: the :class:`QuantizeContext`.
        """


@dataclass
class Frame:
    """One camera frame: ``image`` (H, W, 3) BGR uint8, ``timestamp`` in seconds since the epoch.

    ``anomaly_map``: set by the pipeline for anomaly models whose runtime gives a
    map (from the same inference as the score), so sinks can draw it without a
    second run and without putting it in the result document: (h, w) float32
    in 0..1 (0.5 = threshold) covering the whole frame (resize to the frame's
    size); None otherwise.

    ``meta``: facts the source knows about the frame, copied into every result
    document of the pipeline (a GenICam camera's ``camera_frame_id``,
    ``device_timestamp_ns`` and ``host_received``); JSON values only.
    """

    image: "np.ndarray"
    timestamp: float
    index: int
    source: str = ""
    anomaly_map: "np.ndarray | None" = None
    meta: dict[str, Any] = field(default_factory=dict)


class FrameStream(ABC):
    """An open source: iterate for frames; ``close`` releases the device."""

    @abstractmethod
    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None:
        """Release the camera/stream."""

    def interrupt(self) -> None:
        """Make a blocked ``__iter__`` return soon; called from another thread when the pipeline stops.

        Default: nothing. A stream that may wait long for a frame (a triggered camera) implements it.
        """

    def stats(self) -> dict[str, int]:
        """Counters the pipeline shows in its status (``source_stats``) and /metrics.

        ``lost``: frames the device sent that never arrived whole (incomplete,
        missing packets, timeouts); ``triggers``: software triggers sent. Default: none.
        """
        return {}


class PipelineControl(ABC):
    """What a sink may do with the pipeline that feeds it (given to :meth:`SinkWriter.attach`)."""

    @abstractmethod
    def trigger(self) -> dict[str, Any]:
        """Fire one software trigger on the pipeline's source; EdgetlError when it takes none."""

    @abstractmethod
    def status(self) -> dict[str, Any]:
        """The pipeline's status (``GET /v1/pipeline``'s ``status``): state, health, counters."""

    def model(self) -> dict[str, Any]:
        """The model serving: ``name``, ``version``, ``digest`` (empty when none is installed)."""
        return {}


class Source(Component):
    """Opens a URI (camera index, rtsp://, http://, video file, image folder, gst:) into frames."""

    kind = "source"

    @abstractmethod
    def accepts(self, uri: str) -> bool:
        """Whether this source handles ``uri``."""

    @abstractmethod
    def open(self, uri: str, options: dict[str, Any]) -> FrameStream:
        """Open ``uri``; raise :class:`edgetl.errors.EdgetlError` if it cannot be opened."""


class SinkWriter(ABC):
    """An open sink: ``write`` each result document, ``close`` at the end."""

    @abstractmethod
    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None: ...

    def attach(self, control: PipelineControl) -> None:
        """Called once by the pipeline after :meth:`Sink.open`: a PLC-facing sink keeps ``control``
        to publish the pipeline's state and counters and to fire software triggers. Default: ignored."""

    def close(self) -> None:
        """Flush and release."""


class Sink(Component):
    """Receives each pipeline result (JSON lines, stdout, webhook, MQTT, capture)."""

    kind = "sink"

    @abstractmethod
    def open(self, options: dict[str, Any]) -> SinkWriter:
        """Create a writer from the sink's options (validated here, with clear errors)."""


class LoggerRun(ABC):
    """One tracked training run in an experiment tracker, opened by :meth:`Logger.start`.

    Every call comes from the main process only. Only :meth:`log_metrics` is
    required; the others default to doing nothing.
    """

    @abstractmethod
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """One row of history: ``step`` is the epoch, ``metrics`` maps a name (``val_loss``,
        ``baseline-scratch/val_accuracy``, …) to a float."""

    def log_figure(self, name: str, path: Path) -> None:
        """A PNG figure of the run (``curves``, ``confusion_val``, …) written at ``path``."""

    def log_artifacts(self, path: Path) -> None:
        """The finished run directory (model.pt, config.yaml, metrics.json, report.md, …)."""

    def log_export(self, result: dict[str, Any]) -> None:
        """An export of this run: the document ``edgetl export --json`` prints (bundle, attempts, …)."""

    def finish(self, status: str) -> None:
        """End the run: ``status`` is ``finished`` or ``failed``."""


class Logger(Component):
    """An experiment tracker (TensorBoard, MLflow, …) named in the run config's ``loggers``.

    A component is shared by every run, so it keeps no per-run state: ``start``
    returns a :class:`LoggerRun` that does. Import the tracking library inside
    ``start``/``resume``, never at module level.
    """

    kind = "logger"

    @abstractmethod
    def start(self, run_name: str, params: dict[str, Any], run_dir: Path,
              options: dict[str, Any]) -> LoggerRun:
        """Begin tracking a training run writing ``run_dir``.

        ``params`` is the resolved run config flattened to dotted keys
        (``train.lr`` -> 0.001); ``options`` is this logger's ``options`` from
        the run config.
        """

    def resume(self, run_dir: Path, options: dict[str, Any]) -> LoggerRun:
        """Reopen the run that :meth:`start` began for ``run_dir`` (export runs in a later process).

        The default starts a new run named after the folder; trackers with run
        ids override it to continue the same run.
        """
        return self.start(Path(run_dir).name, {}, Path(run_dir), options)


COMPONENT_TYPES: dict[str, type[Component]] = {
    "backbone": Backbone, "strategy": Strategy, "quantizer": Quantizer,
    "target": Target, "source": Source, "sink": Sink, "logger": Logger,
}
"""Each component kind (what ``edgetl plugins list`` groups by) -> the class its components subclass."""
