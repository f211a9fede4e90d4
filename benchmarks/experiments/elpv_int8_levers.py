"""Which quantization settings keep a run's INT8 within the gate: one lever at a time, ONNX Runtime and OpenVINO.

Exports the run once (FP32 ONNX, pre-processed as the ``int8/ptq`` step
does; OpenVINO IR converted from it), computes the FP32 torch outputs on
the validation images (what the gate compares with) and, with ``--test``,
on the test images, then quantizes the model once per lever and scores it
with the export's own gate (``edgetl.host.gate.gate``: agreement with the
tie rule, accuracy drop) on val — what a selection may look at — and
reports test accuracy next to it (never used to select). Levers:

- ``ort-*``: ``onnxruntime.quantization.quantize_static`` (QDQ, per-channel
  weights, the feature tail float as in the export) with other calibration
  methods (percentile, entropy), more calibration images, symmetric
  activations; ``nncf-onnx-*``: nncf's ONNX backend (QDQ graph, run in ONNX
  Runtime) with its bias correction.
- ``ov-*``: ``nncf.quantize`` of the IR (the ``openvino-int8-ptq`` step)
  with full bias correction, the MIXED preset, channel alignment, quantile
  ranges, more calibration images.

    python benchmarks/experiments/elpv_int8_levers.py runs/elpv-recipe-s0 --work runs/int8-levers --test \\
        --lever ort-minmax --lever ov-default --out benchmarks/results/elpv/int8-levers.json

Each result is appended to ``--out`` as it finishes (one record per lever), so
the levers can be run a few at a time (under the heavy lock) and printed
together with ``--table``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def ort_lever(name: str) -> dict[str, Any]:
    """``quantize_int8`` keyword arguments of an ``ort-*`` lever (calibration count via ``calib``)."""
    table = {
        "ort-minmax": {},
        "ort-percentile-99.999": {"calibration": "percentile", "percentile": 99.999},
        "ort-percentile-99.99": {"calibration": "percentile", "percentile": 99.99},
        "ort-entropy": {"calibration": "entropy"},
        "ort-symmetric": {"symmetric": True},  # signed activations, zero point 0 (the TensorRT Q/DQ step's form)
    }
    return table[name]


def ov_lever(name: str) -> dict[str, Any]:
    """``nncf.quantize`` keyword arguments of an ``ov-*`` / ``nncf-onnx-*`` lever."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    def adv(**kw: Any) -> AdvancedQuantizationParameters:
        return AdvancedQuantizationParameters(**kw)

    table = {
        "default": {},
        "bias-correction": {"fast_bias_correction": False},
        "mixed": {"preset": nncf.QuantizationPreset.MIXED},
        "channel-alignment": {"advanced": adv(disable_channel_alignment=False)},
        "quantile": {"advanced": adv(activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE)},
        "histogram": {"advanced": adv(activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)},
        "minmax": {"advanced": adv(activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)},
        "mixed-bias-correction": {"preset": nncf.QuantizationPreset.MIXED, "fast_bias_correction": False},
        "bias-correction-quantile": {"fast_bias_correction": False, "advanced": adv(
            activations_range_estimator_params=RangeEstimatorParametersSet.MEAN_QUANTILE)},
    }
    return table[name.split("-", 1)[1] if name.startswith("ov-") else name.removeprefix("nncf-onnx-")]


def parse(spec: str) -> tuple[str, int | None, int]:
    """``LEVER[+prefixK][@N]``: the first K ops left float; N calibration images (``all``: the whole train split)."""
    name, _, count = spec.partition("@")
    name, _, prefix = name.partition("+prefix")
    return name, (None if count in ("", "all") else int(count)) if count else 300, int(prefix or 0)


