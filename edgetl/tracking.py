"""Experiment tracking: fan one run's events out to the loggers its config names.

The training engine and ``edgetl export`` each make one :class:`Tracking` and
call it at a few points (start, each history row, end, export result); the
``edgetl_loggers`` plugins do the rest. A logger that cannot start (missing
library, bad option) stops the run before any training, with the reason; one
that fails later is reported once on the log and dropped, so a tracking hiccup
never costs a trained model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgetl.api import Logger, LoggerRun
from edgetl.errors import ConfigError, EdgetlError, MissingDependencyError


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 0.1}}`` -> ``{"train.lr": 0.1}``; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return flat


def _entries(config: Any) -> list[tuple[str, dict[str, Any]]]:
    """The ``loggers`` of a run config (the model, or the dict saved in the run): (name, options) pairs."""
    raw = config.get("loggers") if isinstance(config, dict) else [
        item.model_dump() for item in getattr(config, "loggers", [])]
    pairs = []
    for item in raw or []:
        item = {"name": item} if isinstance(item, str) else item
        pairs.append((item["name"], dict(item.get("options") or {})))
    return pairs


def check_loggers(config: Any) -> list[tuple[Logger, dict[str, Any]]]:
    """The configured loggers, each known and with its library installed, else a one-line error.

    Call it before anything is written: a run that cannot be tracked as asked does not start.
    """
    from edgetl.plugins import get_manager

    found = []
    for name, options in _entries(config):
        logger = get_manager().get("logger", name)
        missing = logger.missing_modules()
        if missing:
            raise MissingDependencyError(missing[0], logger.extra, f"logger '{name}'")
        found.append((logger, options))
    return found


def _open(config: Any, opener: Callable[[Any, dict[str, Any]], LoggerRun]) -> list[tuple[str, LoggerRun]]:
    runs = []
    for logger, options in check_loggers(config):
        name = logger.name
        try:
            runs.append((name, opener(logger, options)))
        except EdgetlError:
            raise
        except Exception as exc:
            raise ConfigError(f"loggers: {name} could not start: {type(exc).__name__}: {exc}") from exc
    return runs


class Tracking:
    """The open :class:`edgetl.api.LoggerRun` of each configured logger, called together."""

    def __init__(self, runs: Iterable[tuple[str, LoggerRun]] = (), log: Callable[[str], None] = print):
        self.runs = dict(runs)
        self.log = log
        self.finished = False

    @classmethod
    def start(cls, cfg: Any, run_dir: Path, log: Callable[[str], None] = print, enabled: bool = True,
              resume: bool = False) -> "Tracking":
        """Start every logger in ``cfg.loggers`` for a training run (``enabled`` False: track nothing).

        With ``resume`` (``train --resume``) each logger continues the run it began for ``run_dir``.
        """
        if not enabled:
            return cls((), log)
        params = flatten(cfg.model_dump(mode="json", by_alias=True, exclude={"loggers"}))
        runs = _open(cfg, lambda logger, options: logger.resume(Path(run_dir), options) if resume
                     else logger.start(cfg.name, params, Path(run_dir), options))
        if runs:
            log(f"tracking with {', '.join(name for name, _ in runs)}")
        return cls(runs, log)

    @classmethod
    def resume(cls, config: Any, run_dir: Path, log: Callable[[str], None] = print) -> "Tracking":
        """Reopen the loggers of a finished run (``config`` as saved in the run directory)."""
        return cls(_open(config, lambda logger, options: logger.resume(Path(run_dir), options)), log)

    def _each(self, what: str, call: Callable[[LoggerRun], None]) -> None:
        for name, run in list(self.runs.items()):
            try:
                call(run)
            except Exception as exc:  # tracking must never cost the run: report once, drop the logger
                self.log(f"warning: logger {name} failed in {what} and is switched off: "
                         f"{type(exc).__name__}: {exc}")
                del self.runs[name]

    def metrics(self, row: dict[str, Any], tag: str | None = None) -> None:
        """One history row: its numeric values at step ``row['epoch']`` (a baseline's under ``tag/``)."""
        prefix = f"{tag}/" if tag else ""
        values = {f"{prefix}{k}": float(v) for k, v in row.items()
                  if isinstance(v, (int, float)) and k != "epoch"}
        step = int(row.get("epoch", 0))
        self._each("log_metrics", lambda run: run.log_metrics(step, values))

    def finish(self, run_dir: Path | None, status: str = "finished") -> None:
        """Figures (``*.png``) and the run directory as artifacts, then end every run with ``status``."""
        if self.finished:
            return
        self.finished = True
        if run_dir is not None and status == "finished":
            for png in sorted(Path(run_dir).glob("*.png")):
                self._each("log_figure", lambda run, png=png: run.log_figure(png.stem, png))
            self._each("log_artifacts", lambda run: run.log_artifacts(Path(run_dir)))
        self._each("finish", lambda run: run.finish(status))

    def close(self) -> None:
        """End a run that did not reach :meth:`finish` as ``failed``."""
        self.finish(None, "failed")

    def export(self, result: dict[str, Any]) -> None:
        """One export of this run (the ``export --json`` document), then close the reopened runs."""
        self._each("log_export", lambda run: run.log_export(result))
        self.finish(None, "finished")


def track_export(run_dir: Path, config: Any, result: dict[str, Any],
                 log: Callable[[str], None] = print) -> None:
    """Give an export's result to the loggers the run was trained with (none configured: nothing)."""
    if not _entries(config):
        return
    try:
        tracking = Tracking.resume(config, run_dir, log)
    except EdgetlError as exc:  # the bundle is written: a tracker that cannot reopen is a warning
        log(f"warning: export not tracked: {exc}")
        return
    tracking.export(result)
