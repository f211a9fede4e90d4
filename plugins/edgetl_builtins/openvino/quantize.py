"""Host-side OpenVINO quantizers: FP16 weights, nncf INT8 PTQ, nncf INT8 with accuracy control.

Accuracy control is ``nncf.quantize_with_accuracy_control``'s method: quantize,
measure a validation metric, and revert the most harmful layers to float until
the drop is within ``max_drop``. The metric given to it is top-1 agreement
with the FP32 model on the run's validation images, with ``max_drop = 1 -
min_agreement``: the gate also bounds the accuracy drop, but that one is
usually met first. The gate then re-measures the result independently. Its
first step, ``nncf.quantize``, is the plain INT8 step's: one model per export
(``QuantizeContext.shared``) serves both, so auto's chain calibrates once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import QuantizeContext
from edgetl.errors import ExportError
from edgetl.onnxtools import FIRST_PREFIX, tail_nodes
from edgetl.onnxtools import QuantizeClock as Clock

MAX_ITERATIONS = 8
"""Layers nncf may revert to float, one per iteration (each iteration re-validates the whole set)."""
RANKING_SUBSET = 64
"""Validation images the per-layer ranking is measured on (nncf's default is 300)."""
PROGRESS_EVERY_S = 10.0
"""Seconds between validation-pass progress lines (ELPV: about 115 passes per export, a few per second)."""


class BudgetSpent(Exception):
    """Raised inside nncf's validation callback to stop accuracy control at the time budget."""


def _xml(files: Sequence[Path]) -> Path:
    found = [Path(f) for f in files if str(f).endswith(".xml")]
    if not found:
        raise ExportError("no OpenVINO .xml model to quantize among " + ", ".join(map(str, files)))
    return found[0]


def _save(model: Any, out_dir: Path, compress: bool) -> list[Path]:
    import openvino as ov

    out_dir.mkdir(parents=True, exist_ok=True)
    xml = out_dir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=compress)
    return [xml, xml.with_suffix(".bin")]


def fp16_weights(files: Sequence[Path], out_dir: Path, ctx: QuantizeContext) -> list[Path]:
    import openvino as ov

    ctx.report.update(weights="fp16", compress_to_fp16=True)
    return _save(ov.Core().read_model(str(_xml(files))), out_dir, compress=True)


CONV_OPS = ("Convolution", "GroupConvolution")
WEIGHTED_OPS = ("MatMul",)


def float_tail(model: Any) -> list[str]:
    """Friendly names of the unweighted ops that feed no convolution (pooling, concat, standardisation).

    Kept float through nncf's ignored scope, for the reason given at
    ``edgetl.onnxtools.float_tail``; the head's MatMul is still quantized.
    """
    ops = list(model.get_ordered_ops())
    sources = [[i.get_source_output().get_node() for i in op.inputs()] for op in ops]
    nodes = [(op.get_type_name(), [s.get_friendly_name() for s in src], [op.get_friendly_name()])
             for op, src in zip(ops, sources, strict=True)]

    def bias_add(i: int) -> bool:  # a weighted layer's bias: part of that layer for nncf, not of the tail
        return nodes[i][0] == "Add" and any(s.get_type_name() in CONV_OPS + WEIGHTED_OPS for s in sources[i])

    return [ops[i].get_friendly_name() for i in tail_nodes(nodes, CONV_OPS, WEIGHTED_OPS)
            if nodes[i][0] not in ("Constant", "Parameter", "Result") and not bias_add(i)]


def ptq_model(files: Sequence[Path], ctx: QuantizeContext) -> Any:
    """``nncf.quantize`` of the FP32 IR, weights kept float, made once per export (``ctx.shared``).

    The plain INT8 step compresses a copy for its file; the accuracy-control
    step starts from the same model instead of calibrating again (nncf's own
    ``quantize_with_accuracy_control`` would), and its reverts need the float weights.
    """
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    mode = bias_correction(ctx)
    key = f"openvino-int8-ptq:{_xml(files)}:{mode}"
    if key not in ctx.shared:
        batches = list(ctx.calibration)
        model = ov.Core().read_model(str(_xml(files)))
        tail = float_tail(model)
        keep_float = AdvancedQuantizationParameters(backend_params={"compress_weights": False})
        ctx.shared[key] = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                                        target_device=nncf.TargetDevice.CPU, advanced_parameters=keep_float,
                                        fast_bias_correction=mode == "fast",
                                        ignored_scope=nncf.IgnoredScope(names=tail, validate=False))
        ctx.shared[key + ":float_ops"] = tail
    ctx.report.update(float_ops=len(ctx.shared[key + ":float_ops"]), bias_correction=mode)
    return ctx.shared[key]


