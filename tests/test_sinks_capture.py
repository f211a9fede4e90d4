"""The capture sink: what it keeps, and its size/age retention."""

from __future__ import annotations

import json
import os
import random
import time

import numpy as np
import pytest

from edgetl.api import Frame
from edgetl.errors import ConfigError
from edgetl.plugins import get_manager


def frame(i: int, size: int = 64) -> Frame:
    rng = np.random.default_rng(i)
    return Frame(image=rng.integers(0, 255, (size, size, 3), dtype=np.uint8), timestamp=time.time(), index=i,
                 source="cam")


def result(label: str, good: float) -> dict:
    return {"label": label, "scores": {"good": good, "defect": 1 - good}, "model": "m-1", "frame": 0}


def test_capture_keeps_defects_and_near_threshold_frames_with_their_prediction(tmp_path):
    writer = get_manager().get("sink", "capture").open({"dir": str(tmp_path), "margin": 0.1, "sample": 0})
    writer.write(result("defect", 0.2), frame(1))
    writer.write(result("good", 0.54), frame(2))      # 0.54 vs 0.46: within 0.1 → near threshold
    writer.write(result("good", 0.95), frame(3))      # confident good, no sampling → not kept
    writer.write(result("defect", 0.1), None)         # no frame: nothing to save
    writer.close()
    sidecars = sorted(tmp_path.glob("*.json"))
    reasons = [json.loads(p.read_text())["reason"] for p in sidecars]
    assert sorted(reasons) == ["defect", "near_threshold"]
    assert len(list(tmp_path.glob("*.png"))) == 2
    doc = json.loads(next(p for p in sidecars if "defect" in p.name).read_text())
    assert doc["result"]["label"] == "defect" and doc["frame_source"] == "cam"
    assert writer.stats["defect"] == 1 and writer.stats["near_threshold"] == 1


def test_capture_anomaly_margin_uses_score_and_threshold():
    from edgetl_builtins.sinks.capture import keep_reason

    rng = random.Random(0)
    near = {"label": "good", "scores": {"good": 0.6, "anomaly": 0.4}, "anomaly_score": 0.46, "threshold": 0.5}
    far = dict(near, anomaly_score=0.2)
    assert keep_reason(near, None, 0.05, 0, rng) == "near_threshold"
    assert keep_reason(far, None, 0.05, 0, rng) == ""
    assert keep_reason(dict(far, label="scratch"), {"scratch"}, 0.05, 0, rng) == "defect"


def test_capture_random_sample_keeps_about_the_asked_fraction(tmp_path):
    writer = get_manager().get("sink", "capture").open(
        {"dir": str(tmp_path), "margin": 0, "sample": 0.25, "seed": 1})
    for i in range(80):
        writer.write(result("good", 0.99), frame(i, size=8))
    assert 10 <= writer.stats["sample"] <= 30
    assert len(list(tmp_path.glob("*.png"))) == writer.stats["sample"]


def test_capture_retention_deletes_oldest_past_the_size_limit_and_anything_too_old(tmp_path):
    writer = get_manager().get("sink", "capture").open(
        {"dir": str(tmp_path), "max_mb": 0.05, "sample": 0, "max_age_h": 1})
    for i in range(12):  # each 64x64 noise PNG is ~12 kB: 12 of them pass 50 kB
        writer.write(result("defect", 0.1), frame(i))
    pngs = sorted(tmp_path.glob("*.png"))
    total = sum(p.stat().st_size + p.with_suffix(".json").stat().st_size for p in pngs)
    assert total <= 0.05 * 1024 * 1024 and writer.stats["deleted"] > 0
    assert "-00000011-" in pngs[-1].name  # the newest survives
    assert all(p.with_suffix(".json").exists() for p in pngs)
    old = pngs[0]
    past = time.time() - 2 * 3600
    os.utime(old, (past, past))
    writer.enforce_retention()
    assert not old.exists() and not old.with_suffix(".json").exists()


def test_capture_options_are_checked(tmp_path):
    sink = get_manager().get("sink", "capture")
    with pytest.raises(ConfigError, match="'dir' is required"):
        sink.open({})
    with pytest.raises(ConfigError, match="0 <= sample <= 1"):
        sink.open({"dir": str(tmp_path), "sample": 2})


def test_capture_overlay_draws_the_frame_with_its_map_and_is_deleted_with_it(tmp_path):
    import cv2

    writer = get_manager().get("sink", "capture").open(
        {"dir": str(tmp_path), "overlay": True, "sample": 0, "max_mb": 0.05})
    hot = np.zeros((8, 8), np.float32)
    hot[:, 4:] = 1.0  # right half anomalous
    anomalous = {"label": "anomaly", "scores": {"good": 0.1, "anomaly": 0.9}, "anomaly_score": 0.9,
                 "threshold": 0.5, "model": "m-1"}
    grey = Frame(image=np.full((64, 64, 3), 128, np.uint8), timestamp=time.time(), index=0, source="cam",
                 anomaly_map=hot)
    writer.write(anomalous, grey)
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    overlay = cv2.imread(str(tmp_path / doc["overlay"]))
    assert overlay.shape == (320, 320, 3) and "anomaly_map" not in json.dumps(doc)
    right, left = overlay[200, 280].astype(int), overlay[200, 40].astype(int)
    assert right[2] - right[0] > 40 and left[0] - left[2] > 40  # red where the map is hot, blue where cold
    for i in range(1, 12):  # past max_mb: the oldest capture goes with its sidecar and overlay
        writer.write(result("defect", 0.1), frame(i))
    assert not (tmp_path / doc["overlay"]).exists()
    assert len(list(tmp_path.glob("*.overlay.jpg"))) == len(list(tmp_path.glob("*.png")))
    with pytest.raises(ConfigError, match="'overlay' must be true or false"):
        get_manager().get("sink", "capture").open({"dir": str(tmp_path), "overlay": "yes"})
