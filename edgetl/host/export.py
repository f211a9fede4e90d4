"""``edgetl export``: run -> target files -> (quantize -> gate)* -> reference set -> signed bundle.

The core knows no format: the target plugin exports and loads, quantizer
plugins keyed by (target, precision, method) quantize, and this module walks
the precision chain, gates every attempt on the validation set through the
target's own (device) runtime, and writes the bundle atomically. An explicit
precision that fails the gate fails the export unless ``fallback`` is set:
what the user asked for is never silently changed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import (
    ExportSpec,
    FallbackStep,
    GateSettings,
    ModelFacts,
    QuantizeContext,
    ValidationSet,
)
from edgetl.errors import ExportError, GateFailedError, MissingDependencyError, UsageError
from edgetl.host.bundle_build import build_and_write, draft_manifest
from edgetl.host.gate import recall_losses
from edgetl.manifest import Manifest, as_manifest
from edgetl.tracking import track_export

log = logging.getLogger("edgetl.export")


@dataclass
class ExportOptions:
    """What ``edgetl export`` was asked to do (see its ``--help``)."""

    format: str
    target: str | Path | None = None
    precision: str = "auto"
    fallback: bool = False
    gate: float = 1.0
    min_agreement: float = 0.98
    gate_slices: bool = False  # also gate every slice the run config names (docs/export.md, "Per-slice gate")
    calib_count: int = 300
    dynamic_batch: bool = False
    model_version: str | None = None
    sign: Any = None  # path to NAME.key, or a loaded Ed25519 private key
    out: str | Path | None = None
    reference_count: int = 32
    latency_runs: int = 50
    quantize_budget_s: float | None = None  # handed to quantizers as QuantizeContext.time_budget_s
    # options per quantizer name (the profile's ``quantize`` section, then these): docs/export.md "Device profiles"
    quantizer_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    progress: Callable[[str], None] = lambda message: None


@dataclass
class ExportResult:
    """The written bundle, its validated manifest, every attempt and every stage's time and size."""

    bundle: Path
    manifest: Manifest
    attempts: list[dict[str, Any]]
    stages: list[dict[str, Any]] = field(default_factory=list)
    signature: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        """The ``export --json`` document."""
        chosen = next(a for a in self.attempts if a["passed"])
        m = self.manifest
        return {"bundle": str(self.bundle), "size_bytes": self.bundle.stat().st_size,
                "name": m.name, "model_version": m.model_version,
                "target": m.target.format, "precision": chosen["precision"],
                "method": chosen["method"], "signed": self.signature is not None,
                "key_id": (self.signature or {}).get("key_id"),
                "gate": m.export.gate if m.export else None, "attempts": self.attempts, "stages": self.stages}


@contextlib.contextmanager
def stdout_to_stderr():
    """Keep stdout for ``--json``: route prints *and* logging handlers bound to stdout to stderr.

    Libraries write progress to stdout (the dynamo exporter prints, nncf's
    logger holds a ``StreamHandler(sys.stdout)`` made at import time).
    """
    from edgetl.quiet import stream_handlers

    swapped = [(h, h.setStream(sys.stderr)) for h in stream_handlers((sys.stdout, sys.__stdout__))]
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in swapped:
            handler.setStream(stream)


def parse_step(text: str) -> FallbackStep:
    precision, _, method = text.partition("/")
    return FallbackStep(precision, method or "default")


def resolve_chain(target: Any, profile: Any, precision: str, fallback: bool) -> list[FallbackStep]:
    """The steps to try: the whole chain for ``auto``, else the asked precision (then the rest with ``fallback``)."""
    chain = [parse_step(s) for s in profile.fallback] if profile is not None else list(target.fallback)
    allowed = set(profile.precisions if profile is not None else target.precisions) & set(target.precisions)
    if precision == "auto":
        return chain
    if precision not in allowed:
        where = f"profile '{profile.name}'" if profile is not None else f"target '{target.name}'"
        raise UsageError(f"--precision {precision}: not supported by {where} (supported: {', '.join(sorted(allowed))})")
    asked = [s for s in chain if s.precision == precision] or [FallbackStep(precision)]
    if not fallback:
        return asked
    last = max(chain.index(s) for s in asked) if all(s in chain for s in asked) else -1
    return asked + [s for s in chain[last + 1:] if s not in asked]


