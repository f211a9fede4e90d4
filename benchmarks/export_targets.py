"""Export targets x precisions on one model: accuracy, agreement, size, batch-1 latency.

Usage::

    .venv/bin/python benchmarks/export_targets.py [--run runs/NAME] [--targets onnx,openvino,tensorrt]
        [--runs 200] [--calib-count 300] [--train-count 400] [--val-count 300]

With ``--run`` it exports that (fine-tuned) run. Without, it builds one that
needs no training engine: EfficientNet-Lite0 with its ImageNet weights plus a
linear head fitted on frozen features (a linear probe) to ELPV solar-cell
images (binary: any defect probability > 0 is ``defect``), read from the
``elpv-dataset`` package — offline.

Every row goes through ``edgetl.host.export.export_run`` with an explicit
precision and no fallback, i.e. the real export path and the real gate on the
validation images; a precision whose methods all fail the gate still reports
its numbers. Latency: median of ``--runs`` batch-1 calls after warm-up, through
the target's device runtime, next to PyTorch eager FP32 measured in the same
process right after each target (so both see the same load on a shared machine). ``tensorrt`` rows are the host's stand-in (ONNX Runtime on the Q/DQ
or float ONNX the device would build from), not TensorRT latency.
Prints a table and writes JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PRECISIONS = {"onnx": ("fp32", "fp16", "int8"), "openvino": ("fp32", "fp16", "int8"), "tensorrt": ("int8",)}


def materialise_elpv(root: Path, train_count: int, val_count: int, seed: int = 0) -> Path:
    """Copy ELPV cell images into ``root/{train,val}/{good,defect}`` (stratified, disjoint)."""
    import elpv_dataset

    base = Path(elpv_dataset.__file__).parent / "data"
    rows = [line.split() for line in (base / "labels.csv").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(rows))
    if (root / "val").exists():
        return root
    counts = {"train": 0, "val": 0}
    for i in order:
        path, prob = rows[i][0], float(rows[i][1])
        split = "train" if counts["train"] < train_count else "val" if counts["val"] < val_count else None
        if split is None:
            break
        cls = "defect" if prob > 0 else "good"
        dest = root / split / cls / Path(path).name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(base / path, dest)
        counts[split] += 1
    return root


def linear_probe_run(work: Path, data: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet) + a logistic head on frozen features, saved as a run."""
    import torch

    from edgetl.api import TrainedModel
    from edgetl.host.calibration import scan
    from edgetl.host.run import save_run_model
    from edgetl.plugins import get_manager
    from edgetl.preprocess import preprocess_file
    from edgetl.training import Classifier

    labels = ["defect", "good"]
    backbone = get_manager().get("backbone", "efficientnet_lite0")
    model = Classifier(backbone.build(pretrained=True), backbone.feature_dim, 2, dropout=0.0).eval()
    paths, y = scan(data / "train", labels)
    with torch.no_grad():
        feats = torch.cat([model.features(torch.from_numpy(np.concatenate(
            [preprocess_file(p, backbone.input) for p in paths[i:i + 32]]))) for i in range(0, len(paths), 32)])
    head = model.head[-1]
    weights = torch.tensor(len(y) / (2 * np.bincount(y, minlength=2).clip(1)), dtype=torch.float32)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    target = torch.from_numpy(y)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), target, weight=weights).backward()
        opt.step()
    trained = TrainedModel(module=model, task="classify", labels=labels, positive="defect")
    config = {"name": "elpv-lite0-probe", "data": {"train": str(data / "train"), "val": str(data / "val")},
              "backbone": {"name": "efficientnet_lite0", "pretrained": True},
              "strategy": {"name": "linear-probe (benchmark)", "options": {}}}
    run_dir = work / "run"
    save_run_model(run_dir, trained, backbone="efficientnet_lite0", strategy="linear-probe",
                   input_spec=backbone.input, name="elpv-lite0-probe", config=config)
    return run_dir


