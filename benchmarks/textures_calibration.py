"""Calibrate `edgetl data textures`: can a pretrained backbone see the defects, and global statistics not?

Generates the set (or uses ``--data``), then measures on the **test** split:

- a linear probe on ``efficientnet_lite0`` pooled features (packaged ImageNet
  weights, offline): standardised features, logistic regression, C picked on val;
- classifiers on global statistics only (mean, std, 32-bin histogram of the
  grey image): logistic regression and a random forest, the better one reported.

The generator is calibrated when probe >= 0.85 and statistics <= 0.70. Prints
a table and writes JSON (``--json-out``, default benchmarks/results/textures_calibration.json).

    .venv/bin/python benchmarks/textures_calibration.py [--seed 0] [--per-class 120]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROBE_MIN, STATS_MAX = 0.85, 0.70


def _split(root: Path, split: str):
    from edgetl.data.folder import scan_image_folder

    return scan_image_folder(root / split, classes=["good", "defect"])


def backbone_features(samples, backbone_name: str = "efficientnet_lite0", batch: int = 32) -> np.ndarray:
    """(N, D) pooled features of ``samples`` through the backbone, THE preprocessing, eval mode."""
    import torch

    from edgetl.plugins import get_manager
    from edgetl.preprocess import preprocess_file

    backbone = get_manager().get("backbone", backbone_name)
    model = backbone.build(pretrained=True).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(samples.items), batch):
            x = np.stack([preprocess_file(s.path, backbone.input)[0] for s in samples.items[i:i + batch]])
            out.append(model(torch.from_numpy(x)).numpy())
    return np.concatenate(out)


def global_stats(samples) -> np.ndarray:
    """(N, 34): mean, std and a 32-bin normalised histogram of each grey image."""
    from edgetl.preprocess import read_image

    rows = []
    for s in samples.items:
        grey = read_image(s.path).mean(axis=2)
        hist, _ = np.histogram(grey, bins=32, range=(0, 256))
        rows.append(np.concatenate([[grey.mean(), grey.std()], hist / grey.size]))
    return np.array(rows)


def probe_accuracy(train, val, test, y_train, y_val, y_test) -> float:
    """Logistic regression on standardised features, C chosen on val; test accuracy."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best, best_val = None, -1.0
    for c in (0.001, 0.01, 0.1, 1.0):
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000)).fit(train, y_train)
        acc = clf.score(val, y_val)
        if acc > best_val:
            best, best_val = clf, acc
    return float(best.score(test, y_test))


def stats_accuracy(train, test, y_train, y_test) -> dict[str, float]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    logistic = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(train, y_train)
    forest = RandomForestClassifier(n_estimators=300, random_state=0).fit(train, y_train)
    return {"logistic": float(logistic.score(test, y_test)), "forest": float(forest.score(test, y_test))}


def calibrate(root: Path) -> dict:
    splits = {s: _split(root, s) for s in ("train", "val", "test")}
    y = {s: np.array(v.labels) for s, v in splits.items()}
    t0 = time.perf_counter()
    feats = {s: backbone_features(v) for s, v in splits.items()}
    probe = probe_accuracy(feats["train"], feats["val"], feats["test"], y["train"], y["val"], y["test"])
    t1 = time.perf_counter()
    stats = {s: global_stats(v) for s, v in splits.items()}
    stat_acc = stats_accuracy(stats["train"], stats["test"], y["train"], y["test"])
    return {"n": {s: len(v) for s, v in splits.items()}, "probe_acc": probe,
            "stats_acc": max(stat_acc.values()), "stats_detail": stat_acc,
            "probe_seconds": round(t1 - t0, 1), "calibrated": probe >= PROBE_MIN and max(stat_acc.values()) <= STATS_MAX}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--data", type=Path, help="an existing texture set (skips generating)")
    parser.add_argument("--json-out", type=Path, default=Path("benchmarks/results/textures_calibration.json"))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    from edgetl.data.textures import make_textures

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "textures"
            kwargs = {"per_class": args.per_class} if args.per_class else {}
            make_textures(root, seed=args.seed, **kwargs)
        result = calibrate(root)
    result.update(seed=args.seed, per_class=args.per_class)
    print(f"{'measure':<42}{'test acc':>10}{'bound':>10}")
    print(f"{'efficientnet_lite0 linear probe':<42}{result['probe_acc']:>10.3f}{'>= ' + str(PROBE_MIN):>10}")
    print(f"{'global statistics (best of logistic, RF)':<42}{result['stats_acc']:>10.3f}{'<= ' + str(STATS_MAX):>10}")
    print(f"n = {result['n']}, calibrated: {result['calibrated']}")
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(json.dumps(result, indent=2))
    return 0 if result["calibrated"] else 1


if __name__ == "__main__":
    sys.exit(main())
