"""The ``tensorboard`` logger's run: scalars, hyperparameters, figures and export results as events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgetl.api import LoggerRun
from edgetl.errors import ConfigError

HPARAM_TYPES = (int, float, str, bool)


class TensorBoardRun(LoggerRun):
    """One ``SummaryWriter`` on ``options.log_dir`` (default ``RUN/tensorboard``)."""

    def __init__(self, writer: Any):
        self.writer = writer

    @classmethod
    def open(cls, run_name: str, params: dict[str, Any], run_dir: Path, options: dict[str, Any]
             ) -> "TensorBoardRun":
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        unknown = set(options) - {"log_dir"}
        if unknown:
            raise ConfigError(f"loggers: tensorboard: unknown option(s) {', '.join(sorted(unknown))} "
                              "(known: log_dir)")
        run = cls(SummaryWriter(log_dir=str(options.get("log_dir") or Path(run_dir) / "tensorboard")))
        if params:
            clean = {k: v for k, v in params.items() if isinstance(v, HPARAM_TYPES)}
            for summary in hparams(clean, {}):  # the HParams dashboard's session start
                run.writer.file_writer.add_summary(summary)
            table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
            run.writer.add_text("config", f"| key | value |\n|---|---|\n{table}")
        run.writer.add_text("run", run_name)
        return run

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_figure(self, name: str, path: Path) -> None:
        import cv2

        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            self.writer.add_image(f"figures/{name}", image[:, :, ::-1].copy(), dataformats="HWC")

    def log_artifacts(self, path: Path) -> None:
        self.writer.add_text("run_dir", str(Path(path).resolve()))

    def log_export(self, result: dict[str, Any]) -> None:
        where = f"export/{result.get('target')}-{result.get('precision')}"
        for key in ("size_bytes",):
            if isinstance(result.get(key), (int, float)):
                self.writer.add_scalar(f"{where}/{key}", result[key])
        chosen = next((a for a in result.get("attempts", []) if a.get("passed")), {})
        for key, value in chosen.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{where}/{key}", value)
        self.writer.add_text("export", "```json\n" + json.dumps(result, indent=1, default=str) + "\n```")

    def finish(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()
