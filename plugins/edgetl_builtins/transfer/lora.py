"""``lora``: low-rank adapters (Hu et al. 2021) on the backbone's convolutions and linear layers, via ``peft``.

The backbone stays frozen; each targeted layer ``W`` gains ``B·A`` (rank
``r``, scaled by ``alpha / r``) and only ``A``, ``B`` and the classification
head train. Before the module is returned, ``peft``'s ``merge_and_unload``
folds ``W + (alpha/r)·B·A`` into the base weights: the exported graph is the
plain backbone's (same operators, same latency), the adapter exists only in
training. Grouped (depthwise) convolutions are not targeted: ``peft`` cannot
merge them.

options:
    r: rank (default 8).
    alpha: scaling numerator (default 16; the update is scaled by alpha / r).
    dropout: dropout on the adapter's input (default 0.0).
    groups: ``all`` or N — adapt the top N backbone layer groups.
    layers: which layer types get adapters: ``[conv, linear]`` (default both).
    freeze_bn: BatchNorm statistics frozen (default true: the backbone is frozen).
    hidden: width of an MLP head's hidden layer, or null for a linear head.
"""

from __future__ import annotations

import io
from typing import Any

from edgetl.api import FitContext, Strategy, TrainedModel
from edgetl.errors import ConfigError
from edgetl.training import DefaultOptions, positive_float, resolve_options
from edgetl_builtins.strategies import build_model

LAYER_KINDS = ("conv", "linear")


def top_groups(name: str, value: Any, n_groups: int) -> int:
    """``all`` or 0..n as a number of top layer groups; ConfigError otherwise."""
    if value == "all":
        return n_groups
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value:
        return min(value, n_groups)
    raise ConfigError(f"strategy.options.groups: expected 'all' or a number of layer groups (0..{n_groups}), "
                      f"got {value!r} ({name})")


def lora_targets(model: Any, groups: list[Any], n_top: int, kinds: list[str]) -> list[str]:
    """Qualified names (in ``model``) of the adaptable layers inside the top ``n_top`` groups.

    Convolutions with ``groups == 1`` (``conv``) and ``nn.Linear`` (``linear``);
    depthwise/grouped convolutions are skipped since their update cannot be merged.
    """
    from torch import nn

    inside = {id(m) for g in groups[len(groups) - n_top:] for m in g.modules()} if n_top else set()
    names = []
    for name, m in model.features.named_modules():
        if id(m) not in inside:
            continue
        if (("conv" in kinds and isinstance(m, nn.Conv2d) and m.groups == 1)
                or ("linear" in kinds and isinstance(m, nn.Linear))):
            names.append(f"features.{name}")
    return names


def adapter_parameter_count(model: Any, names: list[str], r: int) -> int:
    """What a rank-``r`` adapter on ``names`` adds: r·(in + out) per linear, r·(in·k·k + out) per conv."""
    from torch import nn

    modules = dict(model.named_modules())
    total = 0
    for name in names:
        m = modules[name]
        if isinstance(m, nn.Linear):
            total += r * (m.in_features + m.out_features)
        else:
            kh, kw = m.kernel_size
            total += r * (m.in_channels * kh * kw + m.out_channels)
    return total


def add_lora(model: Any, names: list[str], r: int, alpha: float, dropout: float) -> Any:
    """Wrap ``model`` (in place) with LoRA on ``names``; the ``PeftModel``. Only adapters and ``head`` train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    peft_model = get_peft_model(model, config)
    for p in model.head.parameters():
        p.requires_grad_(True)
    return peft_model


def adapter_bytes(peft_model: Any) -> int:
    """Size of the adapter weights alone, as ``torch.save`` writes them (the LoRA A/B matrices)."""
    import torch
    from peft import get_peft_model_state_dict

    buffer = io.BytesIO()
    torch.save(get_peft_model_state_dict(peft_model), buffer)
    return buffer.tell()


def merge(peft_model: Any) -> Any:
    """The base module with every adapter folded into its weights (no peft layer left)."""
    return peft_model.merge_and_unload()


class Lora(DefaultOptions, Strategy):
    name = "lora"
    description = "low-rank adapters on the frozen backbone's conv/linear layers (peft), merged before export"
    requires = ("torch", "peft")
    extra = "peft"
    DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.0, "groups": "all", "layers": list(LAYER_KINDS),
                "freeze_bn": True, "hidden": None}

    def options(self, ctx: FitContext) -> dict[str, Any]:
        opts = resolve_options(self.name, ctx.options, self.DEFAULTS)
        r = opts["r"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ConfigError(f"strategy.options.r: expected a positive integer rank, got {r!r} (lora)")
        opts["alpha"] = positive_float(self.name, "alpha", opts["alpha"])
        if not isinstance(opts["dropout"], (int, float)) or not 0 <= opts["dropout"] < 1:
            raise ConfigError(f"strategy.options.dropout: expected a number in [0, 1), got {opts['dropout']!r} (lora)")
        layers = opts["layers"]
        if not isinstance(layers, list) or not layers or any(k not in LAYER_KINDS for k in layers):
            raise ConfigError(f"strategy.options.layers: expected a non-empty list of {', '.join(LAYER_KINDS)}, "
                              f"got {layers!r} (lora)")
        if not isinstance(opts["freeze_bn"], bool):
            raise ConfigError(f"strategy.options.freeze_bn: expected true or false, got {opts['freeze_bn']!r} (lora)")
        return opts

    def fit(self, ctx: FitContext) -> TrainedModel:
        from edgetl.training import PeakMemory, fit_epochs, param_groups

        opts = self.options(ctx)
        model = build_model(ctx, opts["hidden"])
        groups = ctx.backbone.layer_groups(model.features)
        n_top = top_groups(self.name, opts["groups"], len(groups))
        names = lora_targets(model, groups, n_top, opts["layers"])
        if not names:
            raise ConfigError(f"strategy.options: lora found no {'/'.join(opts['layers'])} layer to adapt in the top "
                              f"{n_top} layer group(s) of {ctx.backbone.name}")
        adapter_params = adapter_parameter_count(model, names, opts["r"])
        peft_model = add_lora(model, names, opts["r"], opts["alpha"], float(opts["dropout"]))
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        ctx.progress(f"lora: rank {opts['r']}, alpha {opts['alpha']:g} on {len(names)} layers of the top "
                     f"{n_top}/{len(groups)} groups; {trainable:,} of {total:,} parameters train", 0,
                     ctx.config.train.epochs)
        opt_groups = param_groups(model, groups, ctx.config.train.lr, 1.0, ctx.config.train.weight_decay)
        with PeakMemory(ctx.device) as memory:
            stopper = fit_epochs(ctx, model, opt_groups, tag=self.name,
                                 eval_modules=lambda: [model.features] if opts["freeze_bn"] else [])
        extra = {"lora_rank": opts["r"], "lora_alpha": opts["alpha"], "lora_layers": len(names),
                 "trainable_params": trainable, "total_params": total,
                 "adapter_params": adapter_params,
                 "adapter_bytes": adapter_bytes(peft_model), **memory.facts()}
        merged = merge(peft_model)
        merged.eval()
        return TrainedModel(module=merged, task="classify", labels=list(ctx.labels), best_epoch=stopper.best_epoch,
                            extra=extra)
