"""Third-party strategies exactly as an outsider writes them: an entry point, public imports only.

The example plugin (examples/third_party_strategy, pip-installed into a
temporary folder) and a strategy returning a plain ``nn.Sequential`` with
non-linear layers both go train -> eval -> export (gate) -> bundle verify ->
agent install -> /v1/predict. A strategy returning a wrong output shape stops
with one line naming its plugin, before anything is written.

The steps run through the real CLI in this process (tests/strategy_chain.py);
the example's ``train`` runs as ``python -m edgetl`` in a fresh interpreter,
the plugin found through the entry point pip installed: the one chain where
the fresh process is the point.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("onnxruntime")

from plugin_factory import activate, make_plugin  # noqa: E402
from strategy_chain import ROOT, invoke, plugin_env, train_to_prediction  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

SEQUENTIAL = '''
from edgetl.api import Strategy, TrainedModel
from edgetl.hookspecs import hookimpl


class MlpHead(Strategy):
    """Backbone -> Linear -> GELU -> Linear, trained with edgetl's loop, returned as nn.Sequential(..., Softmax)."""

    name = "mlp-head"
    requires = ("torch",)

    def fit(self, ctx):
        from torch import nn

        from edgetl.training import fit_epochs

        for p in ctx.module.parameters():
            p.requires_grad_(False)
        net = nn.Sequential(ctx.module, nn.Linear(ctx.backbone.feature_dim, 16), nn.GELU(),
                            nn.Linear(16, len(ctx.labels)))
        groups = [{"name": "head", "params": [p for p in net.parameters() if p.requires_grad]}]
        stop = fit_epochs(ctx, net, groups, tag=self.name, eval_modules=lambda: [ctx.module],
                          loss_fn=lambda logits, target: -(target * logits.log_softmax(1)).sum(1))
        return TrainedModel(module=nn.Sequential(net, nn.Softmax(dim=1)), task="classify",
                            labels=list(ctx.labels), best_epoch=stop.best_epoch)


@hookimpl
def edgetl_strategies(register):
    register(MlpHead())
'''

BAD_SHAPE = '''
from edgetl.api import Strategy, TrainedModel
from edgetl.hookspecs import hookimpl


class Wrong(Strategy):
    name = "wrong-shape"

    def fit(self, ctx):
        from torch import nn

        module = nn.Sequential(ctx.module, nn.Linear(ctx.backbone.feature_dim, len(ctx.labels) + 1), nn.Softmax(1))
        return TrainedModel(module=module, task="classify", labels=list(ctx.labels))


@hookimpl
def edgetl_strategies(register):
    register(Wrong())
'''


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), n_train=24, n_val=12)


def _check_chain(doc, strategy):
    assert doc["summary"]["strategy"] == strategy
    assert doc["eval"]["accuracy"] == pytest.approx(doc["summary"]["val"]["accuracy"])
    assert doc["export"]["passed"] is True and doc["export"]["bundle"]
    assert doc["verify"]["ok"] and doc["verify"]["signature"]["checked"]
    assert doc["verify"]["reference"]["status"] == "passed", doc["verify"]["reference"]
    assert doc["install"]["status"] == "installed", doc["install"]
    assert doc["prediction"]["label"] in ("good", "defect")
    assert sum(doc["prediction"]["scores"].values()) == pytest.approx(1, abs=1e-4)


def test_example_prototype_strategy_trains_exports_and_serves(tmp_path, data, monkeypatch):
    # pip builds in the source folder: build a copy, so the checkout is never written to
    source = shutil.copytree(ROOT / "examples" / "third_party_strategy", tmp_path / "src",
                             ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "--target", str(site), str(source)], check=True, capture_output=True, text=True)
    activate(monkeypatch, site, "prototype")
    config = write_config(tmp_path / "c.yaml", data, "prototype", {"temperatures": [1, 4, 16]})
    doc = train_to_prediction(tmp_path, config, data, fresh_train_env=plugin_env(site, "prototype"))
    _check_chain(doc, "prototype")
    # random-init backbone (no model hub in tests), seeded: class means still beat chance (0.5) clearly
    assert doc["summary"]["val"]["accuracy"] > 0.6


def test_a_plain_sequential_with_nonlinear_layers_trains_exports_and_serves(tmp_path, data, monkeypatch):
    make_plugin(tmp_path / "site", "mlp", SEQUENTIAL)
    activate(monkeypatch, tmp_path / "site", "mlp")
    config = write_config(tmp_path / "c.yaml", data, "mlp-head", epochs=2, lr=0.01)
    doc = train_to_prediction(tmp_path, config, data)
    _check_chain(doc, "mlp-head")


def test_a_wrong_output_shape_is_one_line_naming_the_plugin(tmp_path, data, monkeypatch):
    make_plugin(tmp_path / "site", "wrong", BAD_SHAPE)
    activate(monkeypatch, tmp_path / "site", "wrong")
    config = write_config(tmp_path / "c.yaml", data, "wrong-shape", epochs=1)
    code, _, err = invoke("train", config, "--out", tmp_path / "run", "--device", "cpu")
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[-1] == ("error: strategy 'wrong-shape' (plugin wrong): fit returned a module whose output for a "
                         "(2, 3, 32, 32) batch is (2, 3); expected a float tensor (2, 2) of probabilities"), lines
    assert not (tmp_path / "run" / "model.pt").exists() and not (tmp_path / "run" / "model.pt2").exists()