def _kb(size: int) -> str:
    return f"{size / 1e6:.2f} MB" if size >= 1e6 else f"{size / 1e3:.0f} KB"


def _size(files: list[Path]) -> int:
    return sum(Path(f).stat().st_size for f in files)


def torch_outputs(model: Any, x: np.ndarray, batch: int = 64,
                  progress: Callable[[str], None] | None = None) -> np.ndarray:
    """FP32 torch outputs for (M, 3, H, W) float32 rows (``progress``: a line per batch after the first)."""
    import torch

    def first(out: Any) -> Any:  # multi-output models (anomaly: score, map): the first output is gated
        return out[0] if isinstance(out, (tuple, list)) else out

    parts = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            parts.append(first(model(torch.from_numpy(x[i:i + batch]))).numpy())
            if progress is not None and len(x) > batch:
                progress(f"data      FP32 torch outputs {min(i + batch, len(x))}/{len(x)}")
    return np.concatenate(parts).astype(np.float32)


def median_latency_ms(fn: Callable[[np.ndarray], Any], x: np.ndarray, runs: int, warmup: int = 5) -> float | None:
    """Median wall time of ``fn(x)`` in milliseconds after ``warmup`` calls (the bench's timer)."""
    if runs <= 0:
        return None
    from edgetl.bench import time_calls

    return float(np.median(time_calls(fn, x, warmup, runs)))


@dataclass
class ExportPlan:
    """What ``options`` resolve to before any data is read: target, profile, chain, shapes, key."""

    target: Any
    profile: Any
    chain: list[FallbackStep]
    spec: ExportSpec
    runtime_settings: dict[str, Any]
    private_key: Any
    quantizer_options: dict[str, Any] = field(default_factory=dict)  # quantizer name -> its validated options


@dataclass
class ExportData:
    """The images export uses: validation (gate, reference set) with FP32 outputs, and calibration."""

    val: Any  # edgetl.host.calibration.LabelledSet
    reference: np.ndarray  # FP32 torch outputs, one row per image
    calib: list[np.ndarray]
    slices: dict[str, list[str]] = field(default_factory=dict)  # attribute -> each val image's value
    shared: dict[str, Any] = field(default_factory=dict)  # QuantizeContext.shared: one per export

    @property
    def calib_count(self) -> int:
        return sum(len(b) for b in self.calib)


def check_bindings(target: Any, profile: Any) -> None:
    """Refuse, before any work, a bundle its own target declares unusable on the profile's device.

    A target whose files are tied to the CPU architecture (``Target.bound_to``)
    makes them for this host's, so a profile for another architecture cannot
    be served; one tied to the GPU needs the profile to name it (``gpu``), or
    the device could not check it.
    """
    import platform

    bound = set(target.bound_to)
    if profile is not None and "arch" in bound and profile.arch != platform.machine():
        raise UsageError(f"--target {profile.name}: target '{target.name}' makes files tied to the CPU "
                         f"architecture they are made on ({platform.machine()}), and the profile is for "
                         f"{profile.arch}: export on an {profile.arch} machine")
    if "gpu" in bound and (profile is None or not profile.gpu):
        raise UsageError(f"target '{target.name}' makes files tied to one GPU model: give --target with a "
                         f"profile that names it ('gpu: ...', docs/export.md \"Device profiles\")")


def _step_label(precision: str, method: str) -> str:
    return precision if method == "default" else f"{precision}/{method}"