class Bench:
    """The run, its FP32 graphs, the images and FP32 outputs, made once per process."""

    def __init__(self, run_dir: str, work: Path, with_test: bool):
        import torch

        from edgetl.host import calibration as cal
        from edgetl.host.export import torch_outputs
        from edgetl.host.run import load_run
        from edgetl.onnxtools import export_onnx, preprocess

        work.mkdir(parents=True, exist_ok=True)
        self.run, self.work = load_run(run_dir), work
        self.train_dir, val_dir = cal.run_folders(self.run.config)
        self.sets = {"val": cal.load_set(*cal.scan(val_dir, self.run.labels), self.run.input)}
        test_dir = (self.run.config.get("data") or {}).get("test")
        if with_test and test_dir:
            self.sets["test"] = cal.load_set(*cal.scan(test_dir, self.run.labels), self.run.input)
        self.ref = {k: torch_outputs(self.run.model, s.x) for k, s in self.sets.items()}
        fp32 = work / "fp32.onnx"
        if not fp32.exists():
            export_onnx(self.run.model, torch.from_numpy(self.sets["val"].x[:1]), fp32)
        self.fp32 = fp32
        self.prep = work / "prep.onnx"
        if not self.prep.exists():
            preprocess(fp32, self.prep)
        self._calib: dict[Any, list[np.ndarray]] = {}

    def calib(self, count: int | None) -> list[np.ndarray]:
        from edgetl.host import calibration as cal

        if count not in self._calib:
            self._calib.clear()  # one set in memory at a time (the whole train split is ~2 GB)
            n = count or len(cal.scan(self.train_dir, self.run.labels)[0])
            self._calib[count] = cal.calibration_batches(self.train_dir, self.run.labels, self.run.input, n)
        return self._calib[count]

    def score(self, predict: Any) -> dict[str, Any]:
        """The gate's figures on val (and test accuracy FP32 vs INT8) for a batch-1 ``predict``."""
        from edgetl.host.gate import gate

        out: dict[str, Any] = {}
        for name, data in self.sets.items():
            outputs = np.concatenate([predict(data.x[i:i + 1]) for i in range(len(data.x))])
            g = gate(outputs, self.ref[name], data.labels, task=self.run.task, labels=self.run.labels,
                     threshold=self.run.threshold, positive=self.run.positive, max_drop_points=1.0,
                     min_agreement=0.98)
            out[name] = {k: g[k] for k in ("n", "agreement", "ties", "reference_metric", "exported_metric",
                                           "drop_points", "max_abs_diff", "passed")}
        return out


def quantize_ort(bench: Bench, name: str, count: int | None, dst: Path) -> Path:
    from edgetl.onnxtools import quantize_int8

    return quantize_int8(bench.prep, dst, bench.calib(count), **ort_lever(name))


def quantize_nncf_onnx(bench: Bench, name: str, count: int | None, dst: Path, prefix: int = 0) -> Path:
    """nncf's ONNX backend on the FP32 graph (QDQ out, for ONNX Runtime); the export's float tail ignored."""
    import nncf
    import onnx

    from edgetl.onnxtools import float_tail, output_ops
    from edgetl.onnxtools import input_name as _input_name

    kw = ov_lever(name)
    batches = bench.calib(count)
    input_name = _input_name(bench.prep)
    first = [n.name for n in onnx.load(str(bench.prep)).graph.node][:prefix]
    model = nncf.quantize(onnx.load(str(bench.prep)), nncf.Dataset(batches, lambda b: {input_name: b}),
                          subset_size=len(batches), target_device=nncf.TargetDevice.CPU,
                          preset=kw.get("preset"), fast_bias_correction=kw.get("fast_bias_correction", True),
                          advanced_parameters=kw.get("advanced"),
                          ignored_scope=nncf.IgnoredScope(
                              names=float_tail(bench.prep) + output_ops(bench.prep) + first, validate=False))
    onnx.save(model, str(dst))
    return dst


def quantize_ov(bench: Bench, name: str, count: int | None, dst: Path, prefix: int = 0) -> Any:
    """``nncf.quantize`` of the IR as the openvino-int8-ptq step does, with the lever's settings.

    ``prefix``: the first ops (input side) in nncf's ignored scope, so bias correction sees them float
    (taking them back to float after quantizing, as the accuracy-control step's prefix does, leaves the
    later layers' corrections tuned to a quantized prefix).
    """
    import nncf
    import openvino as ov
    from edgetl_builtins.openvino.quantize import SKIP_TYPES, _compressed, float_tail
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    kw = ov_lever(name)
    kw.setdefault("advanced", AdvancedQuantizationParameters())
    kw["advanced"].backend_params = {"compress_weights": False}
    batches = bench.calib(count)
    model = ov.convert_model(str(bench.fp32))
    first = [o.get_friendly_name() for o in model.get_ordered_ops() if o.get_type_name() not in SKIP_TYPES][:prefix]
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                              target_device=nncf.TargetDevice.CPU, preset=kw.get("preset"),
                              fast_bias_correction=kw.get("fast_bias_correction", True),
                              advanced_parameters=kw.get("advanced"),
                              ignored_scope=nncf.IgnoredScope(names=float_tail(model) + first, validate=False))
    ov.save_model(_compressed(quantized), str(dst), compress_to_fp16=False)
    return dst


def predictor(path: Path) -> Any:
    if path.suffix == ".xml":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return lambda x: np.asarray(compiled(x)[compiled.outputs[0]])
    from edgetl.onnxtools import OnnxRuntimeModel

    return OnnxRuntimeModel(path, {}, "int8").predict


