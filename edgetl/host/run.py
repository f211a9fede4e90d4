"""A run directory's model file: save a TrainedModel, load it back without pickled classes.

``runs/NAME/model.pt`` holds a plain dict (loaded with ``weights_only=True``):
format version, backbone name, head spec, task, labels, threshold, output,
positive label, the InputSpec and the state dict. Export, eval and predict all
load a run through :func:`load_run`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.api import InputSpec, TrainedModel
from edgetl.errors import DataError

MODEL_FILE = "model.pt"
PROGRAM_FILE = "model.pt2"  # modules other than a ClassifierModel: a torch.export ExportedProgram
FORMAT = 1


@dataclass
class Run:
    """A trained run, ready to evaluate or export.

    Attributes:
        model: ``torch.nn.Module`` in eval mode; (N, 3, H, W) -> (N, K) probabilities.
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


def save_run_model(run_dir: str | Path, trained: TrainedModel, *, backbone: str, strategy: str,
                   input_spec: InputSpec, name: str, config: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt`` (atomically) for a ClassifierModel-based TrainedModel."""
    import torch

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    module = trained.module
    payload = {
        "format": FORMAT, "name": name, "backbone": backbone, "strategy": strategy,
        "task": trained.task, "labels": list(trained.labels),
        "threshold": trained.threshold, "output": trained.output, "positive": trained.positive,
        "input": input_spec.to_dict(), "config": config or {},
    }
    if hasattr(module, "head_spec"):
        payload.update(head=dict(module.head_spec),
                       state_dict={k: v.detach().cpu() for k, v in module.state_dict().items()})
    else:
        payload["program"] = save_program(run_dir / PROGRAM_FILE, module, input_spec)
    tmp = run_dir / (MODEL_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(run_dir / MODEL_FILE)
    return run_dir / MODEL_FILE


def program_module(program: Any) -> Any:
    """A loaded ExportedProgram as an ``nn.Module`` that accepts ``eval()``/``to()``.

    The program's own graph module refuses mode changes; it is held outside
    the module tree so the wrapper's ``eval()`` does not reach it (the
    program was exported in eval mode). ONNX export traces through it.
    """
    from torch import nn

    class ProgramModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            object.__setattr__(self, "inner", program.module())

        def forward(self, x: Any) -> Any:
            return self.inner(x)

    return ProgramModule()


def save_program(path: Path, module: Any, input_spec: InputSpec) -> str:
    """``torch.export`` ``module`` (eval mode, CPU, dynamic batch) to ``path``; returns the file name.

    Limits: the module must be traceable by ``torch.export`` (no data-dependent
    Python control flow); it is saved for inference only (no resume).
    """
    import torch

    module = module.cpu().eval()
    example = torch.zeros(2, 3, *input_spec.size)
    try:
        program = torch.export.export(module, (example,),
                                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    except Exception as exc:
        raise DataError(f"cannot save the trained module with torch.export ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    torch.export.save(program, tmp)
    tmp.replace(path)
    return path.name


def load_run(run_dir: str | Path) -> Run:
    """Rebuild the model of a run directory through the backbone registry."""
    import torch

    from edgetl.host.model import ClassifierModel
    from edgetl.plugins import get_manager

    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run directory (no {MODEL_FILE}); train one with 'edgetl train'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from None
    if payload.get("format") != FORMAT:
        raise DataError(f"{path}: model format {payload.get('format')!r}, expected {FORMAT}")
    if payload.get("program"):
        model: Any = program_module(torch.export.load(run_dir / payload["program"]))
    else:
        backbone = get_manager().get("backbone", payload["backbone"])
        head = payload["head"]
        features = backbone.build(pretrained=False)
        model = ClassifierModel(features, head["feature_dim"], head["num_classes"], dropout=head["dropout"],
                                hidden=head["hidden"], tta=tuple(head.get("tta") or ()))
        model.load_state_dict(payload["state_dict"])
        model.eval()
    return Run(dir=run_dir, name=payload["name"], model=model, task=payload["task"],
               labels=payload["labels"], threshold=payload["threshold"], output=payload["output"],
               positive=payload["positive"], input=InputSpec.from_dict(payload["input"]),
               backbone=payload["backbone"], strategy=payload["strategy"], config=payload["config"])
