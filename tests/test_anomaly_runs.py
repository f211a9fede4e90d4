"""patchcore and padim end to end on a tiny good-only set: train, eval, export (gate), agent heat map."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from anomaly_fixtures import anomaly_config, make_anomaly_set
from click.testing import CliRunner
from train_fixtures import one_torch_thread  # noqa: F401

from edgetl.cli import cli
from edgetl.host.engine import train_from_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_anomaly_set(tmp_path_factory.mktemp("anomaly"))


@pytest.fixture(scope="module")
def logs():
    return {}  # strategy name -> its training log lines


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data, logs):
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, options in (("patchcore", {"coreset_ratio": 0.25}), ("padim", {"channels": 20})):
        cfg = anomaly_config(root / f"{name}.yaml", data, name, options)
        train_from_file(cfg, out=str(root / name), log=logs.setdefault(name, []).append)
        out[name] = root / name
    return out


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_the_final_scoring_reports_its_progress(runs, logs, name):
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    for split in ("val", "test"):
        n = metrics["final"][split]["n"]
        assert f"  evaluate {split}: {n}/{n} images" in logs[name], logs[name]


def test_the_coreset_step_reports_rows_chosen_done_over_total(runs, logs):
    """The greedy k-center selection (minutes on a large bank) counts its rows, not only "still working"."""
    lines = [m for m in logs["patchcore"] if "coreset of" in m]
    n = next(int(m.rsplit("/", 1)[1]) for m in lines)
    assert 1 < len(lines) <= 12, lines
    assert lines[0].endswith(f" 1/{n}") and lines[-1].endswith(f" {n}/{n}"), lines
    assert any(f"memory bank {n} of" in m for m in logs["patchcore"]), logs["patchcore"]


@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_trained_on_good_only_it_finds_the_defects_and_reports_pixel_metrics(runs, name):
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    test = metrics["final"]["test"]
    assert metrics["task"] == "anomaly" and metrics["counts"]["train"] == 20
    assert test["image_auroc"] >= 0.95 and test["pixel_auroc"] >= 0.9 and test["pro"] >= 0.7
    assert test["n_masks"] == 8
    report = (runs[name] / "report.md").read_text()
    assert "worst_test.png" in report and (runs[name] / "worst_test.png").stat().st_size > 1000


def test_eval_json_carries_image_and_pixel_metrics(runs, data):
    result = CliRunner().invoke(cli, ["eval", str(runs["patchcore"]), str(data / "test"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    stored = json.loads((runs["patchcore"] / "metrics.json").read_text())["final"]["test"]
    for key in ("image_auroc", "pixel_auroc", "pro", "image_f1"):
        assert doc[key] == pytest.approx(stored[key], abs=1e-6), key
    assert set(doc["per_class"]) == {"good", "hole", "smear"}
    schema = json.loads((ROOT / "docs" / "schemas" / "eval-anomaly.schema.json").read_text())
    jsonschema.validate(doc, schema)


def test_a_training_set_with_defects_trains_on_its_good_images_and_says_so(tmp_path, data):
    cfg = anomaly_config(tmp_path / "c.yaml", data, train=str(data / "test"))
    result = CliRunner().invoke(cli, ["train", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "trained on its 'good' images only" in result.output and "left out" in result.output
    good = len(list((data / "test" / "good").iterdir()))
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["counts"]["train"] == good


def test_without_val_defects_the_threshold_is_a_percentile_of_good_scores(tmp_path, data):
    cfg = anomaly_config(tmp_path / "c.yaml", data, options={"coreset_ratio": 0.25, "percentile": 90},
                         val=False)
    train_from_file(cfg, out=str(tmp_path / "r"), log=lambda m: None)
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["strategy_facts"]["threshold_rule"] == "percentile 90"
    val = metrics["final"]["val"]
    assert val["n_anomalous"] == 0 and val["false_reject_rate"] <= 0.34  # 3 held-out good images
    assert metrics["final"]["test"]["image_auroc"] >= 0.9


def device_runtime(fmt, files):
    """The target's device runtime on exported FP32 files (what ``Target.load`` builds from a manifest)."""
    if fmt == "onnx":
        from edgetl.onnxtools import OnnxRuntimeModel

        return OnnxRuntimeModel(files[0], {}, "fp32")
    from edgetl_builtins.openvino.runtime import OpenVinoModel

    return OpenVinoModel(files[0], {}, "fp32")


