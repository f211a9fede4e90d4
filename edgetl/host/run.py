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
        "head": dict(module.head_spec), "task": trained.task, "labels": list(trained.labels),
        "threshold": trained.threshold, "output": trained.output, "positive": trained.positive,
        "input": input_spec.to_dict(), "config": config or {},
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    tmp = run_dir / (MODEL_FILE + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(run_dir / MODEL_FILE)
    return run_dir / MODEL_FILE


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
    backbone = get_manager().get("backbone", payload["backbone"])
    head = payload["head"]
    features = backbone.build(pretrained=False)
    model = ClassifierModel(features, head["feature_dim"], head["num_classes"],
                            dropout=head["dropout"], hidden=head["hidden"], tta=tuple(head.get("tta") or ()))
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return Run(dir=run_dir, name=payload["name"], model=model, task=payload["task"],
               labels=payload["labels"], threshold=payload["threshold"], output=payload["output"],
               positive=payload["positive"], input=InputSpec.from_dict(payload["input"]),
               backbone=payload["backbone"], strategy=payload["strategy"], config=payload["config"])
