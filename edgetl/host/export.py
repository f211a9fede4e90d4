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
import importlib.util
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import FallbackStep
from edgetl.errors import ExportError, GateFailedError, MissingDependencyError, UsageError

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
    calib_count: int = 300
    dynamic_batch: bool = False
    model_version: str | None = None
    sign: Any = None  # path to NAME.key, or a loaded Ed25519 private key
    out: str | Path | None = None
    reference_count: int = 32
    latency_runs: int = 50
    progress: Callable[[str], None] = lambda message: None


@dataclass
class ExportResult:
    bundle: Path
    manifest: dict[str, Any]
    attempts: list[dict[str, Any]]
    stages: list[dict[str, Any]] = field(default_factory=list)
    signature: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        """The ``export --json`` document."""
        chosen = next(a for a in self.attempts if a["passed"])
        return {"bundle": str(self.bundle), "size_bytes": self.bundle.stat().st_size,
                "name": self.manifest["name"], "model_version": self.manifest["model_version"],
                "target": self.manifest["target"]["format"], "precision": chosen["precision"],
                "method": chosen["method"], "signed": self.signature is not None,
                "key_id": (self.signature or {}).get("key_id"),
                "gate": self.manifest["export"]["gate"], "attempts": self.attempts, "stages": self.stages}


@contextlib.contextmanager
def stdout_to_stderr():
    """Keep stdout for ``--json``: route prints *and* logging handlers bound to stdout to stderr.

    Libraries write progress to stdout (the dynamo exporter prints, nncf's
    logger holds a ``StreamHandler(sys.stdout)`` made at import time).
    """
    import logging as _logging

    real = sys.stdout
    swapped = []
    for logger in [_logging.getLogger(), *(_logging.getLogger(n) for n in list(_logging.root.manager.loggerDict))]:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, _logging.StreamHandler) and handler.stream in (real, sys.__stdout__):
                swapped.append((handler, handler.setStream(sys.stderr)))
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