def torch_timer(run_dir: Path, runs: int):
    """A function measuring PyTorch eager FP32 batch-1 latency (median ms) of the run's model, now."""
    import torch

    from edgetl.host.export import median_latency_ms
    from edgetl.host.run import load_run

    run = load_run(run_dir)
    x = torch.zeros((1, 3, *run.input.size))

    def call(_):
        with torch.no_grad():
            run.model(x)

    return lambda: median_latency_ms(call, None, runs, warmup=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path)
    parser.add_argument("--targets", default="onnx,openvino,tensorrt")
    parser.add_argument("--precisions", default="fp32,fp16,int8", help="subset of precisions to run")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--train-count", type=int, default=400)
    parser.add_argument("--val-count", type=int, default=300)
    parser.add_argument("--gate", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    from edgetl.cpuinfo import cpu_info
    from edgetl.errors import GateFailedError
    from edgetl.host.export import ExportOptions, export_run

    work = args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    if args.run is None:
        data = materialise_elpv(work / "elpv", args.train_count, args.val_count)
        print(f"building a linear-probe run on {data} …", file=sys.stderr)
        args.run = linear_probe_run(work, data)
    torch_ms = torch_timer(args.run, args.runs)
    rows = []
    for fmt in args.targets.split(","):
        for precision in [p for p in PRECISIONS[fmt] if p in args.precisions.split(",")]:
            print(f"== {fmt} {precision}", file=sys.stderr)
            options = ExportOptions(format=fmt, precision=precision, gate=args.gate, calib_count=args.calib_count,
                                    latency_runs=args.runs, out=work / f"{fmt}-{precision}.edgetl",
                                    progress=lambda m: print("   " + m, file=sys.stderr))
            t = time.perf_counter()
            try:
                attempts = export_run(args.run, options).attempts
            except GateFailedError as exc:
                attempts = exc.attempts
            seconds = time.perf_counter() - t
            torch_now = torch_ms()  # right after this target's timings: a shared machine's load drifts
            for a in attempts:
                rows.append({"target": fmt, "precision": a["precision"], "method": a["method"],
                             "passed": a["passed"], "n": a.get("n"),
                             "accuracy_torch_fp32": a.get("reference_metric"),
                             "accuracy_exported": a.get("exported_metric"), "drop_points": a.get("drop_points"),
                             "agreement": a.get("agreement"), "agreement_ci95": a.get("agreement_ci95"),
                             "max_abs_diff": a.get("max_abs_diff"), "size_bytes": a.get("size_bytes"),
                             "latency_ms": a.get("latency_ms"), "torch_fp32_ms": torch_now,
                             "reason": a.get("reason"),
                             "details": {k: v for k, v in (a.get("details") or {}).items() if k != "sensitivity"},
                             "export_seconds": seconds})
    print_table(rows)
    doc = {"created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "run": str(args.run),
           "cpu": cpu_info(), "python": platform.python_version(), "latency_runs": args.runs,
           "rows": rows}
    out = args.out / f"export_targets-{dt.datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(doc, indent=2, default=str))
    print(f"wrote {out}")
    return 0


def print_table(rows: list[dict]) -> None:
    head = f"{'target':<9}{'precision/method':<26}{'gate':<6}{'acc fp32':>9}{'acc exp':>9}{'agree':>7}" \
           f"{'max|diff|':>11}{'size MB':>9}{'ms b=1':>8}{'torch ms':>9}{'speedup':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        if r["n"] is None:
            print(f"{r['target']:<9}{r['precision'] + '/' + r['method']:<26}error  {r['reason']}")
            continue
        ms = r["latency_ms"]
        print(f"{r['target']:<9}{r['precision'] + '/' + r['method']:<26}{'pass' if r['passed'] else 'FAIL':<6}"
              f"{r['accuracy_torch_fp32']:>9.4f}{r['accuracy_exported']:>9.4f}{r['agreement']:>7.3f}"
              f"{r['max_abs_diff']:>11.2e}{(r['size_bytes'] or 0) / 1e6:>9.2f}{ms:>8.2f}"
              f"{r['torch_fp32_ms']:>9.2f}{r['torch_fp32_ms'] / ms:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
