"""The strategy tutorial of docs/plugins.md is real code: installed as a plugin, it trains, and L2-SP pulls."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from plugin_factory import activate, make_plugin  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.config import load_run_config  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402
from edgetl.plugins import reset_manager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tutorial_code() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    return re.search(r"```python\n# edgetl_l2sp\.py\n(.*?)```", text, flags=re.S).group(1)


def _drift(tmp_path, data, alpha, monkeypatch):
    """Squared distance of the trained backbone's weights from the ones it started from."""
    from edgetl_builtins.timm.backbones import TimmBackbone

    built = []
    original = TimmBackbone.build

    def build(self, *a, **k):
        module = original(self, *a, **k)
        built.append({n: v.detach().clone() for n, v in module.state_dict().items()})
        return module

    monkeypatch.setattr(TimmBackbone, "build", build)
    cfg = load_run_config(write_config(tmp_path / f"{alpha}.yaml", data, "l2sp", {"alpha": alpha}, epochs=2,
                                       lr=0.02))
    out = tmp_path / f"run-{alpha}"
    summary = Trainer(cfg, out, device="cpu", log=lambda m: None).run()
    state = torch.load(out / "model.pt", weights_only=True)["state_dict"]
    drift = sum(float(((state[f"features.{k}"] - v) ** 2).sum())
                for k, v in built[0].items() if v.is_floating_point() and "running" not in k)
    return summary, drift


def test_the_l2sp_tutorial_trains_and_its_penalty_pulls_toward_the_start(tmp_path, monkeypatch):
    make_plugin(tmp_path / "site", "l2sp", tutorial_code(), module="edgetl_l2sp")
    activate(monkeypatch, tmp_path / "site", "l2sp")
    reset_manager()
    data = make_dataset(tmp_path / "data", n_train=12, n_val=6)
    summary, free = _drift(tmp_path, data, 0.0, monkeypatch)
    assert summary["strategy"] == "l2sp" and summary["best_epoch"] in (1, 2)
    _, pulled = _drift(tmp_path, data, 50.0, monkeypatch)
    assert pulled < free
    reset_manager()


