"""``edgetl.train``: a config (path, dict or RunConfig) and keyword overrides -> a :class:`Run`.

``edgetl train`` calls :func:`train_config`, the same function. Imports no ML
framework until a training starts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.config import RunConfig
    from edgetl.workflow.model import Model

Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    """The default log: progress on stderr, so stdout (and doctests) stay clean."""
    print(message, file=sys.stderr, flush=True)


def _flatten(overrides: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``{"train": {"epochs": 2}}`` -> ``[("train.epochs", 2)]``: dict values merge, others replace."""
    out: list[tuple[str, Any]] = []
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out += _flatten(value, dotted + ".")
        else:
            out.append((dotted, value))
    return out


def resolve_config(config: str | Path | dict[str, Any] | RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """A validated run config from a YAML path, a dict or a RunConfig, with keyword overrides.

    Overrides go through the same ``--set key=value`` path as the command line
    (values are written as JSON, which YAML reads back exactly), so they are
    validated exactly like the file.
    """
    from edgetl.config import RunConfig, apply_overrides, load_run_config, validate

    sets = [f"{key}={json.dumps(value, default=str)}" for key, value in _flatten(overrides)]  # Path -> str
    if isinstance(config, RunConfig):
        config = config.model_dump(mode="json", by_alias=True)
    if isinstance(config, dict):
        import copy

        return validate(RunConfig, apply_overrides(copy.deepcopy(config), sets), "config")
    return load_run_config(config, sets)


def folder_config(data: str | Path, *, backbone: str = "efficientnet_lite0", strategy: str = "linear-probe",
                  val_split: float = 0.2) -> dict[str, Any]:
    """A run config for the common case, from a folder's layout alone (``edgetl train --data DIR``).

    ``DIR/train`` (+ ``DIR/val``, ``DIR/test`` where present) are the splits, as
    ``edgetl data`` writes them; a folder of class sub-folders without them is
    split by the seed (``val_split`` of each class for validation). The name is
    the folder's; every other key keeps its default (``edgetl config show`` lists them).

    Raises:
        DataError: ``data`` is not a folder.
    """
    from edgetl.errors import DataError

    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--data {data}: no such folder (expected DIR/train[, val, test]/<class>/ or DIR/<class>/)")
    if (root / "train").is_dir():
        splits: dict[str, Any] = {"train": str(root / "train")}
        splits.update({"val": str(root / "val")} if (root / "val").is_dir() else {"val_split": val_split})
        if (root / "test").is_dir():
            splits["test"] = str(root / "test")
    else:
        splits = {"train": str(root), "val_split": val_split}
    return {"name": root.resolve().name, "data": splits, "backbone": {"name": backbone},
            "strategy": {"name": strategy, "options": {}}}


@dataclass
class Run:
    """A finished training run: its directory and the ``train --json`` summary.

    Attributes:
        dir: the run directory (model.pt, report.md, metrics.json, figures).
        summary: what ``edgetl train --json`` prints (val/test figures, threshold, baseline).
    """

    dir: Path
    summary: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.summary.get("name") or self.dir.name

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json``."""
        return json.loads((self.dir / "metrics.json").read_text(encoding="utf-8"))

    @property
    def report(self) -> Path:
        return self.dir / "report.md"

    def load(self) -> Model:
        """The trained model, ready to predict, evaluate and export."""
        from edgetl.workflow.model import Model

        return Model(self.dir)


def train_config(cfg: RunConfig, out: str | Path | None = None, *, device: str = "auto", resume: bool = False,
                 force: bool = False, skip_bad: bool = False, log: Log = stderr_log,
                 from_run: str | Path | None = None) -> Run | None:
    """Train a validated config into ``out`` (default ``runs/NAME``); None on a non-main DDP rank.

    The log ends with report.md's results (what ``edgetl train`` prints last).
    """
    from edgetl.host.engine import Trainer
    from edgetl.host.report import report_summary

    run_dir = Path(out) if out else Path("runs") / cfg.name
    summary = Trainer(cfg, run_dir, device=device, resume=resume, force=force, skip_bad=skip_bad, log=log,
                      from_run=from_run).run()
    if summary is None:
        return None
    log(report_summary(run_dir))  # the results (argmax and operating point side by side) end the log
    return Run(run_dir, summary)


def train(config: str | Path | dict[str, Any] | RunConfig, *, out: str | Path | None = None, device: str = "auto",
          resume: bool = False, force: bool = False, skip_bad: bool = False, log: Log | None = stderr_log,
          from_run: str | Path | None = None, **overrides: Any) -> Run | None:
    """Train a run: ``edgetl train`` from Python.

    Args:
        config: a YAML run config's path, the same document as a dict, or a RunConfig.
        out: the run directory (default ``runs/NAME``); ``force`` overwrites it, ``resume``
            continues an interrupted run there.
        device: ``auto``, ``cpu`` or ``cuda``.
        log: receives progress lines (default: stderr); None is silent.
        from_run: a trained run directory to continue (``edgetl train --from``): its
            weights and classes, new classes of the data appended (continual learning).
        **overrides: config keys to change: a section as a dict merges into it
            (``train={"epochs": 3}``), a dotted key sets one value (``**{"train.epochs": 3}``).

    Returns:
        The :class:`Run`; None only in a non-main process of a torchrun launch (rank 0 writes the run).
    """
    cfg = resolve_config(config, overrides)
    return train_config(cfg, out, device=device, resume=resume, force=force, skip_bad=skip_bad,
                        log=log or (lambda message: None), from_run=from_run)
