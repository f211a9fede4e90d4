"""docs/sdk.md is real code: its backbone and its augmentation strategy, installed as plugins, train and export."""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

from plugin_factory import activate, make_plugin  # noqa: E402
from train_fixtures import make_dataset, one_torch_thread, write_config  # noqa: E402, F401

from edgetl.config import load_run_config  # noqa: E402
from edgetl.errors import ConfigError  # noqa: E402
from edgetl.host.engine import Trainer  # noqa: E402
from edgetl.plugins import get_manager, reset_manager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SDK = ROOT / "docs" / "sdk.md"


def doc_block(module: str) -> str:
    """The ```python block of docs/sdk.md that starts with ``# <module>.py``."""
    text = SDK.read_text(encoding="utf-8")
    return re.search(rf"```python\n# {re.escape(module)}\.py\n(.*?)```", text, flags=re.S).group(1)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """Install a docs/sdk.md block as a third-party plugin (entry point ``name``) for one test."""
    def install(name: str, module: str) -> None:
        make_plugin(tmp_path / "site", name, doc_block(module), module=module)
        activate(monkeypatch, tmp_path / "site", name)
        reset_manager()

    monkeypatch.setenv("EDGETL_WORKERS", "0")
    yield install
    reset_manager()


def test_the_backbone_example_keeps_the_contract_then_trains_exports_and_verifies(tmp_path, plugin):
    from click.testing import CliRunner
    from torchvision.models import mobilenet_v3_small

    from edgetl.api import Backbone, InputSpec
    from edgetl.cli import cli
    from edgetl.host.export import ExportOptions, export_run

    plugin("tvbackbone", "edgetl_tv_backbone")
    backbone = get_manager().get("backbone", "tv-mobilenet-v3-small")
    assert isinstance(backbone, Backbone) and backbone.plugin == "tvbackbone"
    assert isinstance(backbone.input, InputSpec) and backbone.input.size == (224, 224)

    torch.manual_seed(0)
    weights = tmp_path / "mobilenet_v3_small.pth"
    torch.save(mobilenet_v3_small(weights=None).state_dict(), weights)  # torchvision's layout, no download
    module = backbone.build(weights=str(weights)).eval()
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, saved[f"features.{k[2:]}"]) for k, v in module.state_dict().items())
    with torch.no_grad():
        assert module(torch.zeros(2, 3, 32, 32)).shape == (2, backbone.feature_dim)
        maps = backbone.feature_maps(module, torch.zeros(1, 3, 64, 64))
    assert [64 // m.shape[-1] for m in maps] == [2, 4, 8, 16, 32]  # the documented stride convention
    grouped = [id(p) for g in backbone.layer_groups(module) for p in g.parameters()]
    assert sorted(grouped) == sorted(id(p) for p in module.parameters())  # every parameter, once
    with pytest.raises(ConfigError, match="backbone.weights"):
        backbone.build(pretrained=True)

    data = make_dataset(tmp_path / "data", n_train=8, n_val=6)
    path = write_config(tmp_path / "tv.yaml", data, "finetune", epochs=1, lr=0.01)
    cfg = yaml.safe_load(path.read_text())
    cfg["backbone"] = {"name": "tv-mobilenet-v3-small", "pretrained": True, "weights": str(weights)}
    path.write_text(yaml.safe_dump(cfg))
    summary = Trainer(load_run_config(path), tmp_path / "run", device="cpu", log=lambda m: None).run()
    assert summary["strategy"] == "finetune" and summary["best_epoch"] == 1

    result = export_run(tmp_path / "run", ExportOptions(format="onnx", precision="fp32", calib_count=8,
                                                        latency_runs=0, out=tmp_path / "tv.edgetl"))
    assert result.attempts[-1]["passed"]
    verified = CliRunner().invoke(cli, ["bundle", "verify", str(result.bundle), "--json"])
    assert json.loads(verified.stdout)["reference"]["status"] == "passed", verified.output


def test_the_augmentation_example_blurs_every_training_image_once_per_epoch(tmp_path, plugin, monkeypatch):
    from torchvision.transforms.v2 import functional

    plugin("blur", "edgetl_blur")
    data = make_dataset(tmp_path / "data", n_train=6, n_val=4)
    bad = load_run_config(write_config(tmp_path / "bad.yaml", data, "blur-finetune", {"max_sigma": 0}, epochs=1))
    with pytest.raises(ConfigError, match="max_sigma"):
        Trainer(bad, tmp_path / "never", device="cpu", log=lambda m: None).run()
    assert not (tmp_path / "never").exists()

    sigmas: list[float] = []
    blur = functional.gaussian_blur

    def counted(x, kernel_size, sigma=None):
        sigmas.append(sigma[0])
        return blur(x, kernel_size, sigma)

    monkeypatch.setattr(functional, "gaussian_blur", counted)
    path = write_config(tmp_path / "blur.yaml", data, "blur-finetune", {"max_sigma": 1.2}, epochs=2)
    cfg = yaml.safe_load(path.read_text())
    cfg["augment"] = ["hflip", "mixup"]  # the built-ins the wrapper sees (hflip) and the one it turns off (mixup)
    path.write_text(yaml.safe_dump(cfg))
    summary = Trainer(load_run_config(path), tmp_path / "run", device="cpu", log=lambda m: None).run()
    assert summary["strategy"] == "blur-finetune"
    assert len(sigmas) == 12 * 2  # 12 training images, 2 epochs; validation and evaluation never blurred
    assert all(0.1 <= s <= 1.2 for s in sigmas) and len(set(sigmas)) > 1


def test_the_built_in_augmentations_are_one_list_and_the_documented_default():
    from edgetl.config import AUGMENTATIONS, RunConfig
    from edgetl.training.datasets import PER_BATCH, PER_IMAGE

    assert sorted(AUGMENTATIONS) == sorted(PER_IMAGE + PER_BATCH)  # what the config accepts, the dataset builds
    default = RunConfig.model_fields["augment"].default_factory()
    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    assert f"default `[{', '.join(default)}]`" in text
    for name in AUGMENTATIONS:
        assert f"`{name}`" in text.split("## Augmentations: the built-ins and the extension point", 1)[1]


def test_the_input_spec_table_lists_every_field_with_its_default():
    from edgetl.api import InputSpec

    text = SDK.read_text(encoding="utf-8").split("### `InputSpec` (`edgetl.api`)", 1)[1]
    table = text.split("\n\n", 2)[2].split("\n\n", 1)[0]  # the paragraph after the constructor's
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in table.splitlines()[2:]]
    rows = {name.strip("`"): default.strip("`") for name, _, default, _ in cells}
    fields = {f.name: f.default for f in dataclasses.fields(InputSpec)}
    assert set(rows) == set(fields)
    for name, default in fields.items():
        assert ast.literal_eval(rows[name]) == default, name


def test_the_backbone_tables_name_every_field_and_method_of_the_contract():
    import inspect

    from edgetl.api import Backbone

    text = SDK.read_text(encoding="utf-8").split("### The contract: `edgetl.api.Backbone`", 1)[1].split("###", 1)[0]
    named = set(re.findall(r"`(\w+)", " ".join(re.findall(r"^\| ([^|]+) \|", text, flags=re.M))))
    fields = {n for cls in Backbone.__mro__ for n in getattr(cls, "__annotations__", {})}
    methods = {n for n, v in vars(Backbone).items() if inspect.isfunction(v)}
    assert fields | methods <= named, (fields | methods) - named