def check_chain(target: Any, profile: Any, chain: list[FallbackStep]) -> None:
    """Every step of the chain has its quantizer: a misspelt or missing method is a configuration error
    before any work ("did you mean"), never a failed attempt that lets ``auto`` end at fp32 silently."""
    from edgetl.errors import ConfigError, did_you_mean
    from edgetl.plugins import get_manager

    manager = get_manager()
    mine = [q for q in manager.all("quantizer") if q.target == target.name]
    for step in chain:
        if (step.precision, step.method) == ("fp32", "default") or manager.quantizer(target.name, *astuple(step)):
            continue
        label = _step_label(step.precision, step.method)
        labels = [_step_label(q.precision, q.method) for q in mine]
        where = (f"--target {profile.name}: fallback step" if profile is not None
                 else f"target '{target.name}' (plugin {target.plugin}): chain step")
        have = ", ".join(f"{_step_label(q.precision, q.method)} ({q.name}, plugin {q.plugin})" for q in mine)
        raise ConfigError(f"{where} '{label}': no quantizer of target '{target.name}' does "
                          f"({step.precision}, {step.method}){did_you_mean(label, labels)} "
                          f"(its quantizers: {have or 'none'}; fp32 needs none)")


def parse_quantizer_options(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``["openvino-int8-ptq.bias_correction=fast", …]`` -> ``{"openvino-int8-ptq": {"bias_correction": "fast"}}``
    (values read as YAML scalars, like ``--set``)."""
    import yaml

    found: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        name, dot, option = key.strip().partition(".")
        if not (eq and dot and name and option):
            raise UsageError(f"--quantizer-option {item!r}: expected QUANTIZER.KEY=VALUE, "
                             "e.g. openvino-int8-ptq.bias_correction=fast")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        found.setdefault(name, {})[option] = value
    return found


def validate_quantizer_options(target: Any, profile: Any, chain: list[FallbackStep],
                               options: ExportOptions) -> dict[str, Any]:
    """Each quantizer's options from the profile's ``quantize`` section and ``options.quantizer_options``
    (these win), validated by the model the quantizer declares (:meth:`edgetl.api.Quantizer.options_model`);
    the chain's quantizers that declare a model and were given nothing get its defaults."""
    from pydantic import ValidationError

    from edgetl.config import format_validation_error
    from edgetl.errors import ConfigError, did_you_mean
    from edgetl.plugins import get_manager

    manager = get_manager()
    given: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, raw in (profile.quantize if profile is not None else {}).items():
        given[name] = (f"--target {profile.name}: quantize.{name}", dict(raw or {}))
    for name, raw in options.quantizer_options.items():
        _, before = given.get(name, ("", {}))
        given[name] = (f"--quantizer-option {name}", {**before, **raw})
    quantizers = {q.name: q for q in manager.all("quantizer")}
    mine = sorted(n for n, q in quantizers.items() if q.target == target.name)
    validated: dict[str, Any] = {}
    for name, (source, raw) in given.items():
        quantizer = quantizers.get(name)
        if quantizer is None or quantizer.target != target.name:
            why = (f"unknown quantizer '{name}'{did_you_mean(name, mine)}" if quantizer is None else
                   f"quantizer '{name}' is for target '{quantizer.target}', not '{target.name}'")
            raise ConfigError(f"{source}: {why} (quantizers of '{target.name}': {', '.join(mine) or 'none'})")
        model = quantizer.options_model()
        if model is None:
            if raw:
                raise ConfigError(f"{source}: quantizer '{name}' (plugin {quantizer.plugin}) takes no options "
                                  f"(got {', '.join(raw)})")
            continue
        try:
            validated[name] = model.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(source, exc, model)) from None
    for step in chain:
        quantizer = manager.quantizer(target.name, step.precision, step.method)
        model = quantizer.options_model() if quantizer is not None and quantizer.name not in validated else None
        if model is not None:
            validated[quantizer.name] = model()
    return validated