def test_the_tutorial_under_two_processes_matches_one(tmp_path, monkeypatch):
    """``edgetl train --nproc 2`` (torchrun, gloo) of the tutorial ends where one process does.

    The suite's one two-process run, so it carries both claims: the engine's DDP (the shards, the
    averaged gradients, the per-epoch loss and val accuracy, only rank 0 printing its JSON) and the
    tutorial's ``extra_loss`` (added on every rank; DDP averages the gradients). The one-process
    reference trains in this process; the two processes are the point and run as a user starts them.
    """
    import csv
    import json
    import os
    import subprocess
    import sys

    from plugin_factory import subprocess_env

    # BatchNorm statistics are per process under DDP (docs/training.md): kept frozen here, as
    # finetune's freeze_bn does, so that only the gradients' handling can make the two runs differ
    code = tutorial_code().replace(
        "callbacks=[PullToStart()])",
        "callbacks=[PullToStart()],\n                          eval_modules=lambda: [m for m in model.modules()"
        " if 'BatchNorm' in type(m).__name__])")
    assert "eval_modules" in code, "the tutorial's fit_epochs call changed: update this test"
    site = tmp_path / "site"
    make_plugin(site, "l2sp", code, module="edgetl_l2sp")
    data = make_dataset(tmp_path / "data", n_train=12, n_val=6)
    cfg = write_config(tmp_path / "c.yaml", data, "l2sp", {"alpha": 50.0}, epochs=2, lr=0.01)
    env = {**os.environ, **subprocess_env(site, "l2sp"), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
           "OMP_NUM_THREADS": "1", "EDGETL_WORKERS": "0"}
    two = subprocess.Popen([sys.executable, "-m", "edgetl", "train", str(cfg), "--device", "cpu",
                            "--out", str(tmp_path / "two"), "--nproc", "2", "--json"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:  # the reference trains here meanwhile: the machine's other core
        monkeypatch.delitem(sys.modules, "edgetl_l2sp", raising=False)  # an earlier test's, unchanged tutorial
        activate(monkeypatch, site, "l2sp")
        monkeypatch.setenv("EDGETL_WORKERS", "0")
        reset_manager()
        Trainer(load_run_config(cfg), tmp_path / "one", device="cpu", log=lambda m: None).run()
        out, err = two.communicate(timeout=300)
    finally:
        if two.poll() is None:
            two.kill()
            two.wait()
        reset_manager()
    assert two.returncode == 0, err[-3000:]
    assert json.loads(out)["processes"] == 2  # only rank 0 printed: stdout holds one document
    a, b = (torch.load(tmp_path / d / "model.pt", weights_only=True)["state_dict"] for d in ("one", "two"))
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-4, rtol=1e-3), k
    h1, h2 = (list(csv.DictReader((tmp_path / d / "history.csv").open())) for d in ("one", "two"))
    assert [r["epoch"] for r in h1] == ["1", "2"]
    for r1, r2 in zip(h1, h2, strict=True):
        assert float(r1["train_loss"]) == pytest.approx(float(r2["train_loss"]), rel=1e-4)
        assert r1["val_accuracy"] == r2["val_accuracy"]


def sam_code() -> str:
    text = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n# edgetl_sam\.py\n(.*?)```", text, flags=re.S).group(1)
    assert len(code.strip().splitlines()) < 40, "the SAM tutorial is promised in under 40 lines"
    return code


def test_the_sam_tutorial_takes_two_passes_per_step_and_goes_through_export_and_verify(tmp_path, monkeypatch):
    """SAM on the SDK's loop (the ``step`` hook): train -> export through the gate -> bundle verify -> an agent
    (in this process) that installs the signed bundle and answers like the host run."""
    import json

    from agent_support import ThreadAgent
    from click.testing import CliRunner
    from serve_support import served_like_the_host

    from edgetl.cli import cli
    from edgetl.errors import ConfigError
    from edgetl.host.export import ExportOptions, export_run
    from edgetl.keys import generate_keypair
    from edgetl.training import loop

    make_plugin(tmp_path / "site", "sam", sam_code(), module="edgetl_sam")
    activate(monkeypatch, tmp_path / "site", "sam")
    reset_manager()
    try:
        data = make_dataset(tmp_path / "data", n_train=12, n_val=10)
        bad = load_run_config(write_config(tmp_path / "bad.yaml", data, "sam", {"rhoo": 0.1}, epochs=1))
        with pytest.raises(ConfigError, match="rhoo: unknown key 'rhoo'; did you mean 'rho'"):
            Trainer(bad, tmp_path / "never", device="cpu", log=lambda m: None).run()
        assert not (tmp_path / "never").exists()  # the options hook ran before the run directory

        closures = []
        original = loop.TrainStep.closure
        monkeypatch.setattr(loop.TrainStep, "closure",
                            lambda self, *a, **k: closures.append(self.batch) or original(self, *a, **k))
        cfg = load_run_config(write_config(tmp_path / "sam.yaml", data, "sam", {"rho": 0.05}, epochs=2, lr=0.01))
        summary = Trainer(cfg, tmp_path / "run", device="cpu", log=lambda m: None).run()
        assert summary["strategy"] == "sam" and summary["best_epoch"] in (1, 2)
        assert closures and len(closures) % 2 == 0 and closures[0::2] == closures[1::2]  # two passes per step

        key, pub = generate_keypair(tmp_path / "signer")
        result = export_run(tmp_path / "run", ExportOptions(format="onnx", precision="fp32", calib_count=8,
                                                            latency_runs=0, out=tmp_path / "sam.edgetl", sign=key))
        assert result.attempts[-1]["passed"]
        verified = CliRunner().invoke(cli, ["bundle", "verify", str(tmp_path / "sam.edgetl"), "--json"])
        doc = json.loads(verified.stdout)
        assert doc["reference"]["status"] == "passed", verified.output

        # the device: the agent checks the signature and the reference outputs at install, then classifies
        # each image as the host run does (same label, scores within 1e-4)
        images = [p for cls in ("defect", "good") for p in sorted((data / "val" / cls).glob("*.png"))[:1]]
        with ThreadAgent(tmp_path / "agent" / "state", [pub]) as agent, agent.client() as client:
            served_like_the_host((key, client), tmp_path / "run", result.bundle, images)
            assert client.get("/v1/info").json()["current"]["model_version"]
    finally:
        reset_manager()


BLANKING = '''
from edgetl.api import Strategy, TrainedModel
from edgetl.hookspecs import hookimpl

SEEN = []


class Blank(Strategy):
    name, requires = "blank", ("torch",)

    def fit(self, ctx):
        import torch
        from edgetl.training import Callback, build_classifier, fit_epochs

        class Watch(Callback):
            def extra_loss(self, model, x, y, logits):
                SEEN.append(float(x.abs().sum()))

        def blank(step):  # an augmentation of the strategy's own, on the batch
            step.x = torch.zeros_like(step.x)
            step.closure(zero_grad=step.batch == 0, scale=0.5)  # accumulate over the epoch...
            if step.batch + 1 == step.batches:
                step.optimizer_step()  # ...and update once

        model = build_classifier(ctx)
        stop = fit_epochs(ctx, model, model.head.parameters(), tag="blank", step=blank, callbacks=[Watch()])
        return TrainedModel(module=model, task="classify", labels=list(ctx.labels), best_epoch=stop.best_epoch)


@hookimpl
def edgetl_strategies(register):
    register(Blank())
'''


def test_a_step_hook_may_replace_the_batch_and_accumulate_gradients(tmp_path, monkeypatch):
    import importlib

    make_plugin(tmp_path / "site", "blank", BLANKING, module="edgetl_blank")
    activate(monkeypatch, tmp_path / "site", "blank")
    reset_manager()
    try:
        data = make_dataset(tmp_path / "data", n_train=12, n_val=6)
        cfg = load_run_config(write_config(tmp_path / "b.yaml", data, "blank", epochs=1))
        Trainer(cfg, tmp_path / "run", device="cpu", log=lambda m: None).run()
        seen = importlib.import_module("edgetl_blank").SEEN
        assert seen and set(seen) == {0.0}  # every closure trained on the batch the hook replaced
    finally:
        reset_manager()
