"""A run directory's model: save any module a strategy returned, load it back without its classes.

``runs/NAME/model.pt2`` is the module as a ``torch.export`` ExportedProgram
(graph + weights, batch dimension dynamic), so a run loads with no
cooperation from the strategy and without unpickling arbitrary objects.
``runs/NAME/model.pt`` is a plain dict (loaded with ``weights_only=True``):
format version, task, labels, threshold, output, positive label, backbone and
strategy names, the InputSpec, the resolved config and the module's state
dict (for inspection or warm starts). Export, eval, predict and bench load a
run through :func:`load_run`. Limits: see ``docs/training.md`` ("model.pt2").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.api import InputSpec, TrainedModel
from edgetl.errors import DataError, EdgetlError

MODEL_FILE = "model.pt"
PROGRAM_FILE = "model.pt2"
FORMAT = 2


@dataclass
class Run:
    """A trained run, ready to evaluate or export.

    Attributes:
        model: ``torch.nn.Module`` in eval mode; (N, 3, H, W) -> (N, K)
            probabilities (classify) or (score, map) (anomaly).
        input: the InputSpec the model was trained and validated with.
    """

    dir: Path
    name: str
    model: Any
    task: str
    labels: list[str]
    threshold: float | None
    output: str
    positive: str | None
    input: InputSpec
    backbone: str
    strategy: str
    config: dict[str, Any] = field(default_factory=dict)

    def trained(self) -> TrainedModel:
        return TrainedModel(module=self.model, task=self.task, labels=self.labels,
                            threshold=self.threshold, output=self.output, positive=self.positive)


def export_program(module: Any, example: Any, who: str) -> Any:
    """``module`` as an ExportedProgram for batches like ``example`` (any batch size).

    Raises:
        EdgetlError: ``torch.export`` cannot capture the module; names ``who``.
    """
    import torch

    module.eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        with torch.no_grad():
            return torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)
    except Exception as exc:  # torch.export raises many types; all mean "not capturable"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EdgetlError(f"{who}: the returned module cannot be saved: torch.export failed "
                          f"({type(exc).__name__}: {first[:200]}); see docs/plugins.md, 'What fit returns'") from None


def save_run_model(run_dir: str | Path, trained: TrainedModel, *, backbone: str, strategy: str,
                   input_spec: InputSpec, name: str, config: dict[str, Any] | None = None,
                   program: Any = None) -> Path:
    """Write ``model.pt2`` and ``model.pt`` (each atomically); ``program`` defaults to exporting the module."""
    import torch

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    module = trained.module
    if program is None:
        example = torch.zeros((2, 3, *input_spec.size), dtype=torch.float32)
        program = export_program(module, example, f"strategy {strategy}")
    tmp = run_dir / ("tmp-" + PROGRAM_FILE)  # torch.export wants the .pt2 suffix
    torch.export.save(program, tmp)
    tmp.replace(run_dir / PROGRAM_FILE)
    payload = {
        "format": FORMAT, "name": name, "backbone": backbone, "strategy": strategy,
        "task": trained.task, "labels": list(trained.labels), "threshold": trained.threshold,
        "output": trained.output, "positive": trained.positive, "input": input_spec.to_dict(),
        "config": config or {}, "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    tmp = run_dir / (MODEL_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(run_dir / MODEL_FILE)
    return run_dir / MODEL_FILE


def _saved_module(program: Any) -> Any:
    """The ExportedProgram as a plain module whose ``train``/``eval`` are harmless no-ops.

    ``ExportedProgram.module()`` refuses ``train()``/``eval()``, which exporters
    and predictors call; the graph is fixed in eval mode anyway.
    """
    from torch import nn

    class SavedModule(nn.Module):
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def train(self, mode: bool = True) -> SavedModule:
            self.training = mode
            return self

        def forward(self, x):
            return self.inner(x)

    return SavedModule(program.module())


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory's model and facts (format 2: ``model.pt2`` + ``model.pt``)."""
    import torch

    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run directory (no {MODEL_FILE}); train one with 'edgetl train'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT:
            raise DataError(f"{path}: model format {payload.get('format')!r}, expected {FORMAT}")
        model = _saved_module(torch.export.load(run_dir / PROGRAM_FILE))
    except EdgetlError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from None
    model.eval()
    return Run(dir=run_dir, name=payload["name"], model=model, task=payload["task"],
               labels=payload["labels"], threshold=payload["threshold"], output=payload["output"],
               positive=payload["positive"], input=InputSpec.from_dict(payload["input"]),
               backbone=payload["backbone"], strategy=payload["strategy"], config=payload["config"])