def plan_export(options: ExportOptions) -> ExportPlan:
    """Resolve the target, profile and chain; fail early on a missing module or a mismatched profile."""
    from edgetl.config import load_target_profile
    from edgetl.keys import load_private_key
    from edgetl.plugins import get_manager

    target = get_manager().get("target", options.format)
    missing = target.missing_for_export()
    if missing:
        raise MissingDependencyError(missing[0], target.export_extra, f"exporting to '{target.name}'")
    profile = load_target_profile(options.target) if options.target else None
    if profile is not None and profile.format != target.name:
        raise UsageError(f"--target {options.target}: profile '{profile.name}' is for format "
                         f"'{profile.format}', not '{target.name}'")
    check_bindings(target, profile)
    chain = resolve_chain(target, profile, options.precision, options.fallback)
    check_chain(target, profile, chain)
    quantizer_options = validate_quantizer_options(target, profile, chain, options)
    private_key = (load_private_key(options.sign) if isinstance(options.sign, (str, Path))
                   else options.sign)  # a path, or an already loaded key
    spec = ExportSpec(batch=profile.input.batch if profile is not None else 1, profile=profile,
                      dynamic_batch=options.dynamic_batch or bool(profile and profile.input.dynamic_batch))
    runtime_settings = profile.runtime_settings() if profile is not None else {}
    return ExportPlan(target, profile, chain, spec, runtime_settings, private_key, quantizer_options)


@contextlib.contextmanager
def timed(stages: list[dict[str, Any]], name: str, say: Callable[[str], None] | None = None,
          what: str = "") -> Any:
    """Append ``{stage, seconds, size_bytes}`` for the block to ``stages``; ``say`` a line when it ends.

    The block may set ``record["size_bytes"]``, ``record["detail"]`` or ``record["what"]`` (the log text).
    """
    record: dict[str, Any] = {"stage": name, "seconds": None, "size_bytes": None, "what": what}
    t = time.perf_counter()
    yield record
    record["seconds"] = time.perf_counter() - t
    text = record.pop("what")
    stages.append(record)
    if say is not None:
        say(f"{name.split()[0]:<9} {record['seconds']:6.1f} s  {text}".rstrip())


def load_data(run: Any, plan: ExportPlan, options: ExportOptions,
              stages: list[dict[str, Any]] | None = None) -> ExportData:
    """Validation images (gate, reference set) with the FP32 outputs, and calibration batches from train.

    Each part (decoding val, the FP32 torch outputs, decoding calibration) is a timed stage in ``stages``.
    """
    from edgetl.host import calibration as cal
    from edgetl.host.gate import SMALL_N, per_image

    say = options.progress
    stages = [] if stages is None else stages
    train_dir, val_dir = cal.run_folders(run.config)
    with timed(stages, "data validation", say) as rec:
        paths, labels = cal.scan(val_dir, run.labels)
        slices = gate_slice_values(run, paths) if options.gate_slices else {}
        val = cal.load_set(paths, labels, run.input)
        rec["what"] = f"{len(val)} validation images (gate) from {val_dir}"
    with timed(stages, "data fp32 reference", say) as rec:
        reference = per_image(torch_outputs(run.model, val.x, progress=say), val.owner, len(val), run.labels,
                              run.positive)
        rec["what"] = f"FP32 torch outputs on the {len(val)} validation images (computed once, for every attempt)"
    with timed(stages, "data calibration", say) as rec:
        calib = cal.calibration_batches(train_dir, run.labels, run.input, options.calib_count,
                                        batch=plan.spec.batch)
        rec["what"] = f"{sum(len(b) for b in calib)} calibration images from {train_dir}"
    data = ExportData(val, reference, calib, slices)
    for name, values in slices.items():
        counts = {v: values.count(v) for v in sorted(set(values))}
        say(f"data      gated per slice of {name}: " + ", ".join(f"{v} ({n})" for v, n in counts.items()))
        small = [v for v, n in counts.items() if (n - 1) / n < options.min_agreement]
        if small:
            say(f"warning   slice(s) {', '.join(small)} of {name}: one changed decision fails the slice at "
                f"--min-agreement {options.min_agreement:g} (boundary ties excepted)")
    if len(val) < SMALL_N:
        say(f"warning   only {len(val)} validation images: the gate's 95 % intervals are wide (want >= {SMALL_N})")
    if (len(val) - 1) / max(1, len(val)) < options.min_agreement:
        say(f"warning   with {len(val)} validation images one changed decision fails --min-agreement "
            f"{options.min_agreement:g} (boundary ties excepted)")
    return data


