"""A tiny anomaly bundle built in a second or two, for tests of what the line's page draws.

Training and exporting a real anomaly run takes tens of seconds here; the page only
needs a signed bundle whose model gives a score and a heat map. So the ONNX graph
is written by hand: the map is ``sigmoid(8 * (mean over channels) - 4)`` of the
normalised input (bright spots are "anomalous"), the score its maximum. The
reference outputs are computed with onnxruntime, exactly as an export stores
them, so the agent's install checks the bundle for real.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

SIZE = 48


def spot_image(rng: np.random.Generator, spot: bool, size: int = SIZE) -> np.ndarray:
    """A grey noisy tile; with ``spot`` a bright square somewhere in it (BGR uint8)."""
    image = np.clip(rng.normal(90, 12, (size, size, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    if spot:
        side = size // 4
        y, x = rng.integers(side // 3, size - side - side // 3, 2)
        image[y:y + side, x:x + side] = 250
    return image


def _graph() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["map"]),
        helper.make_node("ReduceMax", ["map"], ["output"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "spots", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 1, SIZE, SIZE])],
        initializer=[helper.make_tensor("gain", TensorProto.FLOAT, [], [8.0]),
                     helper.make_tensor("bias", TensorProto.FLOAT, [], [-4.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_anomaly_bundle(root: Path, key_path: Path, name: str = "spots",
                        labels: tuple[str, str] = ("good", "anomaly")) -> Path:
    """A signed ONNX FP32 anomaly bundle (``labels``: normal, anomalous; threshold 0.5) with 8 reference images."""
    import cv2
    import onnxruntime as ort

    from edgetl.api import InputSpec
    from edgetl.bundle import write_bundle
    from edgetl.keys import load_private_key
    from edgetl.preprocess import preprocess_file
    from edgetl.reference import TOLERANCES, pooled_maps

    root.mkdir(parents=True, exist_ok=True)
    onnx_bytes = _graph()
    spec_doc = {"size": [SIZE, SIZE], "mean": [0.5] * 3, "std": [0.5] * 3, "color": "RGB", "resize": "resize",
                "crop_pct": 1.0, "roi": None, "tile": None}
    spec = InputSpec.from_dict(spec_doc)
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    members: dict[str, bytes] = {"model/model.onnx": onnx_bytes}
    images = []
    for n in range(8):
        path = root / f"ref{n:03d}.png"
        cv2.imwrite(str(path), spot_image(rng, spot=n % 2 == 1))
        score, amap = session.run(["output", "map"], {"input": preprocess_file(path, spec)})
        member = f"reference/{n:03d}.png"
        members[member] = path.read_bytes()
        images.append({"file": member, "label": labels[n % 2], "source": path.name,
                       "output": np.asarray(score, np.float32).round(7).tolist(),
                       "map": pooled_maps({"map": amap}).round(6).tolist()})
    members["reference/outputs.json"] = json.dumps({"images": images}).encode()
    now = _dt.datetime.now(_dt.timezone.utc)
    manifest = {
        "schema_version": 1, "name": name, "model_version": f"{name}-{now:%Y%m%d}-0000001",
        "created": now.isoformat(), "bundle_version": int(now.timestamp() * 1000),
        "task": "anomaly", "labels": list(labels), "threshold": 0.5, "positive": labels[1],
        "output": "anomaly_score", "input": spec_doc,
        "target": {"format": "onnx", "precision": "fp32", "method": "default", "files": ["model/model.onnx"],
                   "batch": 1, "dynamic_batch": False, "extra": "onnxruntime", "requires": ["onnxruntime"]},
        "compat": {"arch": "x86_64", "runtimes": {}, "host_cpu": {}},
        "files": {},
        "export": {"gate": {"max_drop_points": 1.0, "min_agreement": 0.98},
                   "attempts": [{"precision": "fp32", "method": "default", "passed": True, "n": 8,
                                 "agreement": 1.0, "drop_points": 0.0}]},
        "reference": {"outputs": "reference/outputs.json", "count": len(images), "precision": "fp32",
                      "tolerance": dict(TOLERANCES["fp32"])},
    }
    return write_bundle(root / f"{name}-{len(list(root.glob('*.edgetl')))}.edgetl", manifest, members, private_key=load_private_key(key_path))


def spot_folder(folder: Path, n: int, every: int = 3, seed: int = 1, size: int = 240) -> Path:
    """``n`` frames of ``size`` pixels square, every ``every``-th with a bright spot (an anomaly)."""
    import cv2

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i:04d}.png"), spot_image(rng, spot=i % every == 0, size=size))
    return folder
