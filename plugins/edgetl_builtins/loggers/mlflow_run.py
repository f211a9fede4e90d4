"""The ``mlflow`` logger's run: params, metrics, figures, the run directory and export results.

The tracking URI defaults to a file store in the run directory (``RUN/mlruns``),
which works offline with ``mlflow-skinny``. MLflow 3 refuses file stores unless
``MLFLOW_ALLOW_FILE_STORE`` is set; for a ``file:`` URI this logger sets it
(if unset), since a file store is exactly what was asked for. The run id is
kept in ``RUN/mlflow.json`` so ``edgetl export`` adds its results to the same run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from edgetl.api import LoggerRun
from edgetl.errors import ConfigError

STATE = "mlflow.json"
OPTIONS = ("tracking_uri", "experiment")
BATCH = 100  # MLflow's limit of params per log_batch call


def _client(run_dir: Path, options: dict[str, Any]) -> tuple[Any, str, Path | None]:
    """The client for ``options.tracking_uri`` (default: file store RUN/mlruns) and the store folder."""
    unknown = set(options) - set(OPTIONS)
    if unknown:
        raise ConfigError(f"loggers: mlflow: unknown option(s) {', '.join(sorted(unknown))} "
                          f"(known: {', '.join(OPTIONS)})")
    uri = str(options.get("tracking_uri") or (Path(run_dir) / "mlruns").resolve().as_uri())
    store = None
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        store = Path(uri.removeprefix("file://").removeprefix("file:")).resolve()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri), uri, store


class MlflowRun(LoggerRun):
    """One MLflow run, created by :meth:`create` or found again by :meth:`reopen`."""

    def __init__(self, client: Any, run_id: str, store: Path | None):
        self.client, self.run_id, self.store = client, run_id, store

    @classmethod
    def create(cls, run_name: str, params: dict[str, Any], run_dir: Path, options: dict[str, Any]
               ) -> "MlflowRun":
        from mlflow.entities import Param

        client, uri, store = _client(run_dir, options)
        name = options.get("experiment") or "edgetl"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        run = client.create_run(experiment_id, run_name=run_name, tags={"edgetl.run_dir": str(Path(run_dir).resolve())})
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            client.log_batch(run.info.run_id, params=items[i:i + BATCH])
        (Path(run_dir) / STATE).write_text(json.dumps({"tracking_uri": uri, "run_id": run.info.run_id}) + "\n")
        return cls(client, run.info.run_id, store)

    @classmethod
    def reopen(cls, run_dir: Path, options: dict[str, Any]) -> "MlflowRun | None":
        """The run recorded in ``RUN/mlflow.json``, or None when there is none."""
        state = Path(run_dir) / STATE
        if not state.is_file():
            return None
        saved = json.loads(state.read_text())
        client, _, store = _client(run_dir, {**options, "tracking_uri": options.get("tracking_uri")
                                             or saved["tracking_uri"]})
        return cls(client, saved["run_id"], store)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in metrics.items()])

    def log_figure(self, name: str, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), "figures")

    def log_artifacts(self, path: Path) -> None:
        """Every file of the run directory but the tracking store itself (it may live inside)."""
        for child in sorted(Path(path).iterdir()):
            if child.name == STATE or (self.store is not None and self.store.is_relative_to(child.resolve())):
                continue
            if child.is_dir():
                self.client.log_artifacts(self.run_id, str(child), f"run/{child.name}")
            else:
                self.client.log_artifact(self.run_id, str(child), "run")

    def log_export(self, result: dict[str, Any]) -> None:
        chosen = next((a for a in result.get("attempts", []) if a.get("passed")), {})
        where = f"export.{result.get('target')}.{result.get('precision')}"
        metrics = {f"{where}.{k}": float(v) for k, v in chosen.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if metrics:
            self.log_metrics(0, metrics)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.client.log_dict(self.run_id, result, f"exports/{result.get('target')}-{stamp}.json")

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if status == "finished" else "FAILED")