def gate_slice_values(run: Any, paths: list[Path]) -> dict[str, list[str]]:
    """``{attribute: value of each validation image}`` for the run config's ``slices`` (``--gate-slices``)."""
    from edgetl.config import SliceConfig
    from edgetl.slices import slice_values

    specs = [SliceConfig(**s) for s in (run.config or {}).get("slices") or []]
    if not specs:
        raise UsageError("--gate-slices: the run's config names no slices to gate (add 'slices' to the run "
                         "config: docs/training.md)")
    return {spec.name: slice_values(spec, paths) for spec in specs}


def model_facts(run: Any) -> ModelFacts:
    return ModelFacts(name=run.name, task=run.task, labels=list(run.labels), threshold=run.threshold,
                      positive=run.positive, output=run.output, input=run.input)


def export_fp32(run: Any, plan: ExportPlan, data: ExportData, work: Path, options: ExportOptions) -> tuple[list[Path], dict]:
    """The target's FP32 files; returns (files, stage record)."""
    import torch

    t = time.perf_counter()
    example = torch.from_numpy(np.ascontiguousarray(data.val.x[:1].repeat(plan.spec.batch, axis=0)))
    with stdout_to_stderr():
        files = plan.target.export(run.model, example, work / "fp32", plan.spec)
    report = plan.spec.report
    stage = {"stage": "export", "seconds": time.perf_counter() - t, "size_bytes": _size(files), "detail": report}
    options.progress(
        f"export    {stage['seconds']:6.1f} s  {_kb(stage['size_bytes']):>9}  "
        + ", ".join(f"{k} {v}" for k, v in report.items() if k != "fallback_reason")
        + (f" (fallback: {report['fallback_reason']})" if "fallback_reason" in report else ""))
    return files, stage


def quantize_context(run: Any, plan: ExportPlan, data: ExportData, fp32_files: list[Path],
                     options: ExportOptions) -> QuantizeContext:
    """The typed context every quantizer of this export receives (a fresh ``report`` per attempt, one ``shared``)."""
    facts = model_facts(run)
    val = data.val
    validation = None if len(val.x) != len(val) else ValidationSet(val.x, val.labels, data.reference, facts)

    def progress(stage: str, done: int, total: int) -> None:
        options.progress(f"quantize  {stage} {done}/{total}")

    return QuantizeContext(
        calibration=data.calib, model=facts, fp32_files=list(fp32_files), validation=validation,
        gate=GateSettings(max_drop_points=options.gate, min_agreement=options.min_agreement),
        profile=plan.profile, progress=progress, time_budget_s=options.quantize_budget_s, shared=data.shared)


def step_files(step: FallbackStep, plan: ExportPlan, fp32_files: list[Path], ctx: QuantizeContext,
               work: Path) -> list[Path]:
    """The files for one step of the chain: the FP32 export itself, or its quantizer's output."""
    if step.precision == "fp32" and step.method == "default":
        return fp32_files
    from edgetl.plugins import get_manager

    quantizer = get_manager().quantizer(plan.target.name, step.precision, step.method)
    if quantizer is None:
        raise ExportError(f"no quantizer registered for ({plan.target.name}, {step.precision}, {step.method})")
    ctx.options = plan.quantizer_options.get(quantizer.name, {})
    with stdout_to_stderr():  # library progress bars and logs: keep stdout for --json
        return list(quantizer.quantize(fp32_files, work / f"{step.precision}-{step.method}", ctx))


