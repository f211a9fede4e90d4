"""edgetl's patchcore/padim next to anomalib's PatchCore/PaDiM, same data, same weights, one run.

Data (both trained on good images only):
  textures  ``edgetl data textures`` (seed 0): train/good; val and test good + defect, with masks.
  elpv      ``edgetl data elpv --classes four`` (seed 0): train on ``p000`` cells of the train split
            (at most ``--elpv-train``, evenly spaced), test on the whole test split, defect = p > 0.
Backbone: EfficientNet-Lite0 with edgetl's packaged ImageNet weights, stages at strides 8 and 16, for
both libraries (anomalib gets the same state dict; ``pre_trained=False``, nothing downloaded).
Both run on the same preprocessed tensors (edgetl's preprocessing, 224 px) and the same coreset ratio.

Reported per dataset and method: image AUROC, pixel AUROC and PRO (textures: masks), fitting time,
memory-bank size, and the median latency (batch 1) of each library's model exported to OpenVINO FP32
on this CPU, next to an EfficientNet-Lite0 classifier's. anomalib runs in its own virtual environment
(``--anomalib-python``; benchmarks/experiments/requirements-anomalib.txt); without it only edgetl's rows are filled.

    python benchmarks/experiments/anomaly_vs_anomalib.py --work bench-out/anomaly --out bench-out/anomaly.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def edgetl(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "edgetl", *map(str, args)], check=True, cwd=ROOT)


def link_tree(items: list[tuple[Path, str]], root: Path) -> Path:
    """Symlink each (image, class) into root/<class>/ (a view of an existing dataset)."""
    for path, cls in items:
        (root / cls).mkdir(parents=True, exist_ok=True)
        dst = root / cls / path.name
        if not dst.exists():
            dst.symlink_to(path.resolve())
    return root


def textures(work: Path) -> Path:
    src = work / "textures"
    if not src.exists():
        edgetl("data", "textures", src, "--seed", "0")
    view = work / "textures-ad"
    if not view.exists():
        link_tree([(p, "good") for p in sorted((src / "train" / "good").iterdir())], view / "train")
        for split in ("val", "test"):
            link_tree([(p, p.parent.name) for p in sorted((src / split).rglob("*.jpg"))], view / split)
        (view / "masks").symlink_to((src / "masks").resolve())
    return view


def elpv(work: Path, n_train: int) -> Path:
    src = work / "elpv"
    if not src.exists():
        edgetl("data", "elpv", src, "--classes", "four", "--seed", "0")
    view = work / f"elpv-ad-{n_train}"
    if not view.exists():
        good = sorted((src / "train" / "p000").iterdir())
        pick = [good[i] for i in np.linspace(0, len(good) - 1, min(n_train, len(good))).astype(int)]
        link_tree([(p, "good") for p in pick], view / "train")
        for split in ("val", "test"):
            link_tree([(p, "good" if p.parent.name == "p000" else p.parent.name)
                       for p in sorted((src / split).rglob("*.png"))], view / split)
    return view


def ours(data: Path, method: str, coreset: float, out: Path, latency: bool) -> dict:
    """Train (edgetl train; an existing run is reused), its test metrics, export OpenVINO FP32 through the gate."""
    from edgetl.host.export import ExportOptions, export_run

    if not (out / "metrics.json").exists():
        train(data, method, coreset, out)
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["final"]["test"]
    row = {"image_auroc": test["image_auroc"], "pixel_auroc": test["pixel_auroc"], "pro": test["pro"],
           "fit_seconds": metrics["timing"]["fit_seconds"], "bank_size": metrics["strategy_facts"].get("bank_size"),
           "latency_ms": None, "export": None}
    if latency:
        result = export_run(out, ExportOptions(format="openvino", precision="fp32", out=out.with_suffix(".edgetl"),
                                               latency_runs=30))
        chosen = next(a for a in result.attempts if a["passed"])
        row.update(latency_ms=chosen["latency_ms"], export="edgetl export --format openvino (FP32, gated)")
    return row


def train(data: Path, method: str, coreset: float, out: Path) -> None:
    """``edgetl train`` of ``method`` on ``data`` (good-only train) into ``out``."""
    from edgetl.host.engine import train_from_file

    cfg = out.with_suffix(".yaml")
    options = {"coreset_ratio": coreset} if method == "patchcore" else {"channels": 100}
    cfg.write_text(json.dumps({
        "name": f"{data.name}-{method}", "data": {k: str(data / k) for k in ("train", "val", "test")},
        "backbone": {"name": "efficientnet_lite0"}, "strategy": {"name": method, "options": options},
        "train": {"batch_size": 32, "seed": 0}}))
    train_from_file(cfg, out=str(out), force=True, log=lambda m: print("  " + m, flush=True))


def tensors(data: Path, path: Path) -> tuple[np.ndarray, list[tuple[Path, bool, str]]]:
    """The train/test images through edgetl's preprocessing, saved for the anomalib side."""
    from edgetl.data.anomaly import load_anomaly_split
    from edgetl.plugins import get_manager
    from edgetl.preprocess import preprocess_file

    spec = get_manager().get("backbone", "efficientnet_lite0").input
    train = load_anomaly_split(data / "train", what="train", good_only=True)
    test = load_anomaly_split(data / "test", what="test")
    if not path.exists():
        np.savez(path, train=np.concatenate([preprocess_file(s.path, spec) for s in train.items]),
                 test=np.concatenate([preprocess_file(s.path, spec) for s in test.items]))
    return np.asarray(test.labels, bool), list(zip(test.masks, test.labels, test.kinds, strict=True))


