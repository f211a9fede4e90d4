"""Tiny synthetic image folders and run configs shared by the training tests (no tests here).

Two classes with a visible difference (``good``: smooth gradient with faint
noise; ``defect``: the same with a dark crack-like line), 40 px PNGs, so a
99 k-parameter network learns them in a few epochs on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml


def make_image(rng: np.random.Generator, defect: bool, size: int = 40) -> np.ndarray:
    """(size, size, 3) uint8 BGR."""
    base = np.linspace(90, 170, size, dtype=np.float32)[None, :].repeat(size, 0)
    img = base + rng.normal(0, 6, (size, size)).astype(np.float32)
    if defect:
        r = int(rng.integers(4, size - 4))
        thick = int(rng.integers(2, 4))
        if rng.random() < 0.5:
            img[r:r + thick, 3:size - 3] = 20
        else:
            img[3:size - 3, r:r + thick] = 20
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([img, img, img], axis=-1)


def make_folder(root: Path, per_class: dict[str, int], seed: int, size: int = 40) -> Path:
    import cv2

    rng = np.random.default_rng(seed)
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / cls / f"{cls}_{i:03d}.png"), make_image(rng, cls == "defect", size))
    return root


def make_dataset(root: Path, n_train: int = 24, n_val: int = 10, n_test: int = 0) -> Path:
    """root/train, root/val (and root/test) ImageFolders with classes good, defect."""
    make_folder(root / "train", {"good": n_train, "defect": n_train}, seed=1)
    make_folder(root / "val", {"good": n_val, "defect": n_val}, seed=2)
    if n_test:
        make_folder(root / "test", {"good": n_test, "defect": n_test}, seed=3)
    return root


def write_config(path: Path, data: Path, strategy: str = "finetune", options: dict | None = None,
                 **train) -> Path:
    """A run config for ``timm:test_efficientnet`` (pretrained: false) at 32 px."""
    cfg = {
        "name": "tiny",
        "data": {"train": str(data / "train"), "val": str(data / "val")},
        "backbone": {"name": "timm:test_efficientnet", "pretrained": False},
        "strategy": {"name": strategy, "options": options or {}},
        "train": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "image_size": 32, "dropout": 0.0,
                  "schedule": {"kind": "constant", "warmup_epochs": 0},
                  "early_stopping": {"metric": "balanced_accuracy", "patience": None}, **train},
        "augment": [],
    }
    if (data / "test").is_dir():
        cfg["data"]["test"] = str(data / "test")
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models: one thread. Several spin-wait for each other on a busy shared CPU (10x slower).

    Import it into a test module to apply it there (autouse, module scope).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
