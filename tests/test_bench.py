"""``edgetl bench``: runs and bundles side by side, its JSON schema, errors, and a torch-free bundle bench."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

from bundle_factory import make_tiny_bundle  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from edgetl.api import InputSpec  # noqa: E402
from edgetl.bench import input_batch, latency_stats  # noqa: E402
from edgetl.cli import cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "schemas" / "bench.schema.json").read_text())
QUICK = ["--runs", "3", "--warmup", "1", "--threads", "1"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny run, its ONNX fp32 bundle, and a copy of the run whose threshold rejects nothing (1.0)."""
    from edgetl.host.run import load_run, save_run_model

    root = tmp_path_factory.mktemp("bench")
    bundle = make_tiny_bundle(root)
    run_dir = root / "runs" / "tiny"
    run = load_run(run_dir)
    strict = dataclasses.replace(run.trained(), threshold=1.0)  # "defect" only at probability >= 1.0
    save_run_model(root / "runs" / "strict", strict, backbone=run.backbone, strategy=run.strategy,
                   input_spec=run.input, name="strict", config=run.config)
    return {"run": run_dir, "bundle": bundle, "strict": root / "runs" / "strict", "val": root / "data" / "val"}


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_bench_json_compares_run_and_bundle_with_the_eval_figures(models):
    code, out, err = invoke("bench", models["run"], models["bundle"], models["strict"], "--data", models["val"],
                            "--batch", 2, *QUICK, "--json")
    assert code == 0, err
    doc = json.loads(out)  # exactly one JSON document on stdout
    jsonschema.validate(doc, SCHEMA)
    run, bundle, strict = doc["models"]
    assert doc["reference"] == str(models["run"]) and doc["batch"] == 2 and doc["threads"] == 1
    assert [m["kind"] for m in doc["models"]] == ["run", "bundle", "run"]
    assert (run["format"], bundle["format"], bundle["precision"]) == ("pytorch", "onnx", "fp32")
    assert run["runtime"]["threads"] == 1 and bundle["threads"] == 1
    assert all(len(m["latency_ms"]["samples"]) == 3 and m["input"]["source"] == "data" for m in doc["models"])
    assert run["speedup"] == 1.0 and bundle["speedup"] == pytest.approx(
        run["latency_ms"]["median"] / bundle["latency_ms"]["median"])
    assert run["size_bytes"] == (models["run"] / "model.pt").stat().st_size
    # the bundle file as given; the model files the runtime loads, uncompressed (a zip may be smaller)
    assert bundle["size_bytes"] == models["bundle"].stat().st_size
    with zipfile.ZipFile(models["bundle"]) as zf:
        files = json.loads(zf.read("manifest.json"))["target"]["files"]
        assert bundle["model_bytes"] == sum(zf.getinfo(name).file_size for name in files) > 0
    # accuracy as `edgetl eval` computes it, model by model
    defects = {}
    for row, path in ((run, models["run"]), (bundle, models["bundle"]), (strict, models["strict"])):
        code, out, err = invoke("eval", path, models["val"], "--json")
        assert code == 0, err
        ev = json.loads(out)
        assert (row["accuracy"], row["balanced_accuracy"], row["n"]) == pytest.approx(
            (ev["accuracy"], ev["balanced_accuracy"], ev["n"]))
        defects[path] = np.asarray(ev["confusion_matrix"])[:, ev["labels"].index("defect")].sum()
    assert run["agreement"] == 1.0 and bundle["agreement"] >= 0.95  # fp32 ONNX decides like eager PyTorch
    # the strict copy says defect only where its probability saturates at 1.0, a subset of the reference's
    # defects: it disagrees with the reference exactly on the reference's other defects
    missed = defects[models["run"]] - defects[models["strict"]]
    assert missed > 0 and strict["agreement"] == pytest.approx(1 - missed / run["n"])


