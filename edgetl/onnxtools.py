"""ONNX for export-target authors: export, quantize and run an ONNX file (docs/plugins.md, "The ONNX SDK").

A target that ships ONNX (the built-in ``onnx`` and ``tensorrt`` targets) or
converts from it (``openvino``) needs the same few pieces: a checked export
from torch, ONNX Runtime's quantization passes on the file, a runtime over it,
and a way to feed any batch size to a model exported with a static batch. They
live here, in the core, so the built-ins share them as a third party would.

Importing this module loads no ML library (``edgetl --help`` registers plugins
that subclass :class:`OnnxFileQuantizer`): each function imports what it needs
when called. Host functions need ``torch``/``onnx`` (export) or
``onnx``/``onnxruntime`` (quantization); device functions need numpy and
``onnxruntime`` only, never torch.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.api import QuantizeContext, Quantizer, Runtime
from edgetl.errors import BundleError, ExportError

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np

    from edgetl.manifest import Manifest

__all__ = [
    "CALIBRATION_METHODS", "DEFAULT_BUDGET_S", "FIRST_PREFIX", "INPUT", "LEGACY_OPSET", "MAP", "OPSET", "OUTPUT",
    "WEIGHTED_OPS", "OnnxFileQuantizer", "OnnxRuntimeModel", "QuantizeClock", "check_onnx", "export_onnx",
    "float_tail", "input_name", "load_runtime", "onnx_file", "output_names", "output_ops", "preprocess",
    "quantize_int8", "run_static", "run_static_all", "tail_nodes", "to_fp16",
]

log = logging.getLogger("edgetl.export.onnx")

# -- host: torch -> ONNX ------------------------------------------------------

OPSET = 20
"""Opset of the dynamo exporter (:func:`export_onnx`'s first choice)."""
LEGACY_OPSET = 17
"""Opset of the legacy TorchScript exporter (the fallback)."""
INPUT, OUTPUT = "input", "output"
"""Names of the graph's input and first output."""
MAP = "map"
"""Second output of an anomaly model: (N, 1, H, W) normalised anomaly map."""


def output_names(model: Any, example: Any) -> list[str]:
    """``["output"]``, or for a model returning a tuple ``["output", "map", "output_2", …]``."""
    import torch

    with torch.no_grad():
        out = model(example)
    if not isinstance(out, (tuple, list)):
        return [OUTPUT]
    return [OUTPUT, MAP, *[f"output_{i}" for i in range(2, len(out))]][:len(out)]


def export_onnx(model: Any, example: Any, path: Path, *, dynamic_batch: bool = False,
                report: dict[str, Any] | None = None) -> Path:
    """Export ``model`` (put in eval mode) for inputs like ``example`` (B, 3, H, W) to ``path``; check it.

    The dynamo exporter (``torch.onnx.export(..., dynamo=True)``, :data:`OPSET`)
    is preferred: on tf_efficientnet_lite0 it folds TF "same" padding into a
    94-node graph that ONNX Runtime runs about twice as fast as the legacy
    exporter's 595-node graph. If it fails, the legacy exporter
    (:data:`LEGACY_OPSET`) is used and the reason logged and recorded. The
    batch dimension is static (``example``'s) unless ``dynamic_batch``. Input
    :data:`INPUT`, outputs :func:`output_names`. Every file passes
    :func:`check_onnx`. ``report`` (optional) receives ``exporter``,
    ``opset``, ``nodes`` and, on a fallback, ``fallback_reason``. Both
    exporters failing is an :class:`~edgetl.errors.ExportError`.
    """
    import onnx
    import torch

    report = report if report is not None else {}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    names = output_names(model, example)
    try:
        kwargs: dict[str, Any] = {}
        if dynamic_batch:
            kwargs["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
        # the dynamo exporter prints progress on stdout; keep stdout for --json
        with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=OPSET,
                              input_names=[INPUT], output_names=names, external_data=False,
                              verbose=False, **kwargs)
        report.update(exporter="dynamo", opset=OPSET)
    except Exception as exc:  # any exporter failure: fall back, say why
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        log.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter", reason)
        path.unlink(missing_ok=True)
        try:
            with contextlib.redirect_stdout(sys.stderr), torch.no_grad():
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=LEGACY_OPSET,
                                  input_names=[INPUT], output_names=names, do_constant_folding=True,
                                  dynamic_axes={INPUT: {0: "batch"}, **{n: {0: "batch"} for n in names}}
                                  if dynamic_batch else None)
        except Exception as exc2:
            raise ExportError(f"ONNX export failed with both exporters: dynamo ({reason}); "
                              f"legacy ({type(exc2).__name__}: {exc2})") from exc2
        report.update(exporter="legacy", opset=LEGACY_OPSET, fallback_reason=reason)
    check_onnx(path)
    report["nodes"] = len(onnx.load(str(path), load_external_data=False).graph.node)
    return path


