"""ONNX export end to end on the tiny model: round trips, the gate, the chain, the reference set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from bundle_factory import make_tiny_run
from click.testing import CliRunner
from train_fixtures import one_torch_thread  # noqa: F401

from edgetl.bundle import extract_bundle, open_bundle, verify_bundle
from edgetl.cli import cli
from edgetl.errors import ExportError
from edgetl.host.export import ExportOptions, export_run
from edgetl.keys import generate_keypair
from edgetl.manifest import as_manifest

SCHEMAS = Path(__file__).resolve().parent.parent / "docs" / "schemas"
PROFILES = Path(__file__).resolve().parent.parent / "targets"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(run_dir, data root, key, pub): one tiny run shared by the module's tests (built in ~2 s)."""
    root = tmp_path_factory.mktemp("tiny")
    run_dir = make_tiny_run(root)
    key, pub = generate_keypair(root / "signer")
    return run_dir, root / "data", key, pub


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """``exported(precision)``: one signed ONNX export per precision, shared by the module's tests.

    FP32 goes through the CLI (``edgetl export --json`` with a target profile): its bundle serves the
    FP32 tests and its JSON/stderr the CLI test; FP16 and INT8 through :func:`export_run`.
    """
    cache: dict[str, object] = {}
    folder = tmp_path_factory.mktemp("bundles")

    def get(precision: str):
        if precision not in cache:
            run_dir, _, key, _ = tiny
            out = folder / f"{precision}.edgetl"
            if precision == "fp32":
                res = CliRunner().invoke(cli, ["export", str(run_dir), "--format", "onnx", "--precision", "fp32",
                                               "--target", str(PROFILES / "x86-onnxruntime-cpu.yaml"),
                                               "--calib-count", "24", "--latency-runs", "2", "--sign", str(key),
                                               "--model-version", "v-test", "--out", str(out), "--json"])
                assert res.exit_code == 0, res.output
                cache[precision] = SimpleNamespace(bundle=out, manifest=as_manifest(open_bundle(out).manifest), cli=res)
            else:
                cache[precision] = export_run(run_dir, _options(folder, precision=precision, sign=key, out=out))
        return cache[precision]

    return get


def _options(tmp_path, **kw):
    base = dict(format="onnx", calib_count=24, latency_runs=3, out=tmp_path / "b.edgetl")
    base.update(kw)
    return ExportOptions(**base)


def _torch_probs(run_dir, paths):
    import torch

    from edgetl.host.run import load_run
    from edgetl.preprocess import preprocess_file

    run = load_run(run_dir)
    x = np.concatenate([preprocess_file(p, run.input) for p in paths])
    with torch.no_grad():
        return run.model(torch.from_numpy(x)).numpy()


