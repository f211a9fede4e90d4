"""What a strategy's ``fit`` returned, checked before anything is written.

The check runs one tiny forward pass on a validation batch and captures the
module with ``torch.export`` (what the run directory will store), so a wrong
return type, a wrong output shape or an unsaveable module is a one-line error
naming the strategy and its plugin, not a traceback after training.
"""

from __future__ import annotations

from typing import Any

from edgetl.api import TASKS, Strategy, TrainedModel
from edgetl.errors import PluginError


def who(strategy: Strategy) -> str:
    """``strategy 'name' (plugin X)`` for messages."""
    return f"strategy '{strategy.name}' (plugin {strategy.plugin or '?'})"


def _shape(out: Any) -> str:
    if isinstance(out, (tuple, list)):
        return "(" + ", ".join(_shape(o) for o in out) + ")"
    return str(tuple(out.shape)) if hasattr(out, "shape") else type(out).__name__


def check_output(name: str, trained: TrainedModel, out: Any, n: int, size: tuple[int, int]) -> None:
    """The module's output for a batch of ``n`` has the task's shape, else PluginError."""
    import torch

    k = len(trained.labels)
    if trained.task == "classify":
        ok = isinstance(out, torch.Tensor) and tuple(out.shape) == (n, k) and out.is_floating_point()
        expected = f"a float tensor ({n}, {k}) of probabilities"
    else:
        ok = (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(o, torch.Tensor) for o in out)
              and tuple(out[0].shape) == (n,) and out[1].ndim == 4 and tuple(out[1].shape[:2]) == (n, 1))
        expected = f"a tuple (score ({n},), map ({n}, 1, H, W))"
    if not ok:
        raise PluginError(f"{name}: fit returned a module whose output for a ({n}, 3, {size[0]}, {size[1]}) batch "
                          f"is {_shape(out)}; expected {expected}")


def check_trained(strategy: Strategy, trained: Any, example: Any) -> Any:
    """Validate ``fit``'s result on ``example`` (a normalised batch); returns its ExportedProgram.

    Raises:
        PluginError: wrong type, task, labels, threshold, or output shape.
        EdgetlError: the module cannot be captured by ``torch.export``.
    """
    import torch

    from edgetl.host.run import export_program

    name = who(strategy)
    if not isinstance(trained, TrainedModel):
        raise PluginError(f"{name}: fit returned {type(trained).__name__}; expected edgetl.api.TrainedModel")
    if not isinstance(trained.module, torch.nn.Module):
        raise PluginError(f"{name}: TrainedModel.module is {type(trained.module).__name__}; "
                          "expected a torch.nn.Module")
    if trained.task not in TASKS:
        raise PluginError(f"{name}: TrainedModel.task {trained.task!r}; expected one of {', '.join(TASKS)}")
    if trained.threshold is not None and trained.positive not in trained.labels:
        raise PluginError(f"{name}: TrainedModel.threshold {trained.threshold} needs positive= one of "
                          f"{trained.labels}, got {trained.positive!r}")
    module = trained.module.eval()
    example = example.to(next(iter(module.parameters()), example).device)
    try:
        with torch.inference_mode():
            out = module(example)
    except Exception as exc:
        raise PluginError(f"{name}: the returned module fails on a {tuple(example.shape)} batch: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    check_output(name, trained, out, len(example), tuple(example.shape[2:]))
    return export_program(module.cpu(), example.cpu(), name)