def check_onnx(path: Path) -> None:
    """``onnx.checker`` with shape inference; an invalid file is an ExportError naming it."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{path}: ONNX checker rejected the model: {exc}") from exc


# -- host: quantizing an ONNX file (onnx, onnxruntime.quantization) ----------------

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
"""The op types ONNX Runtime quantizes weights of (and symmetric Q/DQ quantizes only)."""
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
"""``quantize_int8(calibration=...)``: ONNX Runtime's activation range estimators (CalibrationMethod)."""
CALIBRATION_CHUNK = 50
"""Most calibration batches ONNX Runtime holds the activations of at once (``CalibStridedMinMax``).

Its calibrators keep every intermediate tensor of every batch until the
ranges are computed: at 300 px an EfficientNet-Lite0 image is tens of MB of
activations, so 300 images at once would be gigabytes. Chunks merge ranges
(and histograms) exactly; the chunk must divide the count, so it is the
largest divisor up to this.
"""
DEFAULT_BUDGET_S = 90.0
"""Wall time an accuracy-aware quantizer aims for when the export gives none (``QuantizeContext.time_budget_s``)."""
FIRST_PREFIX = 8
"""The smallest float prefix (first ops of the graph left in float) an accuracy-aware search tries; then 16, 32, …"""


def onnx_file(files: Sequence[Path]) -> Path:
    """The first ``.onnx`` among a target's files; none is an ExportError listing them."""
    found = [Path(f) for f in files if str(f).endswith(".onnx")]
    if not found:
        raise ExportError("no .onnx file to quantize among " + ", ".join(map(str, files)))
    return found[0]


def input_name(path: Path) -> str:
    """Name of the graph's first input."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def to_fp16(src: Path, dst: Path) -> Path:
    """Float16 weights and compute; float32 graph inputs and outputs (the device feeds the same tensors)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    model.topological_sort()  # the converter appends the input Casts after their consumers
    onnx.save(model.model, str(dst))
    return Path(dst)


def preprocess(src: Path, dst: Path) -> Path:
    """ONNX Runtime's recommended pre-quantization pass (shape inference, graph optimisation).

    Never fails: if the pass does, ``src`` is copied to ``dst`` (logged), as quantizing it still works.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
    except Exception as exc:  # pre-processing is an optimisation; quantizing the original still works
        log.warning("quant_pre_process failed (%s: %s); quantizing the exported graph as is",
                    type(exc).__name__, exc)
        Path(dst).write_bytes(Path(src).read_bytes())
    return Path(dst)


def _reader(batches: list[np.ndarray], name: str):
    """A calibration reader over ``batches``; ``set_range`` lets ONNX Runtime calibrate in chunks."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i, self.end = 0, len(batches)

        def __len__(self):
            return len(batches)

        def set_range(self, start_index: int, end_index: int):
            self.i, self.end = start_index, min(end_index, len(batches))

        def get_next(self):
            if self.i >= self.end:
                return None
            self.i += 1
            return {name: np.ascontiguousarray(batches[self.i - 1], dtype=np.float32)}

        def rewind(self):
            self.i = 0

    return Reader()


def _chunk(n: int) -> int:
    return max(d for d in range(1, min(n, CALIBRATION_CHUNK) + 1) if n % d == 0)