def _sabotage_head(src: Path, dst: Path) -> Path:
    """Negate the classifier's weight matrix: a model that disagrees with FP32 on most images."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    last = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    inits = {i.name: i for i in model.graph.initializer}
    weight = next(inits[name] for name in last.input if name in inits and len(inits[name].dims) == 2)
    weight.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weight), weight.name))
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture()
def broken_ptq(monkeypatch):
    """Make the (onnx, int8, ptq) quantizer produce a model that must fail the gate."""
    import edgetl_builtins.onnx

    def quantize(self, files, out_dir, ctx):
        return [_sabotage_head(Path(files[0]), Path(out_dir) / "model.onnx")]

    monkeypatch.setattr(edgetl_builtins.onnx.OnnxInt8Ptq, "quantize", quantize)


@pytest.fixture()
def broken_int8(monkeypatch):
    """Both INT8 quantizers produce models that must fail the gate."""
    import edgetl_builtins.onnx

    def quantize(self, files, out_dir, ctx):
        return [_sabotage_head(Path(files[0]), Path(out_dir) / "model.onnx")]

    for cls in (edgetl_builtins.onnx.OnnxInt8Ptq, edgetl_builtins.onnx.OnnxInt8AccuracyAware):
        monkeypatch.setattr(cls, "quantize", quantize)


@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 1e-2), ("int8", 0.1)])
def test_round_trip_bundle_reproduces_torch_within_tolerance(tiny, exported, precision, tol):
    from edgetl.bundle_predictor import BundlePredictor
    from edgetl.preprocess import preprocess_file

    run_dir, data, key, pub = tiny
    result = exported(precision)
    assert result.manifest.target.precision == precision
    verify_bundle(result.bundle, [pub])
    paths = sorted((data / "val").rglob("*.png"))[::4]
    want = _torch_probs(run_dir, paths)
    with BundlePredictor(result.bundle) as predictor:
        got = np.concatenate([predictor.predict(preprocess_file(p, predictor.input)) for p in paths])
    assert got.shape == want.shape
    assert np.abs(got - want).max() < tol
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9


def test_explicit_precision_failing_the_gate_fails_without_fallback_and_falls_back_with_it(tiny, tmp_path, broken_int8):
    run_dir, *_ = tiny
    out = tmp_path / "never.edgetl"
    runner = CliRunner()
    res = runner.invoke(cli, ["export", str(run_dir), "--format", "onnx", "--precision", "int8",
                              "--calib-count", "16", "--latency-runs", "0", "--out", str(out), "--json"])
    assert res.exit_code == 1
    doc = json.loads(res.stdout)
    assert doc["passed"] is False and doc["bundle"] is None
    assert {a["method"] for a in doc["attempts"]} == {"ptq", "accuracy-aware"}  # both int8 methods tried
    assert doc["attempts"][0]["agreement"] < 0.98 and doc["attempts"][0]["n"] == 32  # the numbers
    assert "--precision int8 failed the gate" in res.stderr and "--fallback" in res.stderr
    assert not out.exists()
    # with --fallback the chain goes on (int8/ptq, int8/accuracy-aware, fp16): fp16 is kept
    result = export_run(run_dir, _options(tmp_path, precision="int8", fallback=True, latency_runs=0))
    assert result.manifest.target.precision == "fp16"
    assert [a["passed"] for a in result.attempts] == [False, False, True]


def test_reference_set_reproduces_host_outputs_through_the_manifest_preprocessing(exported, tmp_path):
    from edgetl.bundle import load_runtime
    from edgetl.reference import check_reference

    result = exported("fp32")
    with open_bundle(result.bundle) as b:
        manifest = b.manifest
    ref = manifest["reference"]
    assert 16 <= ref["count"] <= 32
    outputs = json.loads(open_bundle(result.bundle).read(ref["outputs"]))["images"]
    assert {o["label"] for o in outputs} == {"defect", "good"}  # stratified
    dest = extract_bundle(result.bundle, tmp_path / "x", 1 << 26)
    runtime = load_runtime(dest, manifest)
    report = check_reference(dest, manifest, runtime)
    assert report["passed"] and report["n"] == ref["count"] and report["max_abs_diff"] < 1e-5
    # the check is not vacuous: another preprocessing gives other outputs and fails it
    other = {**manifest, "input": {**manifest["input"], "color": "BGR"}}
    assert not check_reference(dest, other, runtime)["passed"]


def test_failure_mid_export_leaves_no_bundle(tiny, tmp_path, monkeypatch):
    import edgetl.host.bundle_build as bb

    run_dir, *_ = tiny
    out = tmp_path / "atomic.edgetl"

    def boom(*a, **k):
        raise RuntimeError("disk full while writing")

    monkeypatch.setattr(bb, "write_bundle", boom, raising=False)
    monkeypatch.setattr("edgetl.bundle.write_bundle", boom)
    with pytest.raises(RuntimeError):
        export_run(run_dir, _options(tmp_path, precision="fp32", out=out))
    assert list(tmp_path.iterdir()) == []


def test_cli_export_json_matches_schema_and_bundle_verify_reruns_the_reference(tiny, exported):
    import jsonschema

    _, _, _, pub = tiny
    fp32 = exported("fp32")  # made by `edgetl export ... --target x86-onnxruntime-cpu.yaml --sign --json`
    res, out = fp32.cli, fp32.bundle
    doc = json.loads(res.stdout)
    jsonschema.validate(doc, json.loads((SCHEMAS / "export.schema.json").read_text()))
    assert doc["model_version"] == "v-test" and doc["signed"] and "export" in res.stderr
    manifest = open_bundle(out).manifest
    assert manifest["target"]["profile"] == "x86-onnxruntime-cpu"
    assert manifest["compat"]["host_cpu"]["flags"]
    ver = CliRunner().invoke(cli, ["bundle", "verify", str(out), "--trust", str(pub), "--json"])
    assert ver.exit_code == 0, ver.output
    assert json.loads(ver.stdout)["reference"]["status"] == "passed"


def test_device_half_runs_a_bundle_without_torch(tiny, exported):
    _, data, *_ = tiny
    bundle = exported("int8").bundle
    image = sorted((data / "val").rglob("*.png"))[0]
    code = ("import sys\n"
            "for name in ('torch', 'timm', 'torchvision', 'onnx', 'onnxscript'):\n"
            "    sys.modules[name] = None\n"
            "from edgetl.bundle_predictor import BundlePredictor\n"
            "from edgetl.preprocess import preprocess_file\n"
            f"p = BundlePredictor({str(bundle)!r})\n"
            f"out = p.predict(preprocess_file({str(image)!r}, p.input))\n"
            "assert out.shape == (1, 2), out.shape\n"
            "print(p.info()['runtime'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "onnxruntime"


def test_dynamic_batch_export_accepts_any_batch(tiny, tmp_path):
    from edgetl.bundle_predictor import BundlePredictor

    run_dir, *_ = tiny
    result = export_run(run_dir, _options(tmp_path, precision="fp32", dynamic_batch=True))
    assert result.manifest.target.dynamic_batch is True
    with BundlePredictor(result.bundle) as predictor:
        assert predictor.runtime.fixed_batch is None
        assert predictor.predict(np.zeros((5, 3, 48, 48), np.float32)).shape == (5, 2)


def test_bundle_verify_fails_when_this_machine_does_not_reproduce_the_reference(exported, tiny, tmp_path):
    from edgetl.bundle import write_bundle
    from edgetl.keys import load_private_key

    _, _, key, pub = tiny
    src = exported("fp32").bundle
    with open_bundle(src) as b:
        manifest = b.manifest
        members = {n: b.read(n) for n in manifest["files"]}
    doc = json.loads(members["reference/outputs.json"])
    doc["images"][0]["output"] = [[1.0 - v for v in row] for row in doc["images"][0]["output"]]  # swap the answer
    members["reference/outputs.json"] = json.dumps(doc).encode()
    bad = write_bundle(tmp_path / "bad.edgetl", manifest, members, load_private_key(key))
    res = CliRunner().invoke(cli, ["bundle", "verify", str(bad), "--trust", str(pub)])
    assert res.exit_code == 1
    assert "reference check failed on this machine" in res.output and "reference/000" in res.output


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    """A 3-conv classifier as ONNX, with calibration and check images."""
    torch = pytest.importorskip("torch")
    from edgetl.onnxtools import export_onnx

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 4, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Softmax(dim=1)).eval()
    path = export_onnx(model, torch.randn(1, 3, 12, 12), tmp_path_factory.mktemp("aaq") / "m.onnx")
    rng = np.random.default_rng(0)
    return path, [rng.standard_normal((1, 3, 12, 12)).astype(np.float32) for _ in range(8)], \
        rng.standard_normal((12, 3, 12, 12)).astype(np.float32)


@pytest.mark.parametrize("budget,stopped,ranked", [(0.0, "time budget", 0), (600.0, "half the layers in float", 3)])
def test_accuracy_aware_is_bounded_by_its_budget_and_reports_progress(small_onnx, tmp_path, budget, stopped, ranked):
    from edgetl_builtins.onnx.quantize import accuracy_aware_int8

    src, batches, check = small_onnx
    report, lines = {}, []
    # an unreachable target (agreement > 1): the search can only end by budget or by its layer cap
    accuracy_aware_int8(src, tmp_path / "q.onnx", batches, min_agreement=1.01, reduce_range=False,
                        decide=lambda out: out.argmax(1), check=check, report=report, budget_s=budget,
                        progress=lambda stage, done, total: lines.append((stage, done, total)))
    assert (tmp_path / "q.onnx").is_file()
    assert report["stopped"] == stopped and report["ranked_layers"] == ranked and report["budget_s"] == budget
    assert report["selection_images"] == 12 and 0.0 <= report["selection_agreement"] <= 1.0
    # the whole-model INT8 line always comes; the ranking and search lines only within the budget
    assert "whole model INT8" in lines[0][0] and (len(lines) > 1) == (budget > 0)
    assert all(done <= total for _, done, total in lines)


def test_every_step_is_timed_even_a_quantizer_that_fails(tiny, tmp_path, monkeypatch):
    import edgetl_builtins.onnx

    def out_of_budget(self, files, out_dir, ctx):
        raise ExportError("accuracy-aware passed its budget")

    monkeypatch.setattr(edgetl_builtins.onnx.OnnxInt8Ptq, "quantize", out_of_budget)
    run_dir, *_ = tiny
    result = export_run(run_dir, _options(tmp_path, precision="auto"))
    stages = {s["stage"]: s for s in result.stages}
    assert {"load run", "data validation", "data fp32 reference", "data calibration", "export",
            "latency torch fp32", "reference"} <= set(stages)
    failed = stages["quantize int8/ptq"]  # its time counts although it produced nothing
    assert failed["size_bytes"] is None and failed["seconds"] >= 0
    assert "passed its budget" in result.manifest.export.attempts[0].reason
    assert all(s["seconds"] >= 0 for s in result.stages)


def test_auto_walks_the_chain_past_a_failing_gate_records_every_attempt_and_passes_the_budget(tiny, tmp_path,
                                                                                            broken_ptq):
    """``--precision auto`` through the CLI: INT8/PTQ fails the gate, accuracy-aware (given ``--quantize-budget``) passes."""
    run_dir, *_ = tiny
    out = tmp_path / "b.edgetl"
    res = CliRunner().invoke(cli, ["export", str(run_dir), "--format", "onnx", "--precision", "auto",
                                   "--calib-count", "24", "--latency-runs", "0", "--quantize-budget", "7",
                                   "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output[-2000:]
    attempts = json.loads(res.stdout)["attempts"]
    assert [(a["precision"], a["method"]) for a in attempts] == [("int8", "ptq"), ("int8", "accuracy-aware")]
    first, second = attempts
    assert not first["passed"] and "agreement" in first["reason"] and first["agreement"] < 0.98
    assert second["passed"] and second["agreement"] >= 0.98 and second["n"] == 32
    assert open_bundle(out).manifest["target"]["method"] == "accuracy-aware"
    # its own full INT8 already meets the target here: early exit, no per-layer ranking spent
    assert second["details"]["float_layers"] == [] and second["details"]["stopped"] == "agreement met"
    assert second["details"]["ranked_layers"] == 0
    assert second["details"]["budget_s"] == 7.0  # --quantize-budget reached the accuracy-aware quantizer
