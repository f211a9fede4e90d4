"""A tiny anomaly set with pixel masks, and run configs for it (no tests here).

Good images: a smooth gradient with faint noise. Anomalous images: the same
with one dark disc (folder ``hole``) or bright bar (``smear``); each defect's
0/255 mask is written to ``masks/<split>/<class>/<stem>.png`` as
``edgetl data textures`` does. Training holds good images only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

SIZE = 48


def _image(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    base = np.linspace(90, 170, SIZE, dtype=np.float32)[None, :].repeat(SIZE, 0)
    img = base + rng.normal(0, 4, (SIZE, SIZE)).astype(np.float32)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    c = (int(rng.integers(10, SIZE - 10)), int(rng.integers(10, SIZE - 10)))
    if kind == "hole":
        cv2.circle(mask, c, int(rng.integers(4, 7)), 255, -1)
        img[mask > 0] = 15
    elif kind == "smear":
        cv2.line(mask, (c[0] - 8, c[1]), (c[0] + 8, c[1]), 255, 3)
        img[mask > 0] = 250
    img = np.clip(img, 0, 255).astype(np.uint8)
    return np.stack([img] * 3, axis=-1), mask


def make_anomaly_set(root: Path, n_train: int = 20, n_val: int = 8, n_test: int = 8) -> Path:
    """root/train/good, root/{val,test}/{good,hole,smear} and root/masks/{val,test}/{hole,smear}."""
    import cv2

    plan = {"train": {"good": n_train}, "val": {"good": n_val, "hole": n_val // 2, "smear": n_val // 2},
            "test": {"good": n_test, "hole": n_test // 2, "smear": n_test // 2}}
    for s, (split, classes) in enumerate(plan.items()):
        rng = np.random.default_rng(s)
        for kind, n in classes.items():
            (root / split / kind).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, mask = _image(rng, kind)
                cv2.imwrite(str(root / split / kind / f"{kind}_{i:03d}.png"), img)
                if kind != "good":
                    (root / "masks" / split / kind).mkdir(parents=True, exist_ok=True)
                    cv2.imwrite(str(root / "masks" / split / kind / f"{kind}_{i:03d}.png"), mask)
    return root


def anomaly_config(path: Path, data: Path, strategy: str = "patchcore", options: dict | None = None,
                   val: bool = True, **data_extra) -> Path:
    """A run config on ``timm:test_efficientnet`` (pretrained: false) at 48 px."""
    cfg = {
        "name": f"tiny-{strategy}",
        "data": {"train": str(data / "train"), "test": str(data / "test"),
                 **({"val": str(data / "val")} if val else {}), **data_extra},
        "backbone": {"name": "timm:test_efficientnet", "pretrained": False},
        "strategy": {"name": strategy, "options": {"stages": [1, 2], **(options or {})}},
        "train": {"image_size": SIZE, "batch_size": 8},
    }
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path
