"""Which part of a run's graph makes its INT8 fail: full QDQ vs chosen ops kept in float (ONNX Runtime).

Exports the run to ONNX, quantizes it as the ``int8/ptq`` step does (QDQ,
per-channel weights, MinMax on training images), once as is and once per
group of ops left in float, and prints top-1 agreement with FP32 and
accuracy on the run's validation images.

    python benchmarks/experiments/elpv_int8_layers.py runs/elpv-recipe-s0 --calib 64
"""

from __future__ import annotations

import argparse
import functools
import tempfile
from pathlib import Path

HEAD = ("Gemm", "MatMul")


def tail(nodes) -> list[str]:
    """Ops after the backbone's last convolution that are not weighted: pooling, concatenation, standardisation."""
    last = max(i for i, n in enumerate(nodes) if n.op_type == "Conv")
    return [n.name for n in nodes[last + 1:] if n.op_type not in HEAD]


def depthwise(nodes) -> list[str]:
    return [n.name for n in nodes if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def prefix(nodes, k: int) -> list[str]:
    return [n.name for n in nodes[:k]]


def stem(nodes) -> list[str]:
    return [next(n.name for n in nodes if n.op_type == "Conv")]


GROUPS = {
    "tail: pooling, concat, standardisation": tail,
    "head linear layers (Gemm)": lambda nodes: [n.name for n in nodes if n.op_type in HEAD],
    "tail + head (backbone alone INT8)": lambda nodes: tail(nodes) + [n.name for n in nodes if n.op_type in HEAD],
    "tail + stem conv": lambda nodes: tail(nodes) + stem(nodes),
    "tail + depthwise convs": lambda nodes: tail(nodes) + depthwise(nodes),
    **{f"tail + first {k} ops (every type)": functools.partial(lambda nodes, k: tail(nodes) + prefix(nodes, k), k=k)
       for k in (8, 16, 32)},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--calib", type=int, default=64)
    args = ap.parse_args()
    import onnx
    import torch
    from edgetl_builtins.onnx.quantize import _session_outputs

    from edgetl.host import calibration as cal
    from edgetl.host.run import load_run
    from edgetl.onnxtools import export_onnx, preprocess, quantize_int8

    run = load_run(args.run)
    train_dir, val_dir = cal.run_folders(run.config)
    val = cal.load_set(*cal.scan(val_dir, run.labels), run.input)
    calib = cal.calibration_batches(train_dir, run.labels, run.input, args.calib, batch=1)
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-int8-layers-"))
    prep = preprocess(export_onnx(run.model, torch.from_numpy(val.x[:1]), tmp / "m.onnx"), tmp / "p.onnx")
    ref = _session_outputs(prep, val.x).argmax(1)
    nodes = list(onnx.load(str(prep)).graph.node)
    print(f"FP32 accuracy {(ref == val.labels).mean():.3f} on {len(ref)} validation images")
    for label, pick in [("full INT8", lambda nodes: [])] + list(GROUPS.items()):
        keep = pick(nodes)
        # keep_tail_float=False: what this script measures is which group needs float, the tail included
        out = _session_outputs(quantize_int8(prep, tmp / f"q{label[:4]}{len(keep)}.onnx", calib,
                                             nodes_to_exclude=keep, keep_tail_float=False), val.x).argmax(1)
        print(f"{label:<42} float nodes {len(keep):>3}  agreement {(out == ref).mean():.3f}  "
              f"accuracy {(out == val.labels).mean():.3f}")


if __name__ == "__main__":
    main()
