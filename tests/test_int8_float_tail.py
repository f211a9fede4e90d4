"""INT8 keeps the feature tail (pooling, concatenation, standardisation) in float.

The ELPV multi-stage probe failed INT8 at 0.66 agreement: one per-tensor scale
over features pooled from stages of very different magnitudes (then
standardised) rounds the small ones to nothing. The tiny model here has the
same shape: two branches whose pooled features differ by 1000x, concatenated,
standardised, and a head that decides on the small branch.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


class TwoScales(torch.nn.Module):
    """Two conv branches, GeM-free average pooling, concat, fixed (x - mean) * 1/std, linear head, softmax."""

    def __init__(self, x: torch.Tensor):
        super().__init__()
        torch.manual_seed(0)
        self.big, self.small = torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(3, 4, 3)
        with torch.no_grad():
            self.big.weight.mul_(30.0)
            self.small.weight.mul_(0.03)
            self.small.bias.mul_(0.03)
        self.head = torch.nn.Linear(8, 3)
        with torch.no_grad():
            self.head.weight[:, :4] = 0.0  # decisions come from the small branch only
            feats = self.features(x)
        self.register_buffer("mean", feats.mean(0))
        self.register_buffer("inv_std", 1.0 / feats.std(0).clamp_min(1e-6))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        pool = [torch.relu(conv(x)).mean((2, 3)) for conv in (self.big, self.small)]
        return torch.cat(pool, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head((self.features(x) - self.mean) * self.inv_std), 1)


@pytest.fixture(scope="module")
def two_scales(tmp_path_factory):
    from edgetl.onnxtools import export_onnx

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 10, 10)).astype(np.float32)
    model = TwoScales(torch.from_numpy(x)).eval()
    folder = tmp_path_factory.mktemp("tail")
    path = export_onnx(model, torch.from_numpy(x[:1]), folder / "m.onnx")
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    return path, x, reference, folder


def test_tail_nodes_are_the_unweighted_ops_that_feed_no_convolution():
    from edgetl.onnxtools import tail_nodes

    nodes = [("Conv", ["x"], ["a"]), ("Relu", ["a"], ["b"]), ("Conv", ["b"], ["c"]),  # backbone
             ("ReduceMean", ["b"], ["p1"]), ("ReduceMean", ["c"], ["p2"]),           # pooled stages
             ("Concat", ["p1", "p2"], ["f"]), ("Sub", ["f", "m"], ["s"]), ("Gemm", ["s"], ["y"]),
             ("Softmax", ["y"], ["out"])]
    assert tail_nodes(nodes, ("Conv",), ("Gemm",)) == [3, 4, 5, 6, 8]
    assert tail_nodes([("Gemm", ["x"], ["y"])], ("Conv",), ("Gemm",)) == []  # no backbone: nothing to keep


def test_onnx_int8_with_the_tail_in_float_keeps_the_small_scale_features(two_scales):
    from edgetl_builtins.onnx.quantize import _session_outputs

    from edgetl.onnxtools import float_tail, preprocess, quantize_int8

    path, x, reference, folder = two_scales
    prep = preprocess(path, folder / "prep.onnx")
    batches = [x[i:i + 1] for i in range(32)]
    want = reference.argmax(1)

    def agreement(keep_tail_float: bool) -> float:
        out = quantize_int8(prep, folder / f"q{keep_tail_float}.onnx", batches, keep_tail_float=keep_tail_float)
        return float((_session_outputs(out, x).argmax(1) == want).mean())

    tail = float_tail(prep)
    assert tail and not any("Conv" in n or "Gemm" in n for n in tail)
    with_tail, without = agreement(True), agreement(False)
    assert with_tail >= 0.95 > without  # all-INT8 loses the small branch; the float tail keeps it


def test_openvino_int8_leaves_the_tail_without_fake_quantize(two_scales, tmp_path):
    pytest.importorskip("nncf")
    import openvino as ov
    from edgetl_builtins.openvino.quantize import float_tail, int8_ptq

    from edgetl.api import InputSpec, ModelFacts, QuantizeContext

    path, x, reference, _ = two_scales
    xml = tmp_path / "fp32" / "model.xml"
    xml.parent.mkdir()
    ov.save_model(ov.convert_model(str(path)), str(xml), compress_to_fp16=False)
    facts = ModelFacts(name="t", task="classify", labels=["a", "b", "c"], threshold=None, positive=None,
                       output="probabilities", input=InputSpec(size=(10, 10)))
    ctx = QuantizeContext(calibration=[x[i:i + 1] for i in range(32)], model=facts,
                          fp32_files=[xml, xml.with_suffix(".bin")])
    out = int8_ptq(ctx.fp32_files, tmp_path / "q", ctx)
    model = ov.Core().read_model(str(out[0]))
    tail = set(float_tail(ov.Core().read_model(str(xml))))
    fed_by_fq = {op.get_friendly_name() for op in model.get_ordered_ops()
                 if any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())}
    assert tail and ctx.report["float_ops"] == len(tail)
    assert not tail & fed_by_fq  # no tail op reads a quantized tensor
    assert any(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())  # the rest is INT8
    compiled = ov.Core().compile_model(model, "CPU")
    got = np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9  # measured 0.94 (all-INT8 nncf: 0.89)


def test_onnx_float_prefix_search_stops_at_the_first_prefix_that_meets_the_target(two_scales, monkeypatch):
    import onnx
    from edgetl_builtins.onnx import quantize as q

    from edgetl.onnxtools import QuantizeClock, preprocess

    path, x, reference, folder = two_scales
    prep = preprocess(path, folder / "prep-prefix.onnx")
    batches = [x[i:i + 1] for i in range(16)]
    names = [n.name for n in onnx.load(str(prep)).graph.node if n.name]
    monkeypatch.setattr(q, "FIRST_PREFIX", 2)
    tried = []

    def measure(model):
        tried.append(model)
        return 0.5 if len(tried) == 1 else 0.99  # the second candidate (4 ops) meets 0.98

    cache = folder / "prefix-cache.json"
    k, (agree, model) = q.search_float_prefix(prep, names, batches, measure, 0.98, False, cache,
                                              QuantizeClock(600.0), folder)
    assert (k, agree, len(tried)) == (4, 0.99, 2)
    graph = onnx.load(str(model)).graph
    quantized_inputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    first = [n for n in graph.node if n.name in names[:4]]
    assert first and not any(i in quantized_inputs for n in first for i in n.input)  # the prefix reads float
    k, (agree, _) = q.search_float_prefix(prep, names, batches, lambda m: 0.5, 0.98, False, cache,
                                          QuantizeClock(600.0), folder)
    assert agree == 0.5  # never met: the best candidate comes back for the gate to judge


def test_openvino_float_prefix_bypasses_quantizers_and_restores_biases(two_scales, tmp_path):
    pytest.importorskip("nncf")
    import nncf
    import openvino as ov
    from edgetl_builtins.openvino.quantize import SKIP_TYPES, float_prefix

    path, x, reference, _ = two_scales
    original = ov.convert_model(str(path))
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters

    keep_float = AdvancedQuantizationParameters(backend_params={"compress_weights": False})  # as ptq_model does
    ptq = nncf.quantize(original.clone(), nncf.Dataset([x[i:i + 1] for i in range(16)]), subset_size=16,
                        advanced_parameters=keep_float)

    def run(model):
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])

    total = len([o for o in ptq.get_ordered_ops() if o.get_type_name() not in SKIP_TYPES])
    everything = float_prefix(ptq, original, total)
    # every quantizer bypassed and nncf's corrected biases replaced by the originals: the FP32 model again
    assert np.abs(run(everything) - reference).max() < 1e-4
    assert np.abs(run(float_prefix(ptq, original, 0)) - run(ptq)).max() == 0.0
    assert any(o.get_type_name() == "FakeQuantize" for o in ptq.get_ordered_ops())  # the input was not edited


def test_onnx_calibration_in_chunks_gives_the_ranges_of_one_pass(two_scales, monkeypatch):
    """ONNX Runtime calibrates in chunks (memory: it holds every activation of a chunk); ranges must not change."""
    from edgetl import onnxtools

    path, x, _, folder = two_scales
    prep = onnxtools.preprocess(path, folder / "prep-chunks.onnx")
    batches = [x[i:i + 1] for i in range(30)]
    caches, ranges, make = {}, [], onnxtools._reader

    def recording_reader(batches, name):
        reader = make(batches, name)
        original = reader.set_range
        reader.set_range = lambda start_index, end_index: (ranges.append((start_index, end_index)),
                                                           original(start_index, end_index))
        return reader

    monkeypatch.setattr(onnxtools, "_reader", recording_reader)
    for chunk in (4, 1000):  # 30 batches: chunks of 3 (largest divisor <= 4), then one pass of 30
        monkeypatch.setattr(onnxtools, "CALIBRATION_CHUNK", chunk)
        caches[chunk] = folder / f"ranges-{chunk}.json"
        onnxtools.quantize_int8(prep, folder / f"chunk{chunk}.onnx", batches, cache=caches[chunk])
    assert ranges == [(i, i + 3) for i in range(0, 30, 3)] + [(0, 30)]  # ten chunks of 3, then one of 30
    assert onnxtools._chunk(30) == 30 and onnxtools._chunk(7) == 7 and onnxtools._chunk(13) == 13
    monkeypatch.setattr(onnxtools, "CALIBRATION_CHUNK", 4)
    assert onnxtools._chunk(30) == 3 and onnxtools._chunk(13) == 1
    assert caches[4].read_text() == caches[1000].read_text()


def test_onnx_calibration_method_is_checked_and_percentile_narrows_an_outlier_range(two_scales):
    from edgetl.errors import ExportError
    from edgetl.onnxtools import preprocess, quantize_int8

    path, x, _, folder = two_scales
    prep = preprocess(path, folder / "prep-method.onnx")
    batches = [x[i:i + 1] for i in range(20)] + [x[:1] * 50.0]  # one outlier image
    with pytest.raises(ExportError, match="calibration 'mse': expected one of minmax, percentile, entropy"):
        quantize_int8(prep, folder / "bad.onnx", batches, calibration="mse")

    def input_scale(calibration: str) -> float:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(quantize_int8(prep, folder / f"{calibration}.onnx", batches,
                                           calibration=calibration, percentile=99.0)))
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        first = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
        return float(inits[first.input[1]])

    assert input_scale("percentile") < 0.5 * input_scale("minmax")
