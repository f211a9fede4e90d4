"""TensorRT target: the host half (Q/DQ ONNX + build settings) here; the device build where TensorRT exists."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_tiny_run

from edgetl.bundle import extract_bundle, open_bundle
from edgetl.errors import BundleError, MissingDependencyError
from edgetl.host.export import ExportOptions, export_run

PROFILE = Path(__file__).resolve().parent.parent / "targets" / "jetson-orin-nano.yaml"
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
NO_TRT = "TensorRT is not installed here (no NVIDIA GPU/TensorRT on this machine; PyPI's tensorrt needs NVIDIA's index)"


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    run_dir = make_tiny_run(root)
    result = export_run(run_dir, ExportOptions(format="tensorrt", target=PROFILE, precision="int8",
                                               calib_count=24, latency_runs=0, out=root / "trt.edgetl"))
    return run_dir, result


def test_host_writes_a_symmetric_qdq_onnx_and_the_build_settings(int8_bundle, tmp_path):
    import onnx
    from onnx import numpy_helper

    _, result = int8_bundle
    manifest = result.manifest
    assert manifest.target.files == ["model/model.onnx"]
    build = manifest.target.build
    assert build["network"] == "strongly_typed" and build["quantization"] == "explicit-qdq"
    assert build["workspace_mb"] == 1024 and build["min_tensorrt"] == "10.0"  # from the Orin Nano profile
    assert build["optimization_profile"] == {"min_batch": 1, "opt_batch": 1, "max_batch": 1}
    assert manifest.target.profile == "jetson-orin-nano"
    dest = extract_bundle(result.bundle, tmp_path / "x", 1 << 26)
    model = onnx.load(str(dest / "model" / "model.onnx"))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 5 and ops.count("DequantizeLinear") > 5
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node
                   if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric, signed


def test_the_bundle_is_for_the_profiles_device_and_passes_compat_on_a_jetson(int8_bundle):
    """Exported here (x86 or not) for jetson-orin-nano: the manifest carries the profile's arch and GPU,
    and the device's compatibility check passes on aarch64 Jetson facts (the engine is built there)."""
    import platform

    from edgetl.device.compat import check_compatibility

    manifest = int8_bundle[1].manifest
    assert (manifest.compat.arch, manifest.compat.gpu) == ("aarch64", "Orin Nano")
    assert manifest.compat.host_arch == platform.machine()
    jetson = {"arch": "aarch64", "cpu": {"flags": ["asimddp"]}, "versions": {"tensorrt": "10.3.0"},
              "gpus": [{"name": "NVIDIA Jetson (integrated)", "model": "NVIDIA Jetson Orin Nano Developer Kit"}],
              "runtimes": {"tensorrt": {"available": True, "missing": [], "extra": "tensorrt"}}}
    report = check_compatibility(manifest, jetson)
    assert report["passed"] and report["warnings"] == [] and report["arch"]["device"] == "aarch64"


def test_qdq_model_is_gated_with_onnx_runtime_and_agrees_with_torch(int8_bundle):
    import onnxruntime as ort
    import torch

    from edgetl.host.run import load_run
    from edgetl.preprocess import preprocess_file

    run_dir, result = int8_bundle
    attempt = result.attempts[-1]
    assert attempt["passed"] and attempt["agreement"] >= 0.98 and attempt["precision"] == "int8"
    run = load_run(run_dir)
    data = run_dir.parent.parent / "data" / "val"
    x = np.concatenate([preprocess_file(p, run.input) for p in sorted(data.rglob("*.png"))])
    session = ort.InferenceSession(open_bundle(result.bundle).read("model/model.onnx"),
                                   providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        want = run.model(torch.from_numpy(x)).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    diff = np.abs(got - want)
    # INT8 noise: small on average, larger on the odd image near the boundary (labels checked above).
    assert diff.mean() < 0.05 and diff.max() < 0.5, (diff.mean(), diff.max())


def test_device_refuses_incompatible_builds_and_keys_the_cache():
    from edgetl_builtins.tensorrt.engine import cache_key, check_compat

    build = {"min_tensorrt": "10.0", "dla_core": None}
    check_compat(build, "10.3.0", 0)
    with pytest.raises(BundleError, match="needs TensorRT >= 10.0.*has 8.5.2"):
        check_compat(build, "8.5.2.2", 0)
    with pytest.raises(BundleError, match="DLA core 1; this device has 0 DLA cores"):
        check_compat({**build, "dla_core": 1}, "10.3.0", 0)
    files = {"model/model.onnx": "a" * 64}
    orin = {"name": "Orin", "compute_capability": "8.7"}
    key = cache_key(orin, "10.3.0", files, build)
    assert key == cache_key(dict(orin), "10.3.0", dict(files), dict(build))
    assert key != cache_key({**orin, "name": "Xavier"}, "10.3.0", files, build)
    assert key != cache_key(orin, "10.4.0", files, build)
    assert key != cache_key(orin, "10.3.0", {"model/model.onnx": "b" * 64}, build)
    assert key != cache_key(orin, "10.3.0", files, {**build, "dla_core": 0})


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed: the missing-library message cannot be seen")
def test_loading_without_tensorrt_names_what_to_install(int8_bundle, tmp_path):
    from edgetl.bundle import load_runtime

    _, result = int8_bundle
    dest = extract_bundle(result.bundle, tmp_path / "x", 1 << 26)
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        load_runtime(dest, result.manifest)


@pytest.mark.skipif(not HAS_TRT, reason=NO_TRT)
def test_device_builds_a_strongly_typed_engine_caches_it_and_passes_the_reference_check(int8_bundle, tmp_path):
    from edgetl.bundle import load_runtime
    from edgetl.reference import check_reference

    _, result = int8_bundle
    dest = extract_bundle(result.bundle, tmp_path / "x", 1 << 26)
    phases = []
    options = {"engine_cache": str(tmp_path / "cache"), "progress": lambda p, d, t: phases.append(p)}
    runtime = load_runtime(dest, result.manifest, options)
    assert runtime.info()["engine"] == "built" and phases
    report = check_reference(dest, result.manifest, runtime)
    runtime.close()
    assert report["passed"], report["failures"]
    again = load_runtime(dest, result.manifest, options)
    assert again.info()["engine"] == "cached"
    again.close()
