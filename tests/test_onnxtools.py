"""``edgetl.onnxtools``, the ONNX SDK for export targets, used as an outsider does: public import only.

The documented example target of docs/plugins.md ("The ONNX SDK") is run as
written: export a small conv net, quantize it to FP16 through
``OnnxFileQuantizer``, gate it with ``load_runtime``, and compare with torch.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_sdk_loads_no_ml_library():
    """A plugin subclasses OnnxFileQuantizer at import, and ``edgetl --help`` imports every plugin."""
    code = ("import sys, edgetl.onnxtools\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_run_static_feeds_any_batch_through_a_fixed_batch_model():
    from edgetl.onnxtools import run_static, run_static_all

    seen = []

    def double(chunk):
        assert len(chunk) == 2, "a static-batch model only ever sees its batch"
        seen.append(chunk.copy())
        return chunk * 2

    batch = np.arange(5, dtype=np.float32).reshape(5, 1)
    assert run_static(double, batch, 2).ravel().tolist() == [0, 2, 4, 6, 8]
    assert seen[-1].ravel().tolist() == [4, 4]  # the last chunk padded with its last row
    assert run_static(lambda b: b + 1, batch, None).shape == (5, 1)  # dynamic batch: one call
    both = run_static_all(lambda b: [b, -b], batch, 2)
    assert [o.ravel().tolist() for o in both] == [[0, 1, 2, 3, 4], [0, -1, -2, -3, -4]]


def test_tail_nodes_are_the_unweighted_ops_after_the_last_convolution():
    from edgetl.onnxtools import tail_nodes

    nodes = [("Conv", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Conv", ["b"], ["c"]),
             ("GlobalAveragePool", ["c"], ["d"]), ("Sub", ["d"], ["e"]), ("Gemm", ["e"], ["y"])]
    assert tail_nodes(nodes, conv_ops=("Conv",), weighted_ops=("Conv", "Gemm")) == [3, 4]
    assert tail_nodes(nodes[3:], conv_ops=("Conv",), weighted_ops=("Gemm",)) == []  # no backbone


def test_missing_files_are_one_line_errors():
    from edgetl.errors import BundleError, ExportError
    from edgetl.onnxtools import load_runtime, onnx_file

    with pytest.raises(ExportError, match="no .onnx file to quantize among a.xml"):
        onnx_file([Path("a.xml")])
    manifest = SimpleNamespace(target=SimpleNamespace(runtime={}, precision="fp32"))
    with pytest.raises(BundleError, match="hold no .onnx model"):
        load_runtime([Path("model.xml")], manifest)


def documented_target() -> dict:
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    section = text.split("## The ONNX SDK (`edgetl.onnxtools`)", 1)[1]
    namespace: dict = {}
    exec(re.search(r"```python\n(.*?)```", section, flags=re.S).group(1), namespace)  # noqa: S102 - our docs
    return namespace


def test_the_documented_target_exports_quantizes_and_gates(tmp_path):
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2),
                                torch.nn.Softmax(dim=1))
    example = torch.rand(2, 3, 16, 16)  # static batch 2
    ns = documented_target()
    target, fp16 = ns["MyNpu"](), ns["MyNpuFp16"]()
    report: dict = {}
    files = target.export(model, example, tmp_path / "fp32", SimpleNamespace(report=report))
    assert [f.name for f in files] == ["model.onnx"] and report["exporter"] in ("dynamo", "legacy")
    quantized = fp16.quantize(files, tmp_path / "fp16", SimpleNamespace(report={}))
    assert quantized == [tmp_path / "fp16" / "model.onnx"]
    x = np.random.default_rng(0).random((5, 3, 16, 16), dtype=np.float32)  # 5 images through a batch-2 model
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    for path, precision, tol in ((files, "fp32", 1e-5), (quantized, "fp16", 2e-2)):
        manifest = SimpleNamespace(target=SimpleNamespace(runtime={}, precision=precision))
        runtime = target.load_for_gate(path, manifest)
        got = runtime.predict(x)
        assert got.shape == (5, 2) and got.dtype == np.float32
        assert np.abs(got - want).max() < tol, (precision, np.abs(got - want).max())
        assert runtime.info()["providers"] == ["CPUExecutionProvider"] and runtime.info()["batch"] == 2
