"""Built-in adaptation strategies: ``linear-probe``, ``finetune``, ``progressive``, ``partial-finetune``.

Registered through the same ``edgetl_strategies`` hook a third party uses.
Nothing heavy at import: torch loads when a strategy fits.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgetl.hookspecs import hookimpl

# What other plugins may use (docs/plugins.md, "What the built-in plugins share"): these names, from this
# package, never a submodule. tests/test_layers.py enforces it.
_PUBLIC = {
    "COMMON_OPTIONS": ("finetune", "COMMON"),  # lr_decay, freeze_bn, hidden: finetune's options shared by others
    "Finetune": ("finetune", "Finetune"),
    "build_model": ("finetune", "build_model"),
    "train_finetune": ("finetune", "train_finetune"),
}
__all__ = ["COMMON_OPTIONS", "Finetune", "build_model", "train_finetune"]  # = _PUBLIC (test_layers reads it)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'edgetl_builtins.strategies' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    return getattr(importlib.import_module(f"edgetl_builtins.strategies.{module}"), attr)


@hookimpl
def edgetl_strategies(register):
    from edgetl_builtins.strategies.finetune import Finetune, Progressive
    from edgetl_builtins.strategies.linear_probe import LinearProbe
    from edgetl_builtins.strategies.partial import PartialFinetune

    register(LinearProbe())
    register(Finetune())
    register(Progressive())
    register(PartialFinetune())