def gate_attempt(run: Any, plan: ExportPlan, data: ExportData, manifest: Manifest, files: list[Path],
                 options: ExportOptions) -> tuple[dict[str, Any], Any]:
    """Load ``files`` through the target's gate runtime and gate them; returns (gate figures, runtime)."""
    from edgetl.host.gate import gate, gate_slices, per_image, with_slices

    val = data.val
    runtime = plan.target.load_for_gate(files, manifest, {})
    try:
        out = per_image(runtime.predict(val.x), val.owner, len(val), run.labels, run.positive)
        rules = {"task": run.task, "labels": run.labels, "threshold": run.threshold, "positive": run.positive,
                 "max_drop_points": options.gate, "min_agreement": options.min_agreement}
        figures = gate(out, data.reference, val.labels, **rules)
        if data.slices:
            figures = with_slices(figures, gate_slices(out, data.reference, val.labels, data.slices, **rules))
        t = time.perf_counter()
        figures["latency_ms"] = median_latency_ms(runtime.predict, val.x[:plan.spec.batch], options.latency_runs)
        figures["latency_seconds"] = time.perf_counter() - t
    except BaseException:
        runtime.close()
        raise
    return figures, runtime


def try_step(step: FallbackStep, run: Any, plan: ExportPlan, data: ExportData, fp32_files: list[Path], work: Path,
             options: ExportOptions, stages: list[dict[str, Any]]) -> tuple[dict[str, Any], Any, Any]:
    """One attempt: quantize (unless FP32), gate. Returns (attempt record, draft manifest, runtime or None).

    A quantizer or runtime that raises is a failed attempt, not a crash.
    """
    label = f"{step.precision}/{step.method}"
    attempt: dict[str, Any] = {"precision": step.precision, "method": step.method, "passed": False}
    ctx = quantize_context(run, plan, data, fp32_files, options)
    draft, runtime, files = None, None, None
    try:
        t = time.perf_counter()
        try:
            files = step_files(step, plan, fp32_files, ctx, work)
        finally:  # a quantizer that fails (e.g. out of its time budget) spent its time too
            stages.append({"stage": f"quantize {label}", "seconds": time.perf_counter() - t,
                           "size_bytes": _size(files) if files else None, "detail": ctx.report})
        if files is not fp32_files:
            options.progress(f"quantize  {stages[-1]['seconds']:6.1f} s  {_kb(_size(files)):>9}  {label}")
        t = time.perf_counter()
        draft = draft_manifest(run=run, target=plan.target, profile=plan.profile, step=step, files=files,
                               spec=plan.spec, runtime_settings=plan.runtime_settings,
                               model_version=options.model_version)
        figures, runtime = gate_attempt(run, plan, data, as_manifest(draft, "draft manifest"), files, options)
        attempt.update(figures, gate_seconds=time.perf_counter() - t - figures["latency_seconds"])
        stages.append({"stage": f"gate {label}", "seconds": attempt["gate_seconds"], "size_bytes": None})
        stages.append({"stage": f"latency {label}", "seconds": figures["latency_seconds"], "size_bytes": None,
                       "detail": {"runs": options.latency_runs}})
    except Exception as exc:
        log.debug("attempt %s failed", label, exc_info=True)
        attempt["reason"] = f"{type(exc).__name__}: {exc}"[:500]
    attempt["size_bytes"] = _size(files) if attempt.get("n") is not None else None
    attempt["details"] = ctx.report
    options.progress(_attempt_line(attempt))
    if not attempt["passed"] and runtime is not None:
        runtime.close()
        runtime = None
    return attempt, (draft, files), runtime