def run_lever(bench: Bench, spec: str) -> dict[str, Any]:
    name, count, prefix = parse(spec)
    slug = spec.replace("@", "-at-").replace(".", "_")
    t = time.perf_counter()
    if name.startswith("ort-"):
        if prefix:
            raise SystemExit("+prefix is for the nncf levers (the ONNX export's own search covers ort-*)")
        path = quantize_ort(bench, name, count, bench.work / f"{slug}.onnx")
    elif name.startswith("nncf-onnx-"):
        path = quantize_nncf_onnx(bench, name, count, bench.work / f"{slug}.onnx", prefix)
    elif name.startswith("ov-"):
        path = quantize_ov(bench, name, count, bench.work / f"{slug}.xml", prefix)
    else:
        raise SystemExit(f"unknown lever {name!r}")
    seconds = time.perf_counter() - t
    figures = bench.score(predictor(path))
    return {"lever": name + (f" + first {prefix} ops float" if prefix else ""), "calibration_images": sum(len(b) for b in bench.calib(count)),
            "quantize_s": round(seconds, 1), **figures}


def windows(bench: Bench, size: int, count: int | None) -> list[dict[str, Any]]:
    """Sensitivity by graph region (ONNX Runtime, MinMax): each window of ``size`` consecutive ops alone in INT8.

    The graph's ops in order, the feature tail excluded (it stays float);
    a window's agreement on val says how much of the loss that region
    carries. Calibrated once (the ranges are cached and reused).
    """
    import onnx

    from edgetl.onnxtools import float_tail, quantize_int8

    tail = set(float_tail(bench.prep))
    names = [n.name for n in onnx.load(str(bench.prep)).graph.node if n.name and n.name not in tail]
    cache = bench.work / f"calibration-minmax-{count}.json"
    out = []
    for start in range(0, len(names), size):
        part = names[start:start + size]
        path = quantize_int8(bench.prep, bench.work / "window.onnx", bench.calib(count), nodes_to_quantize=part,
                             cache=cache)
        val = bench.score(predictor(path))["val"]
        ops = sorted({n.split("_")[1] for n in part if n.count("_") >= 2})
        out.append({"window": [start, start + len(part)], "ops": ops, "agreement": val["agreement"],
                    "max_abs_diff": val["max_abs_diff"]})
        print(f"ops {start:>3}-{start + len(part):<3} {','.join(ops):<40} INT8 alone: agreement "
              f"{val['agreement']:.3f}, max abs diff {val['max_abs_diff']:.3f}", flush=True)
    return out


def table(records: list[dict[str, Any]]) -> str:
    rows = ["| lever | calib | quantize s | val agreement | ties | val acc FP32 -> INT8 | test acc FP32 -> INT8 "
            "(points) | max abs diff (val) |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        v, t = r["val"], r.get("test")
        test = (f"{100 * t['reference_metric']:.2f} -> {100 * t['exported_metric']:.2f} ({-t['drop_points']:+.2f})"
                if t else "–")
        rows.append(f"| {r['lever']} | {r['calibration_images']} | {r['quantize_s']} | "
                    f"{round(v['agreement'] * v['n'])}/{v['n']} = {v['agreement']:.3f} | {v['ties']} | "
                    f"{100 * v['reference_metric']:.2f} -> {100 * v['exported_metric']:.2f} | {test} | "
                    f"{v['max_abs_diff']:.3f} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?")
    ap.add_argument("--work", type=Path, default=Path("runs/int8-levers"))
    ap.add_argument("--lever", action="append", default=[], help="LEVER[@N|@all], repeatable")
    ap.add_argument("--test", action="store_true", help="also score test accuracy (reported, never selected on)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/elpv/int8-levers.json"))
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    ap.add_argument("--windows", type=int, default=0, help="sensitivity by windows of N ops (ONNX Runtime)")
    args = ap.parse_args()
    records = json.loads(args.out.read_text()) if args.out.exists() else []
    if not args.table:
        bench = Bench(args.run, args.work, args.test)
        if args.windows:
            found = windows(bench, args.windows, 300)
            args.out.with_name(args.out.stem + "-windows.json").write_text(json.dumps(found, indent=1))
        for spec in args.lever:
            try:
                record = run_lever(bench, spec)
            except Exception as exc:  # one lever that fails (a tool's bug) is a result, not the end of the job
                import traceback

                traceback.print_exc()
                print(f"{spec}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                continue
            record.update(run=args.run, when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            records.append(record)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(records, indent=1))
            print(table([record]).splitlines()[-1], flush=True)
    print(table(records))


if __name__ == "__main__":
    main()