def _torch_outputs(run_dir, x):
    import torch

    from edgetl.host.run import load_run

    with torch.no_grad():
        score, amap = load_run(run_dir).model(torch.from_numpy(x))
    return score.numpy(), amap.numpy()


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("name", ["patchcore", "padim"])
def test_exported_graph_matches_torch_scores_and_maps(runs, data, tmp_path, fmt, name, request):
    """patchcore's OpenVINO graph is the signed bundle's own (the one the agent tests serve); the others
    come straight from the target's ``export``."""
    import torch

    from edgetl.host.run import load_run
    from edgetl.plugins import get_manager
    from edgetl.preprocess import preprocess_file

    run = load_run(runs[name])
    x = np.concatenate([preprocess_file(p, run.input) for p in sorted((data / "test").rglob("*.png"))[:6]])
    from edgetl.api import ExportSpec

    if (name, fmt) == ("patchcore", "openvino"):
        from edgetl.bundle import extract_bundle

        result = request.getfixturevalue("signed")[0]
        dest = extract_bundle(result.bundle, tmp_path / "bundle", 1 << 26)
        files = [dest / f for f in result.manifest.target.files if f.endswith(".xml")]
    else:
        files = get_manager().get("target", fmt).export(run.model, torch.from_numpy(x[:1]), tmp_path / "fp32",
                                                        ExportSpec())
    runtime = device_runtime(fmt, files)
    got = runtime.predict_outputs(x)
    score, amap = _torch_outputs(runs[name], x)
    assert set(got) == {"output", "map"} and got["map"].shape == amap.shape == (6, 1, 48, 48)
    np.testing.assert_allclose(got["output"], score, atol=1e-4)
    np.testing.assert_allclose(got["map"], amap, atol=1e-4)
    np.testing.assert_allclose(runtime.predict(x), score, atol=1e-4)


def test_anomaly_gate_passes_a_faithful_model_and_fails_a_broken_one():
    from edgetl.host.gate import gate

    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(100, int), np.ones(100, int)]
    ref = np.clip(np.r_[rng.normal(0.3, 0.1, 100), rng.normal(0.7, 0.1, 100)], 0, 1)
    kwargs = dict(task="anomaly", labels=["good", "anomaly"], threshold=0.5, positive="anomaly",
                  max_drop_points=1.0, min_agreement=0.98)
    ok = gate(ref + rng.normal(0, 1e-3, 200), ref, y, **kwargs)
    assert ok["passed"] and ok["metric"] == "roc_auc"
    shifted = gate(ref + 0.15, ref, y, **kwargs)  # same ranking (AUROC kept), many sides flipped
    assert not shifted["passed"] and "agreement" in shifted["reason"]
    noisy = gate(ref + rng.normal(0, 0.3, 200), ref, y, **kwargs)  # ranking destroyed
    assert not noisy["passed"] and "roc_auc drops" in noisy["reason"]


def _shift_first_reference_map(members: dict[str, bytes]) -> None:
    doc = json.loads(members["reference/outputs.json"])
    doc["images"][0]["map"] = (np.asarray(doc["images"][0]["map"]) + 0.5).tolist()
    members["reference/outputs.json"] = json.dumps(doc).encode()


@pytest.fixture(scope="module")
def signed(runs, tmp_path_factory):
    """The patchcore run exported to a signed OpenVINO FP32 bundle: (export result, key, public key)."""
    from edgetl.host.export import ExportOptions, export_run
    from edgetl.keys import generate_keypair

    root = tmp_path_factory.mktemp("bundle")
    key, pub = generate_keypair(root / "release")
    result = export_run(runs["patchcore"], ExportOptions(format="openvino", precision="fp32", sign=key,
                                                         out=root / "pc.edgetl", latency_runs=0))
    return result, key, pub


def test_agent_returns_the_heat_map_over_http(runs, signed, tmp_path):
    import cv2
    from agent_support import ThreadAgent, install, resign, serving

    result, key, pub = signed
    data_dir = json.loads((runs["patchcore"] / "metrics.json").read_text())
    assert data_dir["task"] == "anomaly"
    image = sorted((tmp_path.parent).glob("anomaly*/test/hole/*.png")) or None
    with ThreadAgent(tmp_path / "state", [pub]) as agent, agent.client() as client:
        status = install(client, result.bundle)
        assert status["status"] == "installed" and status["report"]["reference"]["passed"], status
        path = image[0] if image else None
        body = cv2.imencode(".png", cv2.imread(str(path)))[1].tobytes()
        plain = client.post("/v1/predict", content=body, headers={"Content-Type": "image/png"}).json()
        assert "heatmap_png" not in plain and plain["label"] in ("good", "anomaly")
        doc = client.post("/v1/predict?heatmap=true", content=body, headers={"Content-Type": "image/png"}).json()
        # a bundle whose stored heat maps do not match what this runtime computes is refused; v1 keeps serving
        bad = resign(result.bundle, tmp_path / "bad.edgetl", key,
                     edit_manifest=lambda m: m.update(model_version=m["model_version"] + "-bad"),
                     edit_members=_shift_first_reference_map)
        refused = install(client, bad)
        assert refused["status"] == "failed" and "anomaly map differs" in json.dumps(refused), refused
        assert serving(client) == result.manifest.model_version
    heat = cv2.imdecode(np.frombuffer(base64.b64decode(doc["heatmap_png"]), np.uint8), cv2.IMREAD_COLOR)
    assert heat.shape == (48, 48, 3)
    assert doc["anomaly_score"] == pytest.approx(plain["anomaly_score"], abs=1e-5)