def bias_correction(ctx: QuantizeContext) -> str:
    """The ``bias_correction`` option (:class:`edgetl_builtins.openvino.options.OvInt8Options`; full unless set)."""
    mode = getattr(ctx.options, "bias_correction", None) or "full"
    if mode not in BIAS_CORRECTION:
        raise ExportError(f"bias_correction {mode!r}: expected one of {', '.join(BIAS_CORRECTION)}")
    return mode


BIAS_CORRECTION = ("full", "fast")
"""The ``bias_correction`` option: nncf's ``BiasCorrection`` (full) or ``FastBiasCorrection`` (fast).

Full is the default: on the ELPV recipe (EfficientNet-Lite0 at 300 px,
multi-stage features) it kept 185 of 197 validation decisions against 176
with fast, and lost 0.6 test points against 1.7 (docs/export.md); it costs
one extra pass per layer over a fifth of the calibration images.
"""


def _compressed(model: Any) -> Any:
    """A copy with INT8 weights stored as int8 (what ``nncf.quantize`` returns by default)."""
    from openvino._offline_transformations import compress_quantize_weights_transformation

    model = model.clone()
    compress_quantize_weights_transformation(model)
    return model


def int8_ptq(files: Sequence[Path], out_dir: Path, ctx: QuantizeContext) -> list[Path]:
    import nncf

    quantized = _compressed(ptq_model(files, ctx))
    ctx.report.update(tool="nncf.quantize", nncf=nncf.__version__,
                      calibration_images=sum(len(b) for b in ctx.calibration))
    return _save(quantized, out_dir, compress=False)


SKIP_TYPES = ("Constant", "Parameter", "Result", "FakeQuantize", "Convert")


def float_prefix(quantized: Any, original: Any, k: int) -> Any:
    """A copy of the INT8 model with its first ``k`` ops (input side) back in float.

    FakeQuantize nodes whose consumers all lie in the prefix are bypassed,
    and the prefix's bias constants are taken from ``original`` (nncf's bias
    correction tuned them for the quantized layer), as nncf's own revert does.
    No calibration: one copy, one edit (see ``edgetl_builtins.onnx.quantize.search_float_prefix``).
    """
    from openvino import op as ov_op

    model = quantized.clone()
    ordered = list(model.get_ordered_ops())
    first = {o.get_friendly_name() for o in [o for o in ordered if o.get_type_name() not in SKIP_TYPES][:k]}
    for fq in [o for o in ordered if o.get_type_name() == "FakeQuantize"]:
        consumers = [t.get_node() for t in fq.output(0).get_target_inputs()]
        if consumers and all(c.get_friendly_name() in first for c in consumers):
            fq.output(0).replace(fq.input_value(0))
    originals = {o.get_friendly_name(): o for o in original.get_ordered_ops()}
    for node in [o for o in ordered if o.get_friendly_name() in first and o.get_type_name() == "Add"]:
        twin = originals.get(node.get_friendly_name())
        for i, value in enumerate(node.input_values()):
            source = twin.input_value(i).get_node() if twin is not None else None
            if value.get_node().get_type_name() == "Constant" and source is not None \
                    and source.get_type_name() == "Constant":
                node.input(i).replace_source_output(ov_op.Constant(source.get_data()).output(0))
    model.validate_nodes_and_infer_types()
    return model