def quantize_int8(src: Path, dst: Path, batches: list[np.ndarray], *, symmetric: bool = False,
                  reduce_range: bool = False, nodes_to_exclude: list[str] | None = None,
                  nodes_to_quantize: list[str] | None = None, cache: Path | None = None,
                  keep_tail_float: bool = True, calibration: str = "minmax", percentile: float = 99.999) -> Path:
    """``onnxruntime.quantization.quantize_static`` in QDQ format with per-channel INT8 weights.

    ``batches``: calibration inputs, each (B, 3, H, W) float32 (calibrated
    :data:`CALIBRATION_CHUNK` at a time). Activations are uint8, or with
    ``symmetric`` int8 with zero points 0, only :data:`WEIGHTED_OPS`
    quantized and bias left float (TensorRT's explicit quantization).
    ``reduce_range``: 7-bit weights (x86 without VNNI, whose U8S8 kernels
    saturate). The ops producing the graph outputs (:func:`output_ops`) stay
    float, and with ``keep_tail_float`` the feature tail (:func:`float_tail`);
    ``nodes_to_exclude``/``nodes_to_quantize`` narrow it further.
    ``calibration``: one of :data:`CALIBRATION_METHODS` (``percentile``: the
    range covers that percentile of the absolute values). ``cache``: a
    calibration-ranges file, written on the first call and reused (no
    calibration) when it exists.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # keep the head's output op (softmax/sigmoid) in float: probabilities at 1/255 resolution would
    # make a recall threshold such as 0.003 meaningless; and the feature tail (float_tail)
    nodes_to_exclude = list(nodes_to_exclude or []) + output_ops(src) + (float_tail(src) if keep_tail_float else [])
    if calibration not in CALIBRATION_METHODS:
        raise ExportError(f"calibration {calibration!r}: expected one of {', '.join(CALIBRATION_METHODS)}")
    extra: dict[str, Any] = {"CalibStridedMinMax": _chunk(len(batches))} if batches else {}
    if calibration == "percentile":
        extra["CalibPercentile"] = float(percentile)
    if symmetric:
        extra.update({"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False})
    use_cache = cache is not None and cache.exists()
    quantize_static(
        str(src), str(dst), None if use_cache else _reader(batches, input_name(src)),
        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(WEIGHTED_OPS) if symmetric else None,
        nodes_to_exclude=nodes_to_exclude or None, nodes_to_quantize=nodes_to_quantize or None,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[calibration], extra_options=extra or None,
        calibration_cache_path=str(cache) if cache is not None else None,
    )
    return Path(dst)


def float_tail(path: Path) -> list[str]:
    """Names of the unweighted ops that feed no convolution: pooling, concatenation, standardisation.

    They stay float. One per-tensor INT8 scale over pooled features of
    several stages, or over ``x - mean`` before ``* 1/std``, rounds the
    small-scale features to nothing, and standardisation then amplifies the
    error (the ELPV multi-stage probe: docs/export.md). They work on a few
    thousand numbers per image, so float costs no measurable time. Weighted
    layers among them (the head's Gemm/MatMul) are still quantized.
    """
    import onnx

    nodes = list(onnx.load(str(path), load_external_data=False).graph.node)
    return [nodes[i].name for i in tail_nodes([(n.op_type, list(n.input), list(n.output)) for n in nodes],
                                              conv_ops=("Conv",), weighted_ops=WEIGHTED_OPS) if nodes[i].name]


def tail_nodes(nodes: list[tuple[str, list[str], list[str]]], conv_ops: Sequence[str],
               weighted_ops: Sequence[str]) -> list[int]:
    """Indices of the ``(op_type, inputs, outputs)`` nodes that are not weighted and feed no ``conv_ops`` node.

    Pure graph logic (no onnx needed), so any graph format can use it: the
    OpenVINO target passes its own op names. Empty when the graph has no
    convolution (nothing to call a backbone).
    """
    producer = {out: i for i, (_, _, outs) in enumerate(nodes) for out in outs}
    feeds_conv: set[int] = set()
    todo = [i for i, (op, _, _) in enumerate(nodes) if op in conv_ops]
    if not todo:
        return []
    while todo:
        for name in nodes[todo.pop()][1]:
            j = producer.get(name)
            if j is not None and j not in feeds_conv:
                feeds_conv.add(j)
                todo.append(j)
    return [i for i, (op, _, _) in enumerate(nodes)
            if op not in conv_ops and op not in weighted_ops and i not in feeds_conv]


def output_ops(path: Path) -> list[str]:
    """Names of the nodes that produce the graph's outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    outputs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.name and outputs.intersection(n.output)]


class QuantizeClock:
    """Elapsed time against a budget, and throttled progress lines (about one per 10 % of a step).

    ``budget_s``: the export's ``QuantizeContext.time_budget_s`` (None:
    :data:`DEFAULT_BUDGET_S`). ``progress``: ``ctx.progress``; :meth:`tick`
    calls it with ``"STAGE (E s of B)"`` on the first, last and every tenth step.
    """

    def __init__(self, budget_s: float | None, progress: Callable[[str, int, int], None] | None = None):
        self.budget_s = DEFAULT_BUDGET_S if budget_s is None else float(budget_s)
        self.start = time.perf_counter()
        self.progress = progress or (lambda stage, done, total: None)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def over(self, fraction: float = 1.0) -> bool:
        """True once ``fraction`` of the budget is spent."""
        return self.elapsed > fraction * self.budget_s

    def tick(self, stage: str, done: int, total: int) -> None:
        if done == total or done == 1 or done % max(1, total // 10) == 0:
            self.progress(f"{stage} ({self.elapsed:.0f} s of {self.budget_s:.0f})", done, total)


class OnnxFileQuantizer(Quantizer):
    """A :class:`~edgetl.api.Quantizer` from one ONNX file to one ONNX file: implement :meth:`quantize_file`.

    :meth:`quantize` finds the ``.onnx`` among the target's files
    (:func:`onnx_file`), creates ``out_dir``, calls :meth:`quantize_file` with
    ``out_dir / "model.onnx"``, checks the result (:func:`check_onnx`) and
    returns it. Set ``target``, ``name``, ``precision`` and ``method`` as for
    any quantizer; ``requires`` and ``extra`` default to ``onnx`` and
    ``onnxruntime`` from ``edgetl[train]``.
    """

    requires = ("onnx", "onnxruntime")
    extra = "train"
    output_name = "model.onnx"

    def quantize(self, files: Sequence[Path], out_dir: Path, ctx: QuantizeContext) -> list[Path]:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        dst = out_dir / self.output_name
        self.quantize_file(onnx_file(files), dst, ctx)
        check_onnx(dst)
        return [dst]

    def quantize_file(self, src: Path, dst: Path, ctx: QuantizeContext) -> None:
        """Write the quantized ``src`` to ``dst``; record what was done in ``ctx.report``."""
        raise NotImplementedError(f"{type(self).__name__} must implement quantize_file(src, dst, ctx)")


# -- device: running an ONNX file (numpy, onnxruntime; never torch) ----------------

def run_static(run_one: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, fixed: int | None) -> np.ndarray:
    """``run_one`` over ``batch`` in chunks of ``fixed`` rows, the last one padded by repeating its last row.

    For a model exported with a static batch of ``fixed``: callers may pass
    any N and get N rows back (padding rows dropped). ``fixed`` None, or equal
    to N: one call with the whole batch.
    """
    return run_static_all(lambda chunk: [run_one(chunk)], batch, fixed)[0]


def run_static_all(run_one: Callable[[np.ndarray], Sequence[np.ndarray]], batch: np.ndarray,
                   fixed: int | None) -> list[np.ndarray]:
    """Like :func:`run_static` for a model with several outputs: ``run_one`` returns a list of arrays."""
    import numpy as np

    if fixed is None or len(batch) == fixed:
        return list(run_one(batch))
    parts = []
    for start in range(0, len(batch), fixed):
        chunk = batch[start:start + fixed]
        real = len(chunk)
        if real < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
        parts.append([out[:real] for out in run_one(chunk)])
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


class OnnxRuntimeModel(Runtime):
    """A :class:`~edgetl.api.Runtime` over one ONNX file: an ``onnxruntime.InferenceSession``.

    ``runtime``: ``providers`` (ONNX Runtime execution providers in order; the
    ones not available here are dropped, none left means CPU) and ``threads``
    (intra-op threads). A static batch is fed in chunks (:func:`run_static`).
    A file ONNX Runtime cannot load is a :class:`~edgetl.errors.BundleError`.
    """

    def __init__(self, path: Path, runtime: dict[str, Any], precision: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if runtime.get("threads"):
            opts.intra_op_num_threads = int(runtime["threads"])
        available = ort.get_available_providers()
        wanted = [p for p in (runtime.get("providers") or []) if p in available]
        providers = wanted or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise BundleError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.precision = precision
        self.providers = self.session.get_providers()
        self.ort_version = ort.__version__

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import numpy as np

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(run_static(self._run, batch, self.fixed_batch), dtype=np.float32)

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import numpy as np

        batch = np.ascontiguousarray(batch, dtype=np.float32)
        names = [o.name for o in self.session.get_outputs()]
        outs = run_static_all(lambda b: self.session.run(None, {self.input_name: b}), batch, self.fixed_batch)
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(names, outs, strict=True)}

    def info(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self.ort_version, "providers": self.providers,
                "precision": self.precision, "batch": self.fixed_batch or "dynamic"}


def load_runtime(files: Sequence[Path], manifest: Manifest, options: dict[str, Any] | None = None) -> Runtime:
    """An :class:`OnnxRuntimeModel` over the first ``.onnx`` of a bundle's target files.

    Settings: the manifest's ``target.runtime`` overlaid with ``options``
    (what ``Target.load`` receives). The ``onnx`` target's ``load`` is this;
    the ``tensorrt`` target gates with it on the host (``load_for_gate``).
    No ``.onnx`` among ``files`` is a :class:`~edgetl.errors.BundleError`.
    """
    runtime = {**manifest.target.runtime, **(options or {})}
    found = [Path(f) for f in files if str(f).endswith(".onnx")]
    if not found:
        raise BundleError("the bundle's target files hold no .onnx model")
    return OnnxRuntimeModel(found[0], runtime, manifest.target.precision)
