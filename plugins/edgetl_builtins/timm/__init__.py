"""Built-in backbones on timm: ``efficientnet_lite0/1/2`` (packaged ImageNet weights) and ``timm:*``.

Nothing heavy at import: timm and torch load when a backbone is built (or a
``timm:NAME`` variant is looked up), so ``edgetl --help`` stays torch-free.
"""

from __future__ import annotations

from edgetl.hookspecs import hookimpl


@hookimpl
def edgetl_backbones(register):
    from edgetl_builtins.timm.backbones import EfficientNetLite, TimmFamily

    for variant in (0, 1, 2):
        register(EfficientNetLite(variant))
    register(TimmFamily())