def prefix_search(quantized: Any, original: Any, measure: Any, min_agreement: float, clock: Clock,
                  progress: Any) -> tuple[int, Any, float]:
    """First 8, 16, 32, ... ops in float until ``measure(model)`` (agreement) meets the target; half the ops at
    most, half the budget at most. Returns (k, model, agreement) of the first that meets it, else k = 0."""
    total = len([o for o in quantized.get_ordered_ops() if o.get_type_name() not in SKIP_TYPES])
    k = FIRST_PREFIX
    while k <= total // 2 and not clock.over(0.5):
        candidate = float_prefix(quantized, original, k)
        agree = measure(candidate)
        progress(f"int8 accuracy-control: first {k} ops in float, agreement {agree:.3f} "
                 f"({clock.elapsed:.0f} s of {clock.budget_s:.0f})", k, total // 2)
        if agree >= min_agreement:
            return k, candidate, agree
        k *= 2
    return 0, None, 0.0


def restore_accuracy(model: Any, quantized: Any, validation: Any, metric: Any, max_drop: float,
                     restorer: Any) -> Any:
    """nncf's accuracy restorer on an already quantized model: the steps of
    ``quantize_with_accuracy_control`` after its own ``quantize`` (hyper-parameter tuning off, its default).

    These classes are nncf's internals (present in the pinned 3.4): with an nncf that
    lacks them this returns None and the caller runs the public
    ``nncf.quantize_with_accuracy_control``, which calibrates once more."""
    import nncf

    try:
        from nncf.quantization.algorithms.accuracy_control.algorithm import (
            QuantizationAccuracyRestorer,
            calculate_accuracy_drop,
        )
        from nncf.quantization.algorithms.accuracy_control.evaluator import Evaluator
    except ImportError:
        return None

    evaluator = Evaluator(metric)
    evaluator.enable_iteration_count()
    initial = evaluator.collect_metric_results(model, validation, model_name="initial")
    size = evaluator.num_passed_iterations
    evaluator.disable_iteration_count()
    first = evaluator.collect_metric_results(quantized, validation, model_name="quantized")
    met, _ = calculate_accuracy_drop(initial.metric_value, first.metric_value, max_drop, nncf.DropType.ABSOLUTE)
    if met:
        return quantized
    return QuantizationAccuracyRestorer(
        restorer.ranking_subset_size, restorer.max_num_iterations, max_drop, nncf.DropType.ABSOLUTE,
        restorer.num_ranking_workers, restorer.restore_mode,
    ).apply(model, initial, quantized, first, validation, size, evaluator)


@contextlib.contextmanager
def nncf_quiet() -> Iterator[None]:
    """nncf's logger at WARNING while the block runs (unless ``--verbose``).

    Accuracy control logs several INFO lines per revert iteration and per
    validation ("Validation of initial model was started", "Elapsed Time", …)
    through a handler nncf binds to stdout; the command line hides them
    anyway, the Python API would print them all.
    """
    from nncf.common.logging.logger import nncf_logger

    level = nncf_logger.level
    if not verbose_requested():
        nncf_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        nncf_logger.setLevel(level)


def verbose_requested() -> bool:
    """``--verbose``/``--debug`` or ``EDGETL_VERBOSE=1``/``EDGETL_DEBUG=1`` (docs/cli.md): the documented
    switch for library output, read from the environment (the command line sets it; plugins see no host code)."""
    return any(os.environ.get(name, "") not in ("", "0", "false") for name in ("EDGETL_VERBOSE", "EDGETL_DEBUG"))


class PassCounter:
    """Validation passes of accuracy control: a progress line on the first and then one per
    :data:`PROGRESS_EVERY_S` at most (nncf makes ~115 on ELPV) through the context's progress callback."""

    def __init__(self, clock: Clock, progress: Any):
        self.clock, self.progress = clock, progress
        self.n, self.shown_at = 0, None

    def count(self, images: int) -> None:
        self.n += 1
        line = (f"int8 accuracy-control: validation pass {self.n} on {images} images "
                f"({self.clock.elapsed:.0f} s of {self.clock.budget_s:.0f})")
        if self.shown_at is None or self.clock.elapsed - self.shown_at >= PROGRESS_EVERY_S:
            self.shown_at = self.clock.elapsed
            self.progress(line, self.n, self.n)

    def done(self) -> None:
        self.progress(f"int8 accuracy-control: {self.n} validation passes in {self.clock.elapsed:.0f} s",
                      self.n, self.n)


def int8_accuracy_control(files: Sequence[Path], out_dir: Path, ctx: QuantizeContext) -> list[Path]:
    import nncf

    validation = ctx.validation
    if validation is None:
        raise ExportError("accuracy-control needs the validation set (untiled images)")
    # the controlled metric is top-1 agreement with the FP32 model, not accuracy: the gate asks for
    # both, and on ELPV accuracy stayed within budget (-0.67 pt) while 8 % of the answers changed
    x, ref, decide = validation.x, validation.reference_decisions, validation.decide
    items = [(x[i:i + 1], int(ref[i])) for i in range(len(ref))]
    max_drop = max(0.0, 1.0 - ctx.gate.min_agreement)

    clock = Clock(ctx.time_budget_s, ctx.progress)
    passes = PassCounter(clock, ctx.progress)
    reused = f"openvino-int8-ptq:{_xml(files)}:{bias_correction(ctx)}" in ctx.shared

    def agreement(compiled: Any, data: Any) -> tuple[float, list[float]]:
        # nncf calls this for every validation (full set) and ranking (subset) pass; over the budget it
        # stops the whole run: the attempt fails and the chain moves on (the gate is never lowered)
        if clock.over():
            raise BudgetSpent(f"accuracy control passed its {clock.budget_s:.0f} s budget after "
                              f"{passes.n} validation passes without meeting the target")
        output = compiled.outputs[0]
        per_item = [float(decide(np.asarray(compiled(item[0])[output]))[0] == item[1]) for item in data]
        passes.count(len(per_item))
        return float(np.mean(per_item)) if per_item else 0.0, per_item

    with nncf_quiet():
        quantized, tool, prefix, prefix_agreement = _controlled(files, ctx, items, agreement, max_drop, clock)
    passes.done()
    ctx.report.update(tool=tool, nncf=nncf.__version__,
                      metric="top-1 agreement with FP32", max_drop=max_drop, validation_images=len(items),
                      ranking_subset=min(RANKING_SUBSET, len(items)), max_iterations=MAX_ITERATIONS,
                      validation_passes=passes.n, budget_s=clock.budget_s, seconds=round(clock.elapsed, 1),
                      reused_int8_ptq=reused, float_prefix_ops=prefix,
                      prefix_agreement=prefix_agreement if prefix else None)
    return _save(_compressed(quantized), out_dir, compress=False)


def _controlled(files: Sequence[Path], ctx: QuantizeContext, items: list[tuple[np.ndarray, int]], agreement: Any,
                max_drop: float, clock: Clock) -> tuple[Any, str, int, float]:
    """The float-prefix search, then nncf's restorer (or its public entry point): (model, tool, prefix ops,
    prefix agreement); a budget spent is an ExportError."""
    import nncf
    import openvino as ov

    # bounded: layers ranked on a subset, few revert iterations, one ranking worker (parallel workers
    # only contend on a small CPU)
    restorer = nncf.AdvancedAccuracyRestorerParameters(
        max_num_iterations=MAX_ITERATIONS, ranking_subset_size=min(RANKING_SUBSET, len(items)),
        num_ranking_workers=1)
    original = ov.Core().read_model(str(_xml(files)))
    ptq = ptq_model(files, ctx)

    def measure(model: Any) -> float:
        return agreement(ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"}), items)[0]

    try:
        prefix, quantized, prefix_agreement = prefix_search(ptq, original, measure, 1.0 - max_drop, clock,
                                                            ctx.progress)
        if quantized is None:
            quantized = restore_accuracy(original, ptq.clone(), nncf.Dataset(items, lambda item: item[0]),
                                         agreement, max_drop, restorer)
        tool = "nncf.quantize + nncf QuantizationAccuracyRestorer"
        if quantized is None:  # an nncf without the restorer's internals: the public entry point
            tool = "nncf.quantize_with_accuracy_control"
            batches = list(ctx.calibration)
            quantized = nncf.quantize_with_accuracy_control(
                original, nncf.Dataset(batches), nncf.Dataset(items, lambda item: item[0]), agreement,
                max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(batches),
                target_device=nncf.TargetDevice.CPU, advanced_accuracy_restorer_parameters=restorer,
                fast_bias_correction=bias_correction(ctx) == "fast",
                ignored_scope=nncf.IgnoredScope(names=float_tail(original), validate=False))
    except BudgetSpent as exc:
        raise ExportError(str(exc)) from None
    return quantized, tool, prefix, prefix_agreement
