"""Built-in experiment trackers: ``tensorboard`` and ``mlflow``.

Both are optional extras (``edgetl[tensorboard]``, ``edgetl[mlflow]``); the
library is imported only when a run names the logger in its ``loggers``, so
this module stays light and the plugin is listed ``unavailable`` (with the
install hint) where the library is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.api import Logger, LoggerRun
from edgetl.hookspecs import hookimpl


class TensorBoardLogger(Logger):
    name = "tensorboard"
    description = "TensorBoard event files under RUN/tensorboard (option: log_dir)"
    requires = ("tensorboard", "torch")
    extra = "tensorboard"

    def start(self, run_name: str, params: dict[str, Any], run_dir: Path, options: dict[str, Any]) -> LoggerRun:
        from edgetl_builtins.loggers.tensorboard_run import TensorBoardRun

        return TensorBoardRun.open(run_name, params, run_dir, options)


class MlflowLogger(Logger):
    name = "mlflow"
    description = "an MLflow run (options: tracking_uri, default a file store RUN/mlruns; experiment)"
    requires = ("mlflow",)
    extra = "mlflow"

    def start(self, run_name: str, params: dict[str, Any], run_dir: Path, options: dict[str, Any]) -> LoggerRun:
        from edgetl_builtins.loggers.mlflow_run import MlflowRun

        return MlflowRun.create(run_name, params, run_dir, options)

    def resume(self, run_dir: Path, options: dict[str, Any]) -> LoggerRun:
        from edgetl_builtins.loggers.mlflow_run import MlflowRun

        return MlflowRun.reopen(run_dir, options) or self.start(Path(run_dir).name, {}, run_dir, options)


@hookimpl
def edgetl_loggers(register):
    register(TensorBoardLogger())
    register(MlflowLogger())
