"""``/v1/predict`` on a JPEG against the raw runtime call, for EfficientNet-Lite0 (ONNX FP32, 224x224).

Side by side in one run, in alternating blocks so both see the same machine load:

- **raw**: ``Runtime.predict`` on the already preprocessed tensor, in this process;
- **agent, no HTTP**: ``Agent.predict_bytes`` (header check, decode, preprocess, inference,
  metrics), in this process;
- **HTTP**: ``POST /v1/predict`` round trip to ``edgetl agent serve`` in its own process.

Two images: a 224x224 JPEG (the network's size) and a 1920x1080 JPEG (a camera frame; the agent
decodes it at reduced size). The Lite0 weights are random (``pretrained: false``): the cost of a
call does not depend on them. Needs torch (to export the bundle).

    nice -n 10 python benchmarks/predict_overhead.py [--rounds 8] [--block 25]

Prints medians and ratios; writes ``benchmarks/results/predict_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def lite0_bundle(root: Path) -> tuple[Path, Path]:
    """Export EfficientNet-Lite0 (random init, a 2-class head) through the real pipeline, signed."""
    import torch
    from bundle_factory import CLASSES, make_tiny_data

    from edgetl.api import InputSpec, TrainedModel
    from edgetl.host.export import ExportOptions, export_run
    from edgetl.host.run import save_run_model
    from edgetl.keys import generate_keypair
    from edgetl.plugins import get_manager
    from edgetl.training import Classifier

    key, pub = generate_keypair(root / "release")
    data = make_tiny_data(root)
    torch.manual_seed(0)
    backbone = get_manager().get("backbone", "efficientnet_lite0")
    model = Classifier(backbone.build(pretrained=False), backbone.feature_dim, len(CLASSES), dropout=0.0).eval()
    spec = InputSpec(size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    trained = TrainedModel(module=model, task="classify", labels=list(CLASSES), threshold=None,
                           output="probabilities", positive="defect")
    config = {"name": "lite0", "data": {"train": str(data / "train"), "val": str(data / "val")},
              "backbone": {"name": "efficientnet_lite0", "pretrained": False},
              "strategy": {"name": "none", "options": {}}}
    run_dir = root / "runs" / "lite0"
    save_run_model(run_dir, trained, backbone="efficientnet_lite0", strategy="none", input_spec=spec,
                   name="lite0", config=config)
    options = ExportOptions(format="onnx", precision="fp32", calib_count=8, sign=key, out=root / "lite0.edgetl",
                            fallback=False, gate=100.0, min_agreement=0.0, latency_runs=0)
    return export_run(run_dir, options).bundle, pub


def jpeg(width: int, height: int) -> bytes:
    import cv2

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(cv2.resize(small, (width, height)), (5, 5), 0)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> None:
    import httpx
    from agent_load import Agent

    from edgetl.device.agent import Agent as DeviceAgent
    from edgetl.device.images import decode_checked
    from edgetl.preprocess import preprocess

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--block", type=int, default=25)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "predict_overhead.json")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="edgetl-predict-"))
    bundle, pub = lite0_bundle(root)
    server = Agent(root, "served", pub, "bench-token")
    local = DeviceAgent(root / "local", [pub])
    try:
        server.wait()
        headers = {"Authorization": "Bearer bench-token"}
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            for target in (client, None):
                if target is None:
                    local.startup()
                    install_id = local.installer.reserve()
                    local.state.upload_path(install_id).write_bytes(bundle.read_bytes())
                    local.installer.start(install_id, bundle.stat().st_size)
                    assert local.installer.wait(install_id, 300)["status"] == "installed"
                else:
                    r = client.put("/v1/model", content=bundle.read_bytes())
                    from agent_support import wait_install

                    assert wait_install(client, r.json()["install_id"], 300)["status"] == "installed"
            model = local.model
            results = {}
            for name, data in (("224x224 JPEG", jpeg(224, 224)), ("1920x1080 JPEG", jpeg(1920, 1080))):
                tensor = preprocess(decode_checked(data, 10**9), model.input)
                calls = {"raw": lambda t=tensor: model.runtime.predict(t),
                         "agent, no HTTP": lambda d=data: local.predict_bytes(d, content_type="image/jpeg"),
                         "HTTP": lambda d=data: client.post("/v1/predict", content=d,
                                                            headers={"Content-Type": "image/jpeg"}).json()}
                samples = {k: [] for k in calls}
                for fn in calls.values():
                    timed(fn, 5)  # warm-up
                for _ in range(args.rounds):
                    for key, fn in calls.items():
                        samples[key] += timed(fn, args.block)
                med = {k: statistics.median(v) for k, v in samples.items()}
                results[name] = {"median_ms": med, "n": len(samples["raw"]),
                                 "ratio_http_over_raw": med["HTTP"] / med["raw"],
                                 "ratio_agent_over_raw": med["agent, no HTTP"] / med["raw"]}
    finally:
        server.stop()
        local.shutdown()
    doc = {"model": "efficientnet_lite0 (random init), onnx fp32, 224x224", "cores": os.cpu_count(),
           "load_average": os.getloadavg(), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(f"/v1/predict overhead, Lite0 ONNX FP32; {doc['cores']} cores, load average {doc['load_average']}")
    for name, res in results.items():
        med = res["median_ms"]
        print(f"  {name:<16} raw {med['raw']:7.2f} ms | agent, no HTTP {med['agent, no HTTP']:7.2f} ms "
              f"({res['ratio_agent_over_raw']:.2f}x) | HTTP {med['HTTP']:7.2f} ms ({res['ratio_http_over_raw']:.2f}x)"
              f"  medians of {res['n']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
