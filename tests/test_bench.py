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
from edgetl.bench import (  # noqa: E402
    add_comparisons,
    input_batch,
    latency_stats,
    median_ci,
    stability_warnings,
    threads_default,
    time_calls,
    time_interleaved,
)
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
    code, out, err = invoke("bench", models["bundle"], models["run"], *QUICK, "--no-interleave", "--out",
                            tmp_path / "b")
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


def test_timed_calls_are_interleaved_in_rotating_rounds():
    calls = []
    predicts = [lambda batch, name=name: calls.append(name) for name in "ABC"]
    samples = time_interleaved(predicts, [np.zeros(1)] * 3, warmup=1, runs=3)
    assert calls == list("ABC") + list("ABC") + list("BCA") + list("CAB")  # warm-up, then rotating rounds
    assert [len(s) for s in samples] == [3, 3, 3]


def test_a_load_burst_hits_interleaved_models_alike(monkeypatch):
    """A burst slows calls 10-39 five-fold: timed one block each, it lands on the first model only.

    The clock is simulated (each call advances it by its cost), so the test does not depend on how
    busy the machine running it is.
    """
    from types import SimpleNamespace

    import edgetl.bench as bench

    clock = {"now": 0.0, "calls": 0}
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: clock["now"]))

    def predict(batch):
        clock["calls"] += 1
        clock["now"] += 0.002 * (5 if 10 <= clock["calls"] < 40 else 1)

    blocks = [time_calls(predict, np.zeros(1), 0, 40), time_calls(predict, np.zeros(1), 0, 40)]
    assert np.median(blocks[0]) / np.median(blocks[1]) == pytest.approx(5)  # the same model looks 5x slower
    clock["calls"] = 0
    rounds = time_interleaved([predict, predict], [np.zeros(1)] * 2, warmup=0, runs=40)
    assert np.median(rounds[0]) / np.median(rounds[1]) == pytest.approx(1)  # interleaved: it looks the same


def test_speedup_counts_only_when_the_median_intervals_do_not_overlap():
    def row(samples):
        return {"latency_ms": latency_stats(samples), "model_bytes": 1}

    rng = np.random.default_rng(0)
    ref, same, fast = (row(list(rng.normal(m, 1.0, 50))) for m in (100.0, 100.3, 50.0))
    rows = [ref, same, fast]
    add_comparisons(rows)
    assert ref["speedup_significant"] is None
    assert same["speedup_significant"] is False and fast["speedup_significant"] is True
    from edgetl.cli.bench_cmd import speedup_cell

    assert speedup_cell(same) == "no significant difference" and speedup_cell(fast) == f"{fast['speedup']:.2f}×"
    lo, hi = median_ci(list(range(100)))
    assert (lo, hi) == (39, 60)  # the 40th and 61st of 100 values, the textbook ranks


def test_unstable_timings_are_flagged_when_p90_is_far_above_the_median():
    steady = {"path": "a", "latency_ms": latency_stats([10.0] * 45 + [11.0] * 5)}
    spiky = {"path": "b", "latency_ms": latency_stats([10.0] * 40 + [70.0] * 10)}
    warnings = stability_warnings([steady, spiky])
    assert steady["unstable"] is False and spiky["unstable"] is True
    assert len(warnings) == 1 and warnings[0].startswith("b: p90") and "not reliable" in warnings[0]


def test_threads_follow_omp_num_threads_unless_given(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_default(None) == (3, "OMP_NUM_THREADS") and threads_default(2) == (2, "--threads")
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads_default(None)[1] == "free CPUs"


def test_bench_warns_loudly_on_stderr_and_the_plot_is_log_scale(models, tmp_path, monkeypatch):
    import edgetl.bench as bench

    monkeypatch.setattr(bench, "UNSTABLE_RATIO", 0.5)  # every model "unstable": the warning path runs
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    code, out, err = invoke("bench", models["bundle"], "--runs", 4, "--warmup", 0, "--out", tmp_path / "b")
    assert code == 0, err
    assert "WARNING: unstable timings" in err and "unstable" in out
    doc = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert doc["threads"] == 1 and doc["threads_source"] == "OMP_NUM_THREADS" and doc["interleaved"] is True
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    from edgetl.cli.bench_cmd import plot_latency

    seen = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda fig, path, **kw: seen.update(
        scale=fig.axes[0].get_yscale(), labels=[t.get_text() for t in fig.axes[0].get_xticklabels()]))
    plot_latency(doc, tmp_path / "p.png")
    assert seen["scale"] == "log" and seen["labels"][0].startswith("onnx fp32")


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