def theirs(python: str, method: str, data: Path, work: Path, coreset: float) -> dict:
    """anomalib on the same tensors and weights, in its own venv; metrics computed here, the same way."""
    from edgetl.anomaly_metrics import anomaly_document
    from edgetl.data.anomaly import read_mask
    from edgetl.plugins import get_manager

    backbone = get_manager().get("backbone", "efficientnet_lite0")
    weights = work / "lite0-timm.pt"
    if not weights.exists():
        import torch

        torch.save(backbone.build().state_dict(), weights)
    npz = work / f"{data.name}-tensors.npz"
    y, extra = tensors(data, npz)
    out = work / f"{data.name}-anomalib-{method}.npz"
    proc = subprocess.run([python, str(ROOT / "benchmarks" / "experiments" / "anomalib_side.py"), "--method", method, "--data",
                           str(npz), "--weights", str(weights), "--coreset", str(coreset), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:300] if proc.stderr.strip() else "failed"}
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    found = np.load(out)
    masks = [read_mask(m, backbone.input, bool(a)) for m, a, _ in extra]
    has = any(m is not None for m, _, _ in extra)
    doc = anomaly_document(y, found["scores"], list(found["maps"].astype(np.float32)) if has else None,
                           masks if has else None)
    return {"image_auroc": doc["image_auroc"], "pixel_auroc": doc["pixel_auroc"], "pro": doc["pro"], **facts}


def classifier_latency(work: Path) -> float | None:
    """EfficientNet-Lite0 + linear head, exported to OpenVINO FP32: the classifier's latency, batch 1."""
    import torch

    from edgetl.bench import time_calls
    from edgetl.plugins import get_manager
    from edgetl.training import Classifier

    backbone = get_manager().get("backbone", "efficientnet_lite0")
    model = Classifier(backbone.build(), backbone.feature_dim, 2, dropout=0.0).eval()
    target = get_manager().get("target", "openvino")
    x = torch.zeros(1, 3, *backbone.input.size)
    from edgetl_builtins.openvino.runtime import OpenVinoModel

    from edgetl.api import ExportSpec

    files = target.export(model, x, work / "classifier-ov", ExportSpec())
    runtime = OpenVinoModel(files[0], {}, "fp32")
    return float(np.median(time_calls(runtime.predict, x.numpy(), 5, 30)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "bench-out" / "anomaly")
    ap.add_argument("--out", type=Path, default=ROOT / "bench-out" / "anomaly.json")
    ap.add_argument("--anomalib-python", default="/work/venv-anomalib/bin/python")
    ap.add_argument("--coreset", type=float, default=0.01)
    ap.add_argument("--elpv-train", type=int, default=300, help="p000 training cells used (evenly spaced)")
    ap.add_argument("--datasets", default="textures,elpv")
    ap.add_argument("--latency-on", default="textures", help="datasets whose exported models are timed")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    have_anomalib = Path(args.anomalib_python).exists()
    doc = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "coreset_ratio": args.coreset,
           "elpv_train": args.elpv_train, "classifier_latency_ms": None,
           "anomalib": "not installed" if not have_anomalib else args.anomalib_python, "rows": []}
    for name in args.datasets.split(","):
        data = textures(args.work) if name == "textures" else elpv(args.work, args.elpv_train)
        for method in ("patchcore", "padim"):
            print(f"== {name} {method}: edgetl", flush=True)
            add(args, doc, {"dataset": name, "method": method, "library": "edgetl",
                            **ours(data, method, args.coreset, args.work / f"{data.name}-{method}",
                                   name in args.latency_on)})
            if have_anomalib:
                print(f"== {name} {method}: anomalib", flush=True)
                add(args, doc, {"dataset": name, "method": method, "library": "anomalib",
                                **theirs(args.anomalib_python, method, data, args.work, args.coreset)})
    if args.latency_on:
        doc["classifier_latency_ms"] = classifier_latency(args.work)
        args.out.write_text(json.dumps(doc, indent=2, default=float))
    print("| data | method | library | image AUROC | pixel AUROC | PRO | fit s | bank | latency ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in doc["rows"]:
        print(row_line(r))
    print(f"EfficientNet-Lite0 classifier, OpenVINO FP32, batch 1: {_f(doc['classifier_latency_ms'], 2)} ms")


def _f(v, d=3):
    return "–" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))


def row_line(r: dict) -> str:
    return (f"| {r['dataset']} | {r['method']} | {r['library']} | {_f(r.get('image_auroc'))} | "
            f"{_f(r.get('pixel_auroc'))} | {_f(r.get('pro'))} | {_f(r.get('fit_seconds'), 1)} | "
            f"{_f(r.get('bank_size'))} | {_f(r.get('latency_ms'), 2)} |" + (f" {r['error']}" if r.get("error") else ""))


def add(args: argparse.Namespace, doc: dict, row: dict) -> None:
    """Record a row: printed and written at once, so a long run leaves every finished row behind."""
    doc["rows"].append(row)
    args.out.write_text(json.dumps(doc, indent=2, default=float))
    print("ROW " + row_line(row), flush=True)


if __name__ == "__main__":
    main()