def test_bench_table_on_stdout_and_out_dir_with_json_and_plot(models, tmp_path):
    code, out, err = invoke("bench", models["bundle"], models["run"], *QUICK, "--out", tmp_path / "b")
    assert code == 0, err
    assert "median ms" in out and "tiny" in out and "pytorch fp32" in out and "onnx fp32" in out
    assert "warm-up" in err and "{" not in out
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    jsonschema.validate(doc, SCHEMA)
    assert doc["data"] is None and doc["models"][0]["agreement"] is None
    assert doc["models"][0]["input"]["source"] == "noise" and doc["reference"] == str(models["bundle"])
    assert (tmp_path / "b" / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_names_a_path_that_is_neither_a_run_nor_a_bundle(models, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    for bad, words in ((tmp_path / "empty", "neither a run directory"),
                       (tmp_path / "notes.txt", "neither a run directory nor an edgetl bundle"),
                       (tmp_path / "missing.edgetl", "no such run directory or bundle file")):
        code, out, err = invoke("bench", models["bundle"], bad, "--json")
        assert code == 1 and out == ""
        assert err.strip().count("\n") == 0 and str(bad) in err and words in err, err
    for flag in ("--batch", "--runs", "--threads"):
        code, out, err = invoke("bench", models["bundle"], flag, 0)
        assert code == 2 and f"{flag} 0: expected 1 or more" in err


def test_bench_rejects_a_data_class_the_model_does_not_know(models, tmp_path):
    for cls in ("good", "scratch"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        (tmp_path / "d" / cls / "a.png").write_bytes((models["val"] / "good" / "000.png").read_bytes())
    code, out, err = invoke("bench", models["bundle"], "--data", tmp_path / "d", *QUICK)
    assert code == 1 and "class folder 'scratch' is not a label" in err and str(models["bundle"]) in err


def test_bundle_only_bench_runs_without_torch(models):
    code = ("import sys\nfor m in ('torch', 'torchvision', 'timm'):\n    sys.modules[m] = None\n"
            "from edgetl.cli import main\nsys.argv = ['edgetl'] + sys.argv[1:]\nmain()\n")
    args = ["bench", str(models["bundle"]), "--data", str(models["val"]), *QUICK, "--json"]
    env = {**os.environ, "EDGETL_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["models"][0]["kind"] == "bundle" and doc["models"][0]["accuracy"] > 0.5


def test_latency_stats_are_numpy_percentiles_of_the_samples():
    stats = latency_stats([float(v) for v in range(100, 0, -1)])
    assert (stats["median"], stats["p90"], stats["p99"]) == pytest.approx((50.5, 90.1, 99.01))
    assert (stats["min"], stats["max"], stats["mean"]) == (1.0, 100.0, 50.5) and len(stats["samples"]) == 100


def test_input_batch_repeats_few_images_and_falls_back_to_seeded_noise(models):
    spec = InputSpec(size=(24, 32), mean=(0.5,) * 3, std=(0.5,) * 3)
    files = sorted((models["val"] / "good").glob("*.png"))[:2]
    batch, source = input_batch(spec, 5, files)
    assert source == "data" and batch.shape == (5, 3, 24, 32) and batch.dtype == np.float32
    assert np.array_equal(batch[0], batch[2]) and not np.array_equal(batch[0], batch[1])
    noise, source = input_batch(spec, 3, None)
    assert source == "noise" and noise.shape == (3, 3, 24, 32) and np.array_equal(noise, input_batch(spec, 3, [])[0])


def test_run_all_plan_gives_quick_settings_and_skips_elpv_training_unless_full(capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    run_all = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = run_all  # dataclasses look their module up there
    try:
        spec.loader.exec_module(run_all)
    finally:
        del sys.modules["run_all"]
    assert run_all.main(["--mode", "quick", "--list"]) == 0
    quick = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert quick["elpv_strategies"].startswith("skipped: trains three")
    assert "--rounds 1" in quick["train_throughput"] and "--clients 8" in quick["agent_load"]
    assert run_all.main(["--mode", "full", "--list", "--only", "elpv_strategies"]) == 0
    assert "elpv_strategies.py --results" in capsys.readouterr().out
