"""anomalib's PatchCore/PaDiM on tensors prepared by benchmarks/experiments/anomaly_vs_anomalib.py (runs in anomalib's venv).

Not part of edgetl: it imports only anomalib, torch, numpy and openvino, so it
runs in a separate virtual environment (benchmarks/experiments/requirements-anomalib.txt).
It takes the *same* preprocessed images (edgetl's preprocessing, npz) and
the *same* EfficientNet-Lite0 weights (timm layout, state dict) as edgetl,
loads the weights into anomalib's timm feature extractor (``pre_trained=False``
then ``load_state_dict``: no download), fits anomalib's torch model directly
(the Lightning engine adds nothing to a memory-bank model's fit), scores the
test images, and times anomalib's own model converted to OpenVINO FP32.

    python anomalib_side.py --method patchcore --data x.npz --weights lite0.pt --out result.npz
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def build(method: str, coreset: float, weights: str) -> tuple[torch.nn.Module, dict]:
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    probe = __import__("timm").create_model("tf_efficientnet_lite0", features_only=True, pretrained=False)
    names = {r: n for r, n in zip(probe.feature_info.reduction(), probe.feature_info.module_name(), strict=True)}
    layers = [names[8], names[16]]  # the stages edgetl uses (feature maps 2 and 3: strides 8 and 16)
    if method == "patchcore":
        model = PatchcoreModel(layers=layers, backbone="tf_efficientnet_lite0", pre_trained=False, num_neighbors=9)
    else:
        model = PadimModel(layers=layers, backbone="tf_efficientnet_lite0", pre_trained=False, n_features=100)
    extractor = model.feature_extractor.feature_extractor
    state = torch.load(weights, map_location="cpu", weights_only=True)
    result = extractor.load_state_dict(state, strict=False)
    used = set(extractor.state_dict())
    facts = {"layers": layers, "weights_missing": len(result.missing_keys),
             "weights_loaded": len(used) - len(result.missing_keys), "coreset_ratio": coreset}
    if result.missing_keys:
        raise SystemExit(f"anomalib extractor: {len(result.missing_keys)} keys missing, e.g. {result.missing_keys[:3]}")
    return model, facts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--method", choices=["patchcore", "padim"], required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--coreset", type=float, default=0.01)
    ap.add_argument("--out", required=True)
    ap.add_argument("--latency-runs", type=int, default=30)
    args = ap.parse_args()
    torch.manual_seed(0)
    data = np.load(args.data)
    model, facts = build(args.method, args.coreset, args.weights)
    t0 = time.perf_counter()
    model.train()
    with torch.no_grad():
        for i in range(0, len(data["train"]), 32):
            model(torch.from_numpy(data["train"][i:i + 32]))
    if args.method == "patchcore":
        model.subsample_embedding(args.coreset)
        facts["bank_size"] = int(model.memory_bank.shape[0])
    else:
        model.fit()
    facts["fit_seconds"] = time.perf_counter() - t0
    model.eval()
    scores, maps = [], []
    with torch.no_grad():
        for i in range(0, len(data["test"]), 16):
            out = model(torch.from_numpy(data["test"][i:i + 16]))
            scores.append(out.pred_score.reshape(-1).numpy())
            maps.append(out.anomaly_map.reshape(len(out.pred_score), *out.anomaly_map.shape[-2:]).numpy())
    facts.update(latency_ms=None, export=None)
    try:  # anomalib's exporter converts its torch model with openvino.convert_model (via ONNX); do the same
        import openvino as ov

        x = torch.from_numpy(data["test"][:1])
        onnx_path = args.out + ".onnx"
        torch.onnx.export(model, (x,), onnx_path, opset_version=17, input_names=["input"], dynamo=False)
        compiled = ov.Core().compile_model(ov.convert_model(onnx_path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        for _ in range(5):
            request.infer({0: x.numpy()})
        times = []
        for _ in range(args.latency_runs):
            t = time.perf_counter()
            request.infer({0: x.numpy()})
            times.append((time.perf_counter() - t) * 1000)
        facts.update(latency_ms=float(np.median(times)), export="onnx (legacy exporter) -> openvino FP32")
    except Exception as exc:  # reported, not hidden
        facts["export"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    np.savez_compressed(args.out, scores=np.concatenate(scores), maps=np.concatenate(maps).astype(np.float16))
    print(json.dumps(facts))


if __name__ == "__main__":
    main()
