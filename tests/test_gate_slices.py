"""The optional per-slice gate (``edgetl export --gate-slices``): one slice fails while the whole set passes.

The synthetic cases check the rules (same agreement bound, drop budget and
tie rule as the whole-set gate); the export cases run the tiny model through
the real ONNX export with a gate runtime that flips one image of one slice.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

from edgetl.host.gate import gate_slices, with_slices

LABELS = ["defect", "good"]
RULES = {"task": "classify", "labels": LABELS, "threshold": None, "positive": "defect", "max_drop_points": 1.0,
         "min_agreement": 0.98}


def _probs(pred: list[int], confidence: float = 0.9) -> np.ndarray:
    out = np.full((len(pred), 2), 1 - confidence)
    out[np.arange(len(pred)), pred] = confidence
    return out


def _one_flip_in_b(confidence: float = 0.9):
    """100 images, slices A (60) and B (40); the exported model flips one right answer of B."""
    from edgetl.host.gate import gate

    y = np.array([0, 1] * 50)
    values = ["A"] * 60 + ["B"] * 40
    reference = _probs(list(y), confidence)
    exported = reference.copy()
    exported[70] = exported[70][::-1]
    whole = gate(exported, reference, y, **RULES)
    return whole, gate_slices(exported, reference, y, {"line": values}, **RULES)


def test_one_slice_fails_while_the_whole_set_passes():
    whole, per_slice = _one_flip_in_b()
    assert whole["passed"] and whole["agreement"] == pytest.approx(0.99) and whole["drop_points"] == pytest.approx(1.0)
    rows = {r["slice"]: r for r in per_slice["line"]}
    assert rows["A"]["passed"] and rows["A"]["n"] == 60 and rows["A"]["agreement"] == 1.0
    b = rows["B"]
    assert not b["passed"] and b["n"] == 40 and b["drop_points"] == pytest.approx(2.5)
    assert "agreement 39/40 = 0.9750 < 0.98" in b["reason"] and "drops 2.50 points > 1" in b["reason"]
    figures = with_slices(whole, per_slice)
    assert not figures["passed"] and figures["slices"] is per_slice
    assert figures["reason"].startswith("slice line=B (n=40): accuracy drops 2.50 points > 1")
    assert "\n" not in figures["reason"]


def test_slices_follow_the_tie_rule_of_the_whole_set():
    whole, per_slice = _one_flip_in_b(confidence=0.5 + 2e-5)  # every reference decision within 1e-4 of the boundary
    assert whole["passed"] and whole["ties"] == 1
    assert all(r["passed"] for r in per_slice["line"]) and sum(r["ties"] for r in per_slice["line"]) == 1
    assert with_slices(whole, per_slice)["passed"]


def test_a_passing_set_with_passing_slices_keeps_its_verdict():
    from edgetl.host.gate import gate

    y = np.array([0, 1] * 20)
    ref = _probs(list(y))
    whole = gate(ref.copy(), ref, y, **RULES)
    figures = with_slices(whole, gate_slices(ref.copy(), ref, y, {"cam": ["x", "y"] * 20}, **RULES))
    assert figures["passed"] and figures["reason"] is None
    assert [r["slice"] for r in figures["slices"]["cam"]] == ["x", "y"]
    assert all(r["warning"] for r in figures["slices"]["cam"])  # 20 images each: the width warning


# -- through edgetl export -------------------------------------------------
torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """(root, run_dir, plain copy): the tiny run made once; the copy keeps its config without slices."""
    import shutil

    from bundle_factory import make_tiny_run

    root = tmp_path_factory.mktemp("sliced")
    run_dir = make_tiny_run(root)
    return root, run_dir, shutil.copytree(run_dir, root / "runs" / "plain")


@pytest.fixture(scope="module")
def sliced_run(tiny_runs):
    """(run_dir, row of the flipped image, n): the tiny run with ``slices: [{name: line, manifest}]``.

    The val set's 32 images: the last 8 ``good`` ones are ``line2``, the rest ``line1``.
    """
    from edgetl.host.calibration import scan

    root, run_dir, _ = tiny_runs
    paths, _ = scan(root / "data" / "val", LABELS)
    manifest = root / "data" / "lines.csv"
    line2 = set(paths[-8:])
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "line"])
        writer.writerows([p.relative_to(manifest.parent), "line2" if p in line2 else "line1"] for p in paths)
    payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    payload["config"]["slices"] = [{"name": "line", "manifest": str(manifest)}]
    torch.save(payload, run_dir / "model.pt")
    return run_dir, paths.index(min(line2)), len(paths)


@pytest.fixture()
def one_flip(sliced_run, monkeypatch):
    """The ONNX gate runtime swaps the two probabilities of one ``line2`` image."""
    from edgetl.plugins import get_manager

    _, row, n = sliced_run
    target = type(get_manager().get("target", "onnx"))
    load = target.load_for_gate

    def flipping(self, files, manifest, settings):
        runtime = load(self, files, manifest, settings)
        predict = runtime.predict

        def flipped(x):
            out = np.array(predict(x))
            if len(out) == n:
                out[row] = out[row][::-1]
            return out

        runtime.predict = flipped
        return runtime

    monkeypatch.setattr(target, "load_for_gate", flipping)


def _export(run_dir, out, **kw):
    from edgetl.host.export import ExportOptions, export_run

    return export_run(run_dir, ExportOptions(format="onnx", precision="fp32", calib_count=8, latency_runs=0,
                                             gate=100.0, min_agreement=0.95, out=out, **kw))


def test_without_the_flag_the_gate_is_the_whole_set_gate(sliced_run, one_flip, tmp_path):
    result = _export(sliced_run[0], tmp_path / "plain.edgetl")
    attempt = result.attempts[-1]
    assert attempt["passed"] and attempt["agreement"] == pytest.approx(31 / 32)
    assert "slices" not in attempt and "slices" not in result.manifest.export.gate


def test_gate_slices_fails_the_export_naming_the_slice_and_leaves_no_bundle(sliced_run, one_flip, tmp_path):
    from edgetl.errors import GateFailedError

    out = tmp_path / "sliced.edgetl"
    with pytest.raises(GateFailedError) as info:
        _export(sliced_run[0], out, gate_slices=True)
    message = str(info.value)
    assert "slice line=line2 (n=8): top-1 agreement 7/8 = 0.8750 < 0.95" in message and "\n" not in message
    assert "No bundle written" in message
    assert list(tmp_path.iterdir()) == []
    rows = {r["slice"]: r for r in info.value.attempts[-1]["slices"]["line"]}
    assert rows["line1"]["passed"] and rows["line1"]["n"] == 24 and not rows["line2"]["passed"]


def test_gate_slices_records_every_slice_in_the_manifest(sliced_run, tmp_path):
    from edgetl.bundle import open_bundle

    result = _export(sliced_run[0], tmp_path / "ok.edgetl", gate_slices=True)
    with open_bundle(result.bundle) as bundle:
        export = bundle.manifest["export"]
    assert export["gate"]["slices"] == ["line"]
    rows = export["attempts"][-1]["slices"]["line"]
    assert [(r["slice"], r["n"], r["passed"]) for r in rows] == [("line1", 24, True), ("line2", 8, True)]


def test_gate_slices_needs_slices_in_the_run_config(tiny_runs, tmp_path):
    from edgetl.errors import UsageError

    with pytest.raises(UsageError, match="--gate-slices: the run's config names no slices"):
        _export(tiny_runs[2], tmp_path / "x.edgetl", gate_slices=True)


def test_cli_gate_slices_json_names_the_slice_and_matches_the_schema(sliced_run, one_flip, tmp_path):
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from edgetl.cli import cli

    out = tmp_path / "cli.edgetl"
    res = CliRunner().invoke(cli, ["export", str(sliced_run[0]), "--format", "onnx", "--precision", "fp32",
                                   "--calib-count", "8", "--latency-runs", "0", "--gate", "100",
                                   "--min-agreement", "0.95", "--gate-slices", "--out", str(out), "--json"])
    assert res.exit_code == 1 and not out.exists()
    doc = json.loads(res.stdout)
    assert doc["passed"] is False and "slice line=line2 (n=8)" in doc["error"]
    jsonschema = pytest.importorskip("jsonschema")
    schema = Path(__file__).resolve().parents[1] / "docs" / "schemas" / "export.schema.json"
    jsonschema.validate(doc, json.loads(schema.read_text()))
    assert [r["passed"] for r in doc["attempts"][0]["slices"]["line"]] == [True, False]