def export_run(run_dir: str | Path, options: ExportOptions) -> ExportResult:
    """Export the run at ``run_dir`` as ``options`` say; return the written bundle.

    Steps: :func:`plan_export`, :func:`load_data`, :func:`export_fp32`, then
    :func:`try_step` down the chain until one passes the gate, then the
    reference set, manifest and signature (:func:`edgetl.host.bundle_build.build_and_write`).

    Raises:
        GateFailedError: no attempted precision passed the gate; ``attempts``
            holds every attempt with its numbers. No bundle is written.
    """
    from edgetl.host.run import load_run

    plan = plan_export(options)
    stages: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    with timed(stages, "load run", options.progress) as rec:
        run = load_run(run_dir)
        rec["what"] = f"{run.name}: {run.backbone}, {run.strategy}"
    data = load_data(run, plan, options, stages)
    with tempfile.TemporaryDirectory(prefix="edgetl-export-") as tmp:
        fp32_files, stage = export_fp32(run, plan, data, Path(tmp), options)
        stages.append(stage)
        for step in plan.chain:
            attempt, (draft, files), runtime = try_step(step, run, plan, data, fp32_files, Path(tmp), options, stages)
            attempts.append(attempt)
            if runtime is not None:
                break
        else:
            err = GateFailedError(_failure_message(options, attempts))
            err.attempts = attempts
            raise err
        try:
            with timed(stages, "latency torch fp32", options.progress,
                       f"PyTorch eager batch-{plan.spec.batch} latency, {options.latency_runs} runs"):
                torch_latency = median_latency_ms(lambda x: torch_outputs(run.model, x),
                                                  data.val.x[:plan.spec.batch], options.latency_runs)
            bundle, manifest, signature = build_and_write(
                run=run, draft=draft, files=files, runtime=runtime, val=data.val, options=options,
                attempts=attempts, stages=stages, export_report=plan.spec.report, private_key=plan.private_key,
                calib_count=data.calib_count, torch_latency=torch_latency)
        finally:
            runtime.close()
    result = ExportResult(bundle=bundle, manifest=manifest, attempts=attempts, stages=stages, signature=signature)
    track_export(Path(run_dir), run.config, result.document(), options.progress)
    return result


def _attempt_line(a: dict[str, Any]) -> str:
    secs = f"{a['gate_seconds']:6.1f} s  " if a.get("gate_seconds") is not None else ""
    head = f"gate      {secs}{a['precision']}/{a['method']}: {'PASS' if a['passed'] else 'FAIL'}"
    if a.get("n") is None:
        return f"{head}  ({a.get('reason')})"
    lo, hi = a["agreement_ci95"]
    text = (f"{head}  {a['metric']} {a['reference_metric']:.4f} -> {a['exported_metric']:.4f} "
            f"(drop {a['drop_points']:+.2f} pt), agreement {a['agreement']:.3f} [{lo:.3f}, {hi:.3f}], n={a['n']}")
    text += f"  ({a['reason']})" if a.get("reason") else ""
    if lost := recall_losses(a.get("recall")):  # reported, not gated (edgetl.host.gate)
        text += f"\n          class recall lower than FP32 on val: {lost}"
    for name, rows in (a.get("slices") or {}).items():  # --gate-slices: one line per attribute
        text += f"\n          slices of {name}: " + ", ".join(
            f"{r['slice']} {'pass' if r['passed'] else 'FAIL'} (drop {r['drop_points']:+.2f} pt, agreement "
            f"{r['agreement']:.3f}, n={r['n']})" for r in rows)
    return text


def _failure_message(options: ExportOptions, attempts: list[dict[str, Any]]) -> str:
    tried = "; ".join(f"{a['precision']}/{a['method']}: {a.get('reason') or 'failed'}" for a in attempts)
    if options.precision != "auto" and not options.fallback:
        return (f"--precision {options.precision} failed the gate (max drop {options.gate:g} points, "
                f"agreement >= {options.min_agreement:g}): {tried}. No bundle written; "
                "add --fallback to accept the next precision of the chain")
    return f"no precision passed the gate: {tried}. No bundle written"
