"""A third-party Target and Quantizer, written as an outsider would, driven end to end.

The plugin below imports only public modules (``edgetl.api``,
``edgetl.hookspecs``, ``edgetl.errors``, ``edgetl.manifest``), is installed
with ``pip --no-index --target`` and selected with ``EDGETL_LOAD_PLUGINS``,
and goes through the real CLI: ``train`` -> ``export`` (its own quantizer,
then the gate through its own runtime) -> ``bundle verify`` -> an agent
installs it (reference check) -> ``/v1/predict``.

The host commands run in this process (click's ``CliRunner``, the plugin's
folder on ``sys.path``: found through the entry point pip installed); the
agent is ``edgetl agent serve`` in its own process with torch imports blocked,
since proving the device half never imports torch needs a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from agent_support import ProcessAgent, install, write_token
from click.testing import CliRunner
from plugin_factory import activate
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: F401

from edgetl.cli import cli

ROOT = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""ONNX through the TorchScript exporter, run by ONNX Runtime; FP16 by casting the weights."""

from pathlib import Path

import numpy as np

from edgetl.api import ExportSpec, FallbackStep, QuantizeContext, Quantizer, Runtime, Target
from edgetl.errors import BundleError
from edgetl.hookspecs import hookimpl


class OrtRuntime(Runtime):
    def __init__(self, path, precision, threads=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.precision = precision

    def predict(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.concatenate([self.session.run(None, {self.name: batch[i:i + 1]})[0] for i in range(len(batch))])

    def info(self):
        return {"runtime": "onnxruntime", "precision": self.precision}


class TorchScriptOnnx(Target):
    name = "tsonnx"
    description = "ONNX from torch.onnx's TorchScript exporter, run by ONNX Runtime"
    precisions = ("fp32", "fp16")
    fallback = (FallbackStep("fp16", "cast"), FallbackStep("fp32"))
    requires = ("onnxruntime",)
    export_requires = ("torch", "onnx")
    gate_requires = ("onnxruntime",)
    runtime_packages = ("onnxruntime",)
    bound_to = ("cpu_features",)  # an ONNX file runs on any architecture

    def profile_model(self):
        from pydantic import BaseModel, ConfigDict, Field

        class Runtime(BaseModel):
            model_config = ConfigDict(extra="forbid")
            threads: int | None = Field(default=None, ge=1)

        class Graph(BaseModel):
            model_config = ConfigDict(extra="forbid")
            opset: int = Field(default=17, ge=13)

        class Profile(BaseModel):
            model_config = ConfigDict(extra="forbid")
            runtime: Runtime = Field(default_factory=Runtime)
            graph: Graph = Field(default_factory=Graph)

        return Profile

    def profiles(self):
        return {"tsonnx-box": Path(__file__).with_name("tsonnx-box.yaml")}

    def export(self, model, example, out_dir, spec: ExportSpec):
        import torch

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "net.onnx"
        axes = {"x": {0: "n"}} if spec.dynamic_batch else None
        opset = spec.profile.graph.opset if spec.profile is not None else 17
        torch.onnx.export(model, (example,), str(path), input_names=["x"], dynamic_axes=axes, dynamo=False,
                          opset_version=opset)
        spec.report.update(exporter="torchscript", batch=spec.batch, opset=opset)
        return [path]

    def load(self, files, manifest, options=None):
        onnx_files = [f for f in files if str(f).endswith(".onnx")]
        if not onnx_files:
            raise BundleError("tsonnx: no .onnx file in the bundle")
        settings = {**manifest.target.runtime, **(options or {})}
        return OrtRuntime(onnx_files[0], manifest.target.precision, settings.get("threads"))


class CastFp16(Quantizer):
    name = "tsonnx-fp16-cast"
    description = "float16 weights and compute, float32 inputs and outputs"
    target, precision, method = "tsonnx", "fp16", "cast"
    requires = ("onnx", "onnxruntime")

    def options_model(self):
        from pydantic import BaseModel, ConfigDict

        class Options(BaseModel):
            model_config = ConfigDict(extra="forbid")
            keep_io_types: bool = True

        return Options

    def quantize(self, files, out_dir, ctx: QuantizeContext):
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ctx.progress("cast", 0, 1)
        keep = ctx.options.keep_io_types
        model = OnnxModel(convert_float_to_float16(onnx.load(str(files[0])), keep_io_types=keep))
        model.topological_sort()
        dst = out_dir / "net.onnx"
        onnx.save(model.model, str(dst))
        ctx.progress("cast", 1, 1)
        report = {"tool": "onnxruntime float16", "labels": list(ctx.model.labels), "keep_io_types": keep,
                  "calibration_batches": len(ctx.calibration), "min_agreement": ctx.gate.min_agreement}
        if ctx.validation is not None:  # check itself the way the gate will
            out = OrtRuntime(dst, "fp16").predict(ctx.validation.x)
            same = ctx.validation.decide(out) == ctx.validation.reference_decisions
            report["self_check_agreement"] = float(same.mean())
        ctx.report.update(report)
        return [dst]


@hookimpl
def edgetl_targets(register):
    register(TorchScriptOnnx())


@hookimpl
def edgetl_quantizers(register):
    register(CastFp16())
'''


PROFILE = """
# a device profile the plugin ships: its own runtime keys and section, checked by its profile_model()
name: tsonnx-box
description: an aarch64 box running the TorchScript ONNX through ONNX Runtime
format: tsonnx
arch: aarch64
runtime: {threads: 1}
graph: {opset: 16}
precisions: [fp32, fp16]
fallback: [fp16/cast, fp32]
quantize:
  tsonnx-fp16-cast: {keep_io_types: true}
"""


def _install_plugin(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "edgetl_tsonnx").mkdir(parents=True)
    (project / "edgetl_tsonnx" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    (project / "edgetl_tsonnx" / "tsonnx-box.yaml").write_text(textwrap.dedent(PROFILE))
    (project / "pyproject.toml").write_text(textwrap.dedent('''
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "edgetl-tsonnx"
        version = "0.1.0"
        [project.entry-points.edgetl]
        tsonnx = "edgetl_tsonnx"
        [tool.setuptools]
        packages = ["edgetl_tsonnx"]
        [tool.setuptools.package-data]
        edgetl_tsonnx = ["*.yaml"]
    '''))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(site), str(project)], check=True,
                   capture_output=True, text=True)
    return site


def _env(site: Path) -> dict[str, str]:
    path = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    return {"PYTHONPATH": path, "EDGETL_LOAD_PLUGINS": "tsonnx", "OMP_NUM_THREADS": "1"}


def _edgetl(*args: str):
    """``edgetl ARGS`` in this process (the plugin activated): the result has exit_code, stdout, stderr."""
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return _install_plugin(tmp_path_factory.mktemp("tsonnx"))


def test_third_party_target_and_quantizer_train_export_verify_and_serve(site, tmp_path, monkeypatch):
    from edgetl.keys import generate_keypair

    activate(monkeypatch, site, "tsonnx")
    listed = json.loads(_edgetl("plugins", "list", "--json").stdout)
    mine = next(p for p in listed if p["name"] == "tsonnx")
    assert mine["status"] == "ok" and {"kind": "target", "name": "tsonnx"} in mine["components"]
    assert {"kind": "quantizer", "name": "tsonnx-fp16-cast"} in mine["components"]

    key, pub = generate_keypair(tmp_path / "keys" / "release")
    # the agent starts in its own process while this one trains and exports
    agent = ProcessAgent(tmp_path / "state", [pub], write_token(tmp_path / "token"), env=_env(site))
    try:
        cfg = write_config(tmp_path / "run.yaml", make_dataset(tmp_path / "data", n_train=12, n_val=10), epochs=2)
        trained = _edgetl("train", str(cfg), "--out", str(tmp_path / "run"), "--device", "cpu")
        assert trained.exit_code == 0, trained.stderr[-2000:]

        bundle = tmp_path / "tiny-tsonnx.edgetl"
        exported = _edgetl("export", str(tmp_path / "run"), "--target", "tsonnx-box", "--sign", str(key),
                           "--calib-count", "8", "--latency-runs", "0", "--out", str(bundle), "--json")
        assert exported.exit_code == 0, exported.stderr[-2000:]
        doc = json.loads(exported.stdout)
        assert (doc["target"], doc["precision"], doc["method"]) == ("tsonnx", "fp16", "cast")
        attempt = doc["attempts"][0]
        assert attempt["passed"] and attempt["n"] == 20 and attempt["agreement"] >= 0.98
        details = attempt["details"]
        assert details["labels"] == ["defect", "good"] and details["calibration_batches"] == 8
        assert details["self_check_agreement"] >= 0.9 and details["min_agreement"] == 0.98
        assert details["keep_io_types"] is True  # the profile's quantize section, as the quantizer's ctx.options
        export_stage = next(s for s in doc["stages"] if s["stage"] == "export")
        assert export_stage["detail"]["exporter"] == "torchscript"  # ExportSpec.report reached the record
        assert export_stage["detail"]["opset"] == 16  # the profile's own section, typed by the target's model
        assert "quantize  cast 1/1" in exported.stderr  # QuantizeContext.progress reached the log

        verified = _edgetl("bundle", "verify", str(bundle), "--trust", str(pub), "--json")
        assert verified.exit_code == 0, verified.stderr[-2000:]
        report = json.loads(verified.stdout)
        assert report["ok"] and report["reference"]["status"] == "passed"

        agent.wait_ready()
        with agent.client() as client:
            status = install(client, bundle)
            assert status["status"] == "installed", status.get("error")
            assert status["report"]["reference"]["passed"]
            compat = status["report"]["compatibility"]  # the plugin declared its files portable: a warning only
            assert compat["arch"]["bundle"] == "aarch64" and compat["bound_to"] == ["cpu_features"]
            assert any(w.startswith("exported for aarch64") for w in compat["warnings"]) or \
                compat["arch"]["device"] == "aarch64"
            image = next((tmp_path / "data" / "val" / "defect").glob("*.png")).read_bytes()
            answer = client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"}).json()
            assert answer["model"] == doc["model_version"] and answer["label"] in ("defect", "good")
            assert set(answer["scores"]) == {"defect", "good"}
    finally:
        assert agent.stop() in (0, -15)  # SIGTERM
    assert agent.blocked_imports() == []  # the device half of the plugin never touched torch
