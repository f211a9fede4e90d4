"""OpenVINO export on the tiny model: IR round trips, nncf INT8 through the gate, profile runtime settings."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import make_tiny_run

from edgetl.bundle import extract_bundle, load_runtime, open_bundle
from edgetl.errors import BundleError
from edgetl.host.export import ExportOptions, export_run

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgetl[openvino]')")
PROFILE = Path(__file__).resolve().parent.parent / "targets" / "x86-openvino-cpu.yaml"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("ov"))


def _export_ir(run_dir, out, precision):
    return export_run(run_dir, ExportOptions(format="openvino", precision=precision, calib_count=16,
                                             latency_runs=2, out=out, target=PROFILE))


@pytest.fixture(scope="module")
def fp32_bundle(run_dir, tmp_path_factory):
    """The FP32 IR export (CPU profile), shared by the round trip and the device-half tests."""
    return _export_ir(run_dir, tmp_path_factory.mktemp("ov32") / "ov.edgetl", "fp32")


def _torch_probs(run_dir, x):
    import torch

    from edgetl.host.run import load_run

    with torch.no_grad():
        return load_run(run_dir).model(torch.from_numpy(x)).numpy()


def _val_batch(run_dir):
    from edgetl.host.run import load_run
    from edgetl.preprocess import preprocess_file

    spec = load_run(run_dir).input
    paths = sorted((run_dir.parent.parent / "data" / "val").rglob("*.png"))[::4]
    return np.concatenate([preprocess_file(p, spec) for p in paths])


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 2e-2)])
def test_ir_round_trip_matches_torch(run_dir, fp32_bundle, tmp_path, precision, tol):
    from edgetl.bundle_predictor import BundlePredictor

    result = fp32_bundle if precision == "fp32" else _export_ir(run_dir, tmp_path / "ov.edgetl", precision)
    manifest = result.manifest
    assert manifest.target.files == ["model/model.bin", "model/model.xml"]
    assert manifest.target.method == ("weights" if precision == "fp16" else "default")
    x = _val_batch(run_dir)
    with BundlePredictor(result.bundle) as predictor:
        info = predictor.info()
        got = predictor.predict(x)
    assert info["runtime"] == "openvino" and info["device"] == "CPU"
    assert info["inference_precision"] == "f32" or precision == "fp16"
    assert np.abs(got - _torch_probs(run_dir, x)).max() < tol
    if precision == "fp16":  # weights compressed: the .bin is about half
        fp32 = next(s for s in result.stages if s["stage"] == "export")
        assert result.attempts[-1]["size_bytes"] < 0.7 * fp32["size_bytes"]


def test_int8_goes_through_nncf_and_the_gate_and_json_stdout_stays_clean(run_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "ov8.edgetl"
    proc = subprocess.run([sys.executable, "-m", "edgetl", "export", str(run_dir), "--format", "openvino",
                           "--precision", "int8", "--calib-count", "24", "--latency-runs", "2",
                           "--out", str(out), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)  # nncf's logs and progress bars went to stderr
    assert doc["passed"] and doc["precision"] == "int8" and "quantize" in proc.stderr
    attempts = open_bundle(out).manifest["export"]["attempts"]
    assert attempts[-1]["passed"] and all(a["precision"] == "int8" for a in attempts)
    assert attempts[0]["method"] == "ptq" and attempts[0]["details"]["tool"] == "nncf.quantize"
    assert attempts[0]["details"]["bias_correction"] == "full"  # the quantizer option's default
    if len(attempts) == 2:
        # the accuracy-controlled step restores layers of the PTQ step's model (calibrated once)
        assert attempts[1]["details"]["tool"] == "nncf.quantize + nncf QuantizationAccuracyRestorer"
        assert attempts[1]["details"]["reused_int8_ptq"] is True
    ref = json.loads(open_bundle(out).read("reference/outputs.json"))
    assert len(ref["images"]) == open_bundle(out).manifest["reference"]["count"]


def test_unavailable_device_is_a_clear_error_and_the_device_half_needs_no_torch(fp32_bundle, tmp_path):
    import subprocess
    import sys

    result = fp32_bundle
    dest = extract_bundle(result.bundle, tmp_path / "x", 1 << 26)
    with pytest.raises(BundleError, match="device 'NPU.7' is not available here"):
        load_runtime(dest, result.manifest, {"device": "NPU.7"})
    code = ("import sys\n"
            "for name in ('torch', 'timm', 'torchvision', 'onnx', 'nncf'):\n"
            "    sys.modules[name] = None\n"
            "import numpy as np\n"
            "from edgetl.bundle_predictor import BundlePredictor\n"
            f"p = BundlePredictor({str(result.bundle)!r})\n"
            "assert p.predict(np.zeros((3, 3, 48, 48), np.float32)).shape == (3, 2)\n"
            "print(p.info()['runtime'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "openvino"


@pytest.mark.parametrize("budget,internals,verbose", [(0.0, True, False), (600.0, True, False),
                                                      (600.0, False, True)])
def test_accuracy_control_stops_at_its_budget_with_a_reason(tmp_path, budget, internals, verbose, monkeypatch):
    """``internals=False``: an nncf without the restorer's internal classes takes the public
    ``quantize_with_accuracy_control`` path, which must give a model as well. nncf's INFO log is
    lowered to WARNING for the call unless ``--verbose``; progress is one line per 10 s of passes."""
    torch = pytest.importorskip("torch")
    if not internals:
        monkeypatch.setitem(sys.modules, "nncf.quantization.algorithms.accuracy_control.algorithm", None)
    monkeypatch.setenv("EDGETL_VERBOSE", "1" if verbose else "0")
    import logging

    from edgetl_builtins.openvino import quantize as q
    from edgetl_builtins.openvino.export import export_ir
    from edgetl_builtins.openvino.quantize import int8_accuracy_control
    from nncf.common.logging.logger import nncf_logger

    monkeypatch.setattr(q, "PROGRESS_EVERY_S", 1e9)  # every pass within one interval: only the first is a line
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    nncf_logger.addHandler(handler)
    level = nncf_logger.level

    from edgetl.api import GateSettings, InputSpec, ModelFacts, QuantizeContext, ValidationSet
    from edgetl.errors import ExportError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Softmax(dim=1)).eval()
    files = export_ir(model, torch.randn(1, 3, 12, 12), tmp_path / "fp32", dynamic_batch=False, report={})
    rng = np.random.default_rng(0)
    x = rng.standard_normal((10, 3, 12, 12)).astype(np.float32)
    facts = ModelFacts(name="t", task="classify", labels=["a", "b", "c"], threshold=None, positive=None,
                       output="probabilities", input=InputSpec(size=(12, 12)))
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    lines = []
    # agreement above 1 cannot be met: nncf keeps reverting until its iteration cap or the budget stops it
    ctx = QuantizeContext(calibration=[x[i:i + 1] for i in range(10)], model=facts, fp32_files=files,
                          gate=GateSettings(min_agreement=1.0), time_budget_s=budget,
                          validation=ValidationSet(x, reference.argmax(1), reference, facts),
                          progress=lambda stage, done, total: lines.append(stage))
    try:
        if budget == 0:
            with pytest.raises(ExportError, match="passed its 0 s budget after 0 validation passes"):
                int8_accuracy_control(files, tmp_path / "q", ctx)
            assert lines == []
            return
        out = int8_accuracy_control(files, tmp_path / "q", ctx)
    finally:
        nncf_logger.removeHandler(handler)
    passes = ctx.report["validation_passes"]
    assert out[0].is_file() and passes >= 2 and len(lines) == 2, lines  # first pass, then the count
    assert lines[0].startswith("int8 accuracy-control: validation pass 1 on ")
    assert lines[1].startswith(f"int8 accuracy-control: {passes} validation passes in ")
    assert any(r.levelno == logging.INFO for r in records) == verbose and nncf_logger.level == level
    assert ctx.report["ranking_subset"] == 10 and ctx.report["max_iterations"] == 8
    assert ctx.report["tool"].startswith("nncf.quantize_with_accuracy_control" if not internals else
                                         "nncf.quantize + nncf QuantizationAccuracyRestorer")


@pytest.mark.parametrize("mode", ["full", "fast", "unset"])
def test_bias_correction_option_reaches_nncf_and_the_report(tmp_path, monkeypatch, mode):
    """The quantizer's ``bias_correction`` option: nncf's full BiasCorrection by default (ELPV: 185/197 kept
    against 176, and when the context carries no options), fast on request."""
    pytest.importorskip("nncf")
    import nncf
    import openvino as ov
    from edgetl_builtins.openvino import quantize as q
    from edgetl_builtins.openvino.options import OvInt8Options

    from edgetl.api import InputSpec, ModelFacts, QuantizeContext
    from edgetl.errors import ExportError

    seen = {}

    def fake_quantize(model, dataset, **kw):
        seen.update(kw)
        return model

    monkeypatch.setattr(nncf, "quantize", fake_quantize)
    monkeypatch.setattr(q, "float_tail", lambda model: [])
    param = ov.op.Parameter(ov.Type.f32, ov.Shape([1, 3]))
    xml = tmp_path / "m.xml"
    ov.save_model(ov.Model([ov.opset13.relu(param)], [param]), str(xml))
    facts = ModelFacts(name="t", task="classify", labels=["a", "b", "c"], threshold=None, positive=None,
                       output="probabilities", input=InputSpec(size=(1, 3)))
    options = {} if mode == "unset" else OvInt8Options(bias_correction=mode)
    ctx = QuantizeContext(calibration=[np.zeros((1, 3), np.float32)], model=facts, fp32_files=[xml],
                          options=options)
    q.ptq_model([xml], ctx)
    fast = mode == "fast"
    assert seen["fast_bias_correction"] is fast and ctx.report["bias_correction"] == ("fast" if fast else "full")
    ctx.options = OvInt8Options.model_construct(bias_correction="exact")  # past the model's validation
    with pytest.raises(ExportError, match="bias_correction 'exact': expected one of full, fast"):
        q.ptq_model([xml], ctx)