def torch_outputs(model: Any, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """FP32 torch outputs for (M, 3, H, W) float32 rows."""
    import torch

    def first(out: Any) -> Any:  # multi-output models (anomaly: score, map): the first output is gated
        return out[0] if isinstance(out, (tuple, list)) else out

    with torch.no_grad():
        return np.concatenate([first(model(torch.from_numpy(x[i:i + batch]))).numpy()
                               for i in range(0, len(x), batch)]).astype(np.float32)


def median_latency_ms(fn: Callable[[np.ndarray], Any], x: np.ndarray, runs: int, warmup: int = 5) -> float | None:
    """Median wall time of ``fn(x)`` in milliseconds after ``warmup`` calls (the bench's timer)."""
    if runs <= 0:
        return None
    from edgetl.bench import time_calls

    return float(np.median(time_calls(fn, x, warmup, runs)))


def export_run(run_dir: str | Path, options: ExportOptions) -> ExportResult:
    """Export the run at ``run_dir`` as ``options`` say; return the written bundle.

    Raises:
        GateFailedError: no attempted precision passed the gate; ``attempts``
            holds every attempt with its numbers. No bundle is written.
    """
    from edgetl.config import load_target_profile
    from edgetl.host import calibration as cal
    from edgetl.host.bundle_build import build_and_write
    from edgetl.host.gate import gate, per_image
    from edgetl.host.run import load_run
    from edgetl.keys import load_private_key
    from edgetl.plugins import get_manager

    say = options.progress
    pm = get_manager()
    target = pm.get("target", options.format)
    # the host needs the export half and the runtime the gate runs on (the device runtime, or a
    # target's stand-in such as ONNX Runtime for TensorRT's Q/DQ model)
    for module in (*target.export_requires, *getattr(target, "gate_requires", target.requires)):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(module, target.export_extra, f"exporting to '{target.name}'")
    profile = load_target_profile(options.target) if options.target else None
    if profile is not None and profile.format != target.name:
        raise UsageError(f"--target {options.target}: profile '{profile.name}' is for format "
                         f"'{profile.format}', not '{target.name}'")
    chain = resolve_chain(target, profile, options.precision, options.fallback)
    private_key = (load_private_key(options.sign) if isinstance(options.sign, (str, Path))
                   else options.sign)  # a path, or an already loaded key
    batch = profile.input.batch if profile is not None else 1
    dynamic = options.dynamic_batch or bool(profile and profile.input.dynamic_batch)
    runtime_settings = profile.runtime.model_dump(exclude_none=True) if profile is not None else {}

    run = load_run(run_dir)
    train_dir, val_dir = cal.run_folders(run.config)
    val_paths, y = cal.scan(val_dir, run.labels)
    val = cal.load_set(val_paths, y, run.input)
    reference = per_image(torch_outputs(run.model, val.x), val.owner, len(val), run.labels, run.positive)
    calib = cal.calibration_batches(train_dir, run.labels, run.input, options.calib_count, batch=batch)
    say(f"data      {len(val)} validation images (gate), {sum(len(b) for b in calib)} calibration images "
        f"from {train_dir}")
    if len(val) < 200:
        say(f"warning   only {len(val)} validation images: the gate's 95 % intervals are wide (want >= 200)")

    stages: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetl-export-") as tmp:
        work = Path(tmp)
        import torch

        t = time.perf_counter()
        export_report: dict[str, Any] = {}
        example = torch.from_numpy(np.ascontiguousarray(val.x[:1].repeat(batch, axis=0)))
        with stdout_to_stderr():
            fp32_files = target.export(run.model, example, work / "fp32",
                                       {"dynamic_batch": dynamic, "report": export_report, "profile": profile})
        stages.append({"stage": "export", "seconds": time.perf_counter() - t, "size_bytes": _size(fp32_files),
                       "detail": export_report})
        say(f"export    {stages[-1]['seconds']:6.1f} s  {_kb(stages[-1]['size_bytes']):>9}  "
            + ", ".join(f"{k} {v}" for k, v in export_report.items() if k != "fallback_reason")
            + (f" (fallback: {export_report['fallback_reason']})" if "fallback_reason" in export_report else ""))

        from edgetl.host.gate import decisions

        # for quantizers that tune against validation accuracy (nncf accuracy control): untiled images only
        def decide(out: Any) -> np.ndarray:
            return decisions(np.asarray(out, dtype=np.float64), run.labels, run.threshold, run.positive)

        validation = None if len(val.x) != len(val) else {
            "x": val.x, "y": y, "decide": decide, "reference_decisions": decide(reference)}
        chosen = None
        for step in chain:
            label = f"{step.precision}/{step.method}"
            attempt: dict[str, Any] = {"precision": step.precision, "method": step.method, "passed": False}
            details: dict[str, Any] = {}
            runtime = None
            try:
                t = time.perf_counter()
                if step.precision == "fp32" and step.method == "default":
                    files = fp32_files
                else:
                    quantizer = pm.quantizer(target.name, step.precision, step.method)
                    if quantizer is None:
                        raise ExportError(f"no quantizer registered for ({target.name}, {step.precision}, {step.method})")
                    with stdout_to_stderr():  # library progress bars and logs: keep stdout for --json
                        files = quantizer.quantize(
                            fp32_files, work / label.replace("/", "-"), calib,
                            {"report": details, "min_agreement": options.min_agreement, "gate": options.gate,
                             "profile": profile, "fp32_files": fp32_files, "validation": validation})
                quantize_s = time.perf_counter() - t
                stages.append({"stage": f"quantize {label}", "seconds": quantize_s, "size_bytes": _size(files),
                               "detail": details})
                if files is not fp32_files:
                    say(f"quantize  {quantize_s:6.1f} s  {_kb(_size(files)):>9}  {label}")
                t = time.perf_counter()
                stub = {"target": {"format": target.name, "precision": step.precision, "method": step.method,
                                   "runtime": runtime_settings}, "input": run.input.to_dict()}
                runtime = getattr(target, "load_for_gate", target.load)(files, stub, {})
                out = per_image(runtime.predict(val.x), val.owner, len(val), run.labels, run.positive)
                attempt.update(gate(out, reference, y, task=run.task, labels=run.labels,
                                    threshold=run.threshold, positive=run.positive,
                                    max_drop_points=options.gate, min_agreement=options.min_agreement))
                attempt["latency_ms"] = median_latency_ms(runtime.predict, val.x[:batch], options.latency_runs)
                attempt["gate_seconds"] = time.perf_counter() - t
                stages.append({"stage": f"gate {label}", "seconds": attempt["gate_seconds"], "size_bytes": None})
            except Exception as exc:  # a quantizer or runtime that fails is a failed attempt, not a crash
                log.debug("attempt %s failed", label, exc_info=True)
                attempt["reason"] = f"{type(exc).__name__}: {exc}"[:500]
            attempt["size_bytes"] = _size(files) if attempt.get("n") is not None else None
            attempt["details"] = details
            attempts.append(attempt)
            say(_attempt_line(attempt))
            if attempt["passed"]:
                chosen = (step, files, runtime)
                break
            if runtime is not None:
                runtime.close()
        if chosen is None:
            err = GateFailedError(_failure_message(options, attempts))
            err.attempts = attempts
            raise err
        step, files, runtime = chosen
        try:
            bundle, manifest, signature = build_and_write(
                run=run, target=target, profile=profile, step=step, files=files, runtime=runtime,
                val=val, options=options, attempts=attempts, stages=stages, export_report=export_report,
                batch=batch, dynamic=dynamic, runtime_settings=runtime_settings, private_key=private_key,
                calib_count=sum(len(b) for b in calib), torch_latency=median_latency_ms(
                    lambda x: torch_outputs(run.model, x), val.x[:batch], options.latency_runs))
        finally:
            runtime.close()
    return ExportResult(bundle=bundle, manifest=manifest, attempts=attempts, stages=stages, signature=signature)


def _attempt_line(a: dict[str, Any]) -> str:
    secs = f"{a['gate_seconds']:6.1f} s  " if a.get("gate_seconds") is not None else ""
    head = f"gate      {secs}{a['precision']}/{a['method']}: {'PASS' if a['passed'] else 'FAIL'}"
    if a.get("n") is None:
        return f"{head}  ({a.get('reason')})"
    lo, hi = a["agreement_ci95"]
    text = (f"{head}  {a['metric']} {a['reference_metric']:.4f} -> {a['exported_metric']:.4f} "
            f"(drop {a['drop_points']:+.2f} pt), agreement {a['agreement']:.3f} [{lo:.3f}, {hi:.3f}], n={a['n']}")
    return text + (f"  ({a['reason']})" if a.get("reason") else "")


def _failure_message(options: ExportOptions, attempts: list[dict[str, Any]]) -> str:
    tried = "; ".join(f"{a['precision']}/{a['method']}: {a.get('reason') or 'failed'}" for a in attempts)
    if options.precision != "auto" and not options.fallback:
        return (f"--precision {options.precision} failed the gate (max drop {options.gate:g} points, "
                f"agreement >= {options.min_agreement:g}): {tried}. No bundle written; "
                "add --fallback to accept the next precision of the chain")
    return f"no precision passed the gate: {tried}. No bundle written"
