"""Shared helpers for tests that need a run, a bundle or a tiny labelled image folder.

``make_tiny_run`` builds a run directory *without training*: timm's
``test_efficientnet`` (99k parameters, random init, seeded) plus a fresh
Classifier head, saved with :func:`edgetl.host.run.save_run_model`. Its
config points at a tiny ImageFolder (train + val) written here, so export's
calibration and gate have real images to read.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ("defect", "good")
IMAGE_SIZE = 48


def write_image_folder(root: Path, per_class: int, seed: int, size: int = 40) -> Path:
    """Write ``root/<class>/NNN.png`` synthetic images: dark speckles for ``defect``, smooth for ``good``."""
    import cv2

    rng = np.random.default_rng(seed)
    for cls in CLASSES:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = rng.integers(90, 170)
            img = np.full((size, size + 8, 3), base, dtype=np.uint8)
            img = (img + rng.normal(0, 6, img.shape)).clip(0, 255).astype(np.uint8)
            if cls == "defect":
                for _ in range(3):
                    x, y = rng.integers(2, size - 6, 2)
                    cv2.line(img, (int(x), int(y)), (int(x) + 6, int(y) + 5), (20, 20, 20), 2)
            cv2.imwrite(str(root / cls / f"{i:03d}.png"), img)
    return root


def make_tiny_data(tmp_path: Path, per_class_train: int = 12, per_class_val: int = 16) -> Path:
    """``tmp_path/data/{train,val}/{defect,good}/*.png``; returns the data root."""
    data = Path(tmp_path) / "data"
    if not (data / "val").exists():
        write_image_folder(data / "train", per_class_train, seed=1)
        write_image_folder(data / "val", per_class_val, seed=2)
    return data


def make_tiny_run(tmp_path: Path, name: str = "tiny", seed: int = 0) -> Path:
    """A run directory (``model.pt``) from timm:test_efficientnet + a random head, no training."""
    import torch

    from edgetl.api import InputSpec, TrainedModel
    from edgetl.host.run import save_run_model
    from edgetl.plugins import get_manager
    from edgetl.training import Classifier

    data = make_tiny_data(tmp_path)
    run_dir = Path(tmp_path) / "runs" / name
    if (run_dir / "model.pt").is_file():  # made earlier in this folder: reuse (same seed, same model)
        return run_dir
    torch.manual_seed(seed)
    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    features = backbone.build(pretrained=False)
    model = Classifier(features, backbone.feature_dim, len(CLASSES), dropout=0.0).eval()
    spec = InputSpec(size=(IMAGE_SIZE, IMAGE_SIZE), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    _fit_quickly(model, data / "train", spec)
    trained = TrainedModel(module=model, task="classify", labels=list(CLASSES), threshold=None,
                           output="probabilities", positive="defect")
    config = {"name": name, "data": {"train": str(data / "train"), "val": str(data / "val")},
              "backbone": {"name": "timm:test_efficientnet", "pretrained": False},
              "strategy": {"name": "none", "options": {}}}
    save_run_model(run_dir, trained, backbone="timm:test_efficientnet", strategy="none",
                   input_spec=spec, name=name, config=config)
    return run_dir


def _fit_quickly(model, train: Path, spec) -> None:
    """About a second instead of training: re-estimate BatchNorm statistics on the training images
    (a random-init network otherwise emits near-constant features), then fit the linear head on the
    frozen features. The result classifies the synthetic images confidently, so gate tests mean something.
    """
    import torch

    from edgetl.preprocess import preprocess_file

    files = sorted(train.rglob("*.png"))
    x = torch.from_numpy(np.concatenate([preprocess_file(f, spec) for f in files]))
    y = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the one pass
    model.train()
    with torch.no_grad():
        model.features(x)
    model.eval()
    with torch.no_grad():
        feats = model.features(x)
    head = model.head[-1]
    opt = torch.optim.Adam(head.parameters(), lr=3e-2)
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), y).backward()
        opt.step()


def minimal_manifest(**overrides: Any) -> dict[str, Any]:
    """A schema-valid manifest for bundle-format tests (no model behind it)."""
    doc = {
        "schema_version": 1, "name": "tiny", "model_version": "tiny-20260101-abcdef0",
        "created": _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc).isoformat(),
        "task": "classify", "labels": list(CLASSES), "threshold": None, "positive": "defect",
        "output": "probabilities",
        "input": {"size": [IMAGE_SIZE, IMAGE_SIZE], "mean": [0.5] * 3, "std": [0.5] * 3,
                  "color": "RGB", "resize": "resize", "crop_pct": 0.875, "roi": None, "tile": None},
        "target": {"format": "onnx", "precision": "fp32", "method": "default", "files": ["model/model.onnx"]},
        "compat": {"arch": "x86_64", "runtimes": {}, "host_cpu": {}},
        "files": {},
    }
    doc.update(overrides)
    return doc


def make_tiny_bundle(tmp_path: Path, fmt: str = "onnx", precision: str = "fp32", key: Any = None,
                     out: Path | None = None) -> Path:
    """Export the tiny run with the real pipeline (gate on the tiny val set) into a bundle.

    ``key`` is a path to a ``.key`` file, a loaded private key, or None (unsigned).
    The gate is left wide open (any drop, any agreement) so a bundle always comes
    out: tests of the gate itself live in tests/test_export_*.py.
    """
    from edgetl.host.export import ExportOptions, export_run

    run_dir = make_tiny_run(tmp_path)
    out = out or Path(tmp_path) / f"tiny-{fmt}-{precision}.edgetl"
    options = ExportOptions(format=fmt, precision=precision, calib_count=16, sign=key, out=out,
                            fallback=False, gate=100.0, min_agreement=0.0, latency_runs=0)
    return export_run(run_dir, options).bundle
