"""Host-side ONNX quantizers: FP16, INT8 static QDQ, accuracy-aware INT8 (onnx, onnxruntime).

- FP16: weights and compute in float16, graph inputs/outputs kept float32 so
  the device feeds the same tensors (``keep_io_types``).
- INT8 PTQ: ``onnxruntime.quantization.quantize_static`` in QDQ format with
  per-channel weights, calibrated on training images. On x86 without VNNI,
  ONNX Runtime's U8S8 kernels accumulate in 16 bits and saturate; measured on
  an AVX2 Zen 3 the top-1 agreement collapses. ``reduce_range`` (7-bit
  weights) avoids it there, so it is on exactly when the host lacks VNNI.
- Accuracy-aware INT8: the first ops of the graph (input side) in float,
  8, 16, 32, ... (:func:`search_float_prefix`); if no prefix reaches the
  target, a per-layer sensitivity pass (quantize one layer at a
  time, measured through the real optimised ONNX Runtime kernels, on
  validation images against the FP32 outputs), then the most sensitive
  layers are left in float, doubling the count until top-1 agreement on the
  validation images reaches the gate's minimum (nncf's accuracy control uses
  the validation set the same way; the gate then re-measures independently).

What is not specific to this target (export, ``quantize_int8``, FP16, the
float tail, the ONNX Runtime session) is :mod:`edgetl.onnxtools`, shared with
the OpenVINO and TensorRT targets.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import QuantizeContext
from edgetl.cpuinfo import cpu_info, needs_reduce_range
from edgetl.onnxtools import (
    FIRST_PREFIX,
    WEIGHTED_OPS,
    OnnxRuntimeModel,
    QuantizeClock,
    float_tail,
    preprocess,
    quantize_int8,
    to_fp16,
)

log = logging.getLogger("edgetl.export.onnx")


def int8_base(src: Path, folder: Path, batches: list[np.ndarray], reduce_range: bool,
              shared: dict[str, Any]) -> tuple[Path, Path, Path]:
    """(pre-processed graph, calibration cache, whole-model INT8) of ``src``, made once per export.

    The plain INT8 step and the accuracy-aware step quantize the same graph
    with the same calibration: ``shared`` (``QuantizeContext.shared``) keeps
    what the first one made, so the second neither pre-processes nor
    calibrates again (on ELPV at 300 px calibration is most of a step's time).
    """
    key = f"onnx-int8-base:{src}:{'reduce-range' if reduce_range else 'full-range'}"
    made = shared.get(key)
    if made is not None and all(Path(p).is_file() for p in made):
        return made
    folder.mkdir(parents=True, exist_ok=True)
    prep = preprocess(src, folder / "prep.onnx")
    cache = folder / "calibration.json"
    full = quantize_int8(prep, folder / "int8.onnx", batches, reduce_range=reduce_range, cache=cache)
    shared[key] = (prep, cache, full)
    return shared[key]


def _session_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return OnnxRuntimeModel(path, {}, "int8").predict(x)


def rank_layers(prep: Path, candidates: list[str], batches: list[np.ndarray], x: np.ndarray, ref: np.ndarray,
                reduce_range: bool, cache: Path, clock: QuantizeClock, tmp: Path) -> tuple[list[str], dict[str, float]]:
    """Layers by sensitivity (each quantized alone: mean |output - FP32|), most sensitive first.

    Stops at half the time budget; layers not reached follow the ranked
    ones in graph order (so the search can still keep them in float).
    """
    scores: dict[str, float] = {}
    for i, name in enumerate(candidates):
        if clock.over(0.5):
            break
        one = quantize_int8(prep, tmp / "one.onnx", batches, reduce_range=reduce_range,
                            nodes_to_quantize=[name], cache=cache)
        scores[name] = float(np.abs(_session_outputs(one, x) - ref).mean())
        clock.tick("int8 accuracy-aware: layer sensitivity", i + 1, len(candidates))
    ranked = sorted(scores, key=lambda n: -scores[n])
    return ranked + [n for n in candidates if n not in scores], scores


def accuracy_aware_int8(src: Path, dst: Path, batches: list[np.ndarray], *, min_agreement: float,
                        reduce_range: bool, decide: Callable[[np.ndarray], np.ndarray],
                        check: np.ndarray | None = None, sample: int = 32, report: dict[str, Any],
                        budget_s: float | None = None,
                        progress: Callable[[str, int, int], None] | None = None,
                        reference: np.ndarray | None = None, shared: dict[str, Any] | None = None) -> Path:
    """INT8 with the most sensitive layers left in float (see the module docstring), within a time budget.

    ``check`` (M, 3, H, W): the images the agreement target is checked on —
    the validation set when the export provides it (as nncf's accuracy control
    does); the calibration images otherwise, which the quantization ranges were
    fitted to and so flatter the result. Sensitivity is ranked on ``sample`` of them.
    ``decide`` maps outputs to decisions under the model's operating point.
    ``reference``: the FP32 outputs on ``check`` when known (the export's torch
    outputs, what the gate compares with); else the FP32 graph is run here.
    ``shared``: ``QuantizeContext.shared``, to reuse the plain INT8 step's
    calibration and model (:func:`int8_base`).

    First a float prefix (:func:`search_float_prefix`); the ranked search
    below only when no prefix meets the target. Bounded: the prefix and the
    ranking stop at half of ``budget_s``; the search (0, 1, 2,
    4, ... layers in float, up to half) stops as soon as the agreement target
    is met, or when the budget is spent — then the best candidate so far is
    returned, and the gate, which re-measures, decides (the target is never lowered).
    """
    import onnx

    clock = QuantizeClock(budget_s, progress)
    with tempfile.TemporaryDirectory(prefix="edgetl-aaq-") as tmp:
        tmp = Path(tmp)
        prep, cache, full = int8_base(src, dst.parent / "base", batches, reduce_range,
                                      {} if shared is None else shared)
        check = np.concatenate(batches) if check is None else check
        check_ref = _session_outputs(prep, check) if reference is None else np.asarray(reference)
        want = decide(check_ref)
        agree = float((decide(_session_outputs(full, check)) == want).mean())
        clock.tick(f"int8 accuracy-aware: whole model INT8, agreement {agree:.3f}", 1, 1)
        best, stopped = (agree, 0, full), "agreement met"
        nodes = [n for n in onnx.load(str(prep)).graph.node if n.name]
        candidates = [n.name for n in nodes if n.op_type in WEIGHTED_OPS]
        ranked, scores, prefix = [], {}, 0
        if agree < min_agreement:
            measure = _agreement_on(check, want, decide)
            prefix, prefix_best = search_float_prefix(prep, [n.name for n in nodes], batches, measure,
                                                      min_agreement, reduce_range, cache, clock, tmp)
            if prefix_best[0] >= min_agreement:
                best, stopped = (prefix_best[0], 0, prefix_best[1]), "agreement met (float prefix)"
            else:
                ranked, scores = rank_layers(prep, candidates, batches, check[:sample], check_ref[:sample],
                                             reduce_range, cache, clock, tmp)
                best, stopped = search_float_layers(prep, ranked, batches, check, want, decide, min_agreement,
                                                    reduce_range, cache, clock, tmp, best)
                if prefix_best[0] > best[0]:  # neither met the target: return the closer one for the gate
                    best = (prefix_best[0], 0, prefix_best[1])
                else:
                    prefix = 0
        agree, k, out = best
        log.info("accuracy-aware int8: %d of %d layers in float, first %d ops in float: agreement %.3f on %d "
                 "images (%s, %.0f s)", k, len(candidates), prefix, agree, len(check), stopped, clock.elapsed)
        report.update(float_prefix_ops=prefix, float_layers=ranked[:k], quantized_layers=len(candidates) - k,
                      selection_agreement=agree,
                      selection_images=len(check), sensitivity_images=min(sample, len(check)),
                      ranked_layers=len(scores), stopped=stopped, budget_s=clock.budget_s,
                      seconds=round(clock.elapsed, 1),
                      sensitivity=[{"node": n, "mean_abs_diff": scores[n]} for n in ranked[:10] if n in scores])
        dst.write_bytes(out.read_bytes())
    return dst


def _agreement_on(check: np.ndarray, want: np.ndarray,
                  decide: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], float]:
    return lambda path: float((decide(_session_outputs(path, check)) == want).mean())


def search_float_prefix(prep: Path, names: list[str], batches: list[np.ndarray], measure: Callable[[Path], float],
                        min_agreement: float, reduce_range: bool, cache: Path, clock: QuantizeClock,
                        tmp: Path) -> tuple[int, tuple[float, Path | None]]:
    """Leave the graph's first 8, 16, 32, ... ops (input side, every type) in float until agreement is met.

    The first phase of the search, because it is cheap (no calibration,
    a few candidates) and fits CNNs whose early high-resolution layers carry a
    subtle signal: on the ELPV recipe the per-tensor INT8 activations of the
    first blocks cost most of the agreement, and keeping single layers float
    leaves their activations quantized for their neighbours. Stops at half
    the ops, or half the time budget. Returns (k, (agreement, model)) of the
    first candidate that meets the target, else of the best one.
    """
    best: tuple[int, tuple[float, Path | None]] = (0, (-1.0, None))
    k, steps = FIRST_PREFIX, max(1, (len(names) // 2 // FIRST_PREFIX).bit_length())
    while k <= len(names) // 2 and not clock.over(0.5):
        out = quantize_int8(prep, tmp / f"prefix{k}.onnx", batches, reduce_range=reduce_range,
                            nodes_to_exclude=names[:k], cache=cache)
        agree = measure(out)
        clock.tick(f"int8 accuracy-aware: first {k} ops in float, agreement {agree:.3f}",
                   (k // FIRST_PREFIX).bit_length(), steps)
        if agree > best[1][0]:
            best = (k, (agree, out))
        if agree >= min_agreement:
            break
        k *= 2
    return best


def search_float_layers(prep: Path, ranked: list[str], batches: list[np.ndarray], check: np.ndarray,
                        want: np.ndarray, decide: Callable[[np.ndarray], np.ndarray], min_agreement: float,
                        reduce_range: bool, cache: Path, clock: QuantizeClock, tmp: Path,
                        best: tuple[float, int, Path]) -> tuple[tuple[float, int, Path], str]:
    """Leave 1, 2, 4, ... of ``ranked`` in float until the agreement target is met (early exit).

    Returns ((agreement, k, path) of the best candidate, why the search stopped).
    """
    k, steps = 1, max(1, (len(ranked) // 2).bit_length())
    while k <= max(1, len(ranked) // 2):
        if clock.over():
            return best, "time budget"
        out = quantize_int8(prep, tmp / f"k{k}.onnx", batches, reduce_range=reduce_range,
                            nodes_to_exclude=ranked[:k], cache=cache)
        agree = float((decide(_session_outputs(out, check)) == want).mean())
        clock.tick(f"int8 accuracy-aware: {k} layers in float, agreement {agree:.3f}", k.bit_length(), steps)
        if agree > best[0]:
            best = (agree, k, out)
        if agree >= min_agreement:
            return best, "agreement met"
        k *= 2
    return best, "half the layers in float"


def fp16(src: Path, dst: Path, ctx: QuantizeContext) -> None:
    to_fp16(src, dst)
    ctx.report.update(keep_io_types=True)


def int8_ptq(src: Path, dst: Path, ctx: QuantizeContext) -> None:
    batches = list(ctx.calibration)
    reduce = needs_reduce_range()
    prep, _, full = int8_base(src, dst.parent / "base", batches, reduce, ctx.shared)
    shutil.copyfile(full, dst)
    ctx.report.update(float_ops=len(float_tail(prep)))
    ctx.report.update(format="QDQ", per_channel=True, activations="uint8", weights="int8",
                      reduce_range=reduce, calibration_images=sum(len(b) for b in batches),
                      reduce_range_reason=("host CPU lacks VNNI: U8S8 kernels would saturate"
                                           if reduce and not cpu_info()["vnni"] else None))


def int8_accuracy_aware(src: Path, dst: Path, ctx: QuantizeContext) -> None:
    reduce = needs_reduce_range()
    val = ctx.validation
    accuracy_aware_int8(src, dst, list(ctx.calibration), min_agreement=ctx.gate.min_agreement,
                        reduce_range=reduce, decide=ctx.model.decide, check=None if val is None else val.x,
                        report=ctx.report, budget_s=ctx.time_budget_s, progress=ctx.progress,
                        reference=None if val is None else val.reference, shared=ctx.shared)
    ctx.report.update(format="QDQ", per_channel=True, reduce_range=reduce)