def test_predict_save_writes_heat_map_overlays_for_an_anomaly_run(runs, data, tmp_path):
    import cv2

    from edgetl.annotate import annotate

    result = CliRunner().invoke(cli, ["predict", str(runs["patchcore"]), str(data / "test" / "hole"), "--json",
                                      "--save", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    docs = {Path(d["image"]).name: d for d in map(json.loads, result.stdout.splitlines())}
    written = sorted((tmp_path / "out").rglob("*.png"))
    assert sorted(p.name for p in written) == sorted(docs) and len(written) == 4
    for path in written:
        overlay = cv2.imread(str(path))
        image = cv2.imread(str(data / "test" / "hole" / path.name))
        plain = annotate(image, docs[path.name])  # the same drawing without a map
        assert overlay.shape == plain.shape == (320, 320, 3)
        assert np.abs(overlay[60:].astype(int) - plain[60:]).mean() > 10, path.name  # a map is blended in
        mask = cv2.resize(cv2.imread(str(data / "masks" / "test" / "hole" / path.name), cv2.IMREAD_GRAYSCALE),
                          (320, 320), interpolation=cv2.INTER_NEAREST) > 0
        hot = overlay[mask].astype(int)
        assert (hot[:, 2] - hot[:, 0]).mean() > 40, path.name  # the defect itself is drawn red-hot


def test_pipeline_capture_sink_stores_heat_map_overlays_of_anomalous_frames(signed, data, tmp_path):
    import cv2
    from agent_support import ThreadAgent, install

    from edgetl.annotate import annotate

    result, _, pub = signed
    capture, lines = tmp_path / "capture", tmp_path / "results.jsonl"
    request = {"source": str(data / "test" / "hole"),
               "sinks": [{"name": "capture", "options": {"dir": str(capture), "overlay": True, "margin": 1.0,
                                                         "sample": 0}},
                         {"name": "jsonl", "options": {"path": str(lines)}}]}
    with ThreadAgent(tmp_path / "state", [pub]) as agent, agent.client() as client:
        assert install(client, result.bundle)["status"] == "installed"
        assert client.post("/v1/pipeline", json=request).status_code == 200
        deadline = time.monotonic() + 60
        while client.get("/v1/pipeline").json()["status"]["state"] != "finished":
            assert time.monotonic() < deadline, client.get("/v1/pipeline").json()
            time.sleep(0.1)
    docs = [json.loads(line) for line in lines.read_text().splitlines()]
    assert len(docs) == 4 and all("anomaly_score" in d and len(json.dumps(d)) < 600 for d in docs)  # no map
    sidecars = sorted(capture.glob("*.json"))
    assert len(sidecars) == 4
    for sidecar in sidecars:
        doc = json.loads(sidecar.read_text())
        overlay = cv2.imread(str(capture / doc["overlay"]))
        frame = cv2.imread(str(sidecar.with_suffix(".png")))  # the raw frame, kept for relabelling
        plain = annotate(frame, doc["result"])
        assert overlay.shape == plain.shape == (320, 320, 3)
        assert np.abs(overlay[60:].astype(int) - plain[60:]).mean() > 10, doc  # the heat map is blended in
        matches = [p for p in (data / "test" / "hole").glob("*.png") if np.array_equal(cv2.imread(str(p)), frame)]
        assert len(matches) == 1, sidecar.name
        mask = cv2.resize(cv2.imread(str(data / "masks" / "test" / "hole" / matches[0].name), cv2.IMREAD_GRAYSCALE),
                          (320, 320), interpolation=cv2.INTER_NEAREST) > 0
        hot = overlay[mask].astype(int)
        assert (hot[:, 2] - hot[:, 0]).mean() > 40, doc  # the defect is drawn red-hot
