"""The Python API's training and prediction half: ``edgetl.train`` and ``edgetl.load``.

The command line calls these same functions (``edgetl train|eval|predict``),
so a script and a terminal get one implementation. Importing this module
imports no ML framework: a run's model loads on first use, inside the call
that needs it. See docs/python.md.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.config import RunConfig
    from edgetl.delivery import Bundle
    from edgetl.prediction import Prediction

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
        return Model(self.dir)


def train_config(cfg: RunConfig, out: str | Path | None = None, *, device: str = "auto", resume: bool = False,
                 force: bool = False, skip_bad: bool = False, log: Log = stderr_log) -> Run | None:
    """Train a validated config into ``out`` (default ``runs/NAME``); None on a non-main DDP rank.

    The log ends with report.md's results (what ``edgetl train`` prints last).
    """
    from edgetl.host.engine import Trainer
    from edgetl.host.report import report_summary

    run_dir = Path(out) if out else Path("runs") / cfg.name
    summary = Trainer(cfg, run_dir, device=device, resume=resume, force=force, skip_bad=skip_bad, log=log).run()
    if summary is None:
        return None
    log(report_summary(run_dir))  # the results (argmax and operating point side by side) end the log
    return Run(run_dir, summary)


def train(config: str | Path | dict[str, Any] | RunConfig, *, out: str | Path | None = None, device: str = "auto",
          resume: bool = False, force: bool = False, skip_bad: bool = False, log: Log | None = stderr_log,
          **overrides: Any) -> Run | None:
    """Train a run: ``edgetl train`` from Python.

    Args:
        config: a YAML run config's path, the same document as a dict, or a RunConfig.
        out: the run directory (default ``runs/NAME``); ``force`` overwrites it, ``resume``
            continues an interrupted run there.
        device: ``auto``, ``cpu`` or ``cuda``.
        log: receives progress lines (default: stderr); None is silent.
        **overrides: config keys to change: a section as a dict merges into it
            (``train={"epochs": 3}``), a dotted key sets one value (``**{"train.epochs": 3}``).

    Returns:
        The :class:`Run`; None only in a non-main process of a torchrun launch (rank 0 writes the run).
    """
    cfg = resolve_config(config, overrides)
    return train_config(cfg, out, device=device, resume=resume, force=force, skip_bad=skip_bad,
                        log=log or (lambda message: None))


def load(path: str | Path) -> Model:
    """A run directory or a bundle file, as a :class:`Model` (nothing is loaded until first use)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such run directory or bundle file")
    if path.is_dir() and not (path / "model.pt").is_file():
        raise DataError(f"{path}: not a run directory (no model.pt); train one with 'edgetl train'")
    return Model(path)


class Model:
    """A trained model from a run directory (torch) or a bundle (its target's runtime, no torch).

    Attributes:
        path: the run directory or bundle file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._predictor: Any = None

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r})"

    @property
    def predictor(self) -> Any:
        """The loaded :class:`edgetl.predictor.Predictor` (loaded on first use)."""
        if self._predictor is None:
            from edgetl.predictor import open_predictor

            self._predictor = open_predictor(self.path)
        return self._predictor

    @property
    def is_bundle(self) -> bool:
        return self.path.is_file()

    name = property(lambda self: self.predictor.name, doc="run name or bundle model_version")
    labels = property(lambda self: list(self.predictor.labels), doc="class names, output order")
    task = property(lambda self: self.predictor.task, doc="classify or anomaly")
    threshold = property(lambda self: self.predictor.threshold, doc="stored operating point, or None")
    positive = property(lambda self: self.predictor.positive, doc="class the threshold applies to")

    def stream(self, sources: Any, *, save: str | Path | None = None, maps: bool = True) -> Iterator[Prediction]:
        """Predict lazily, one image or frame at a time (what ``edgetl predict`` prints as it goes).

        Args:
            sources: an image path, folder, glob, video file, camera index, stream URL, an (H, W, 3)
                uint8 BGR array, or a list of these (see :mod:`edgetl.inputs`).
            save: a folder for annotated copies: images under their (relative) names, a video
                source as an annotated ``.mp4`` (see :func:`edgetl.annotate.annotate`).
            maps: for anomaly models whose runtime gives a map: attach it to each prediction.
        """
        from edgetl.annotate import AnnotatedWriter
        from edgetl.inputs import iter_items
        from edgetl.prediction import from_document
        from edgetl.predictor import predict_document

        predictor = self.predictor
        maps_of = _MapReader.wrap(predictor) if (maps or save) else None
        writer = AnnotatedWriter(save) if save is not None else None
        try:
            for item in iter_items(sources):
                doc = predict_document(maps_of or predictor, item.image)
                amap = maps_of.last_map() if maps_of is not None else None
                result = from_document(doc, predictor.positive, item.source, item.frame, amap)
                if writer is not None:
                    writer.write(item, result)
                yield result
        finally:
            if writer is not None:
                writer.close()

    def predict(self, sources: Any, *, save: str | Path | None = None, maps: bool = True) -> list[Prediction]:
        """Predict every image/frame of ``sources`` (see :meth:`stream`); one Prediction each, in order."""
        return list(self.stream(sources, save=save, maps=maps))

    def evaluate(self, folder: str | Path, *, batch: int = 32, skip_bad: bool = False,
                 log: Log | None = None) -> dict[str, Any]:
        """Evaluate on a labelled folder (one sub-folder per class) under the stored operating point.

        Returns:
            The ``eval --json`` document (docs/schemas/eval.schema.json): accuracy, balanced accuracy,
            per class, confusion matrix, ROC AUC, threshold, recall at it, false-reject rate, n.
        """
        from edgetl.data.folder import check_images, load_split
        from edgetl.metrics import evaluate
        from edgetl.predictor import predict_files

        log = log or (lambda message: None)
        predictor = self.predictor
        samples = load_split(Path(folder))
        unknown = [c for c in samples.classes if c not in predictor.labels]
        if unknown:
            raise DataError(f"{folder}: class folder '{unknown[0]}' is not a label of the model "
                            f"{list(predictor.labels)}")
        samples = check_images(samples, skip_bad=skip_bad)
        for path in samples.skipped:
            log(f"skipped unreadable image: {path}")
        y = [predictor.labels.index(samples.classes[s.label]) for s in samples.items]
        step = max(1, len(samples) // 10)

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                log(f"  {done}/{total} images")

        probs = predict_files(predictor, [s.path for s in samples.items], batch_size=batch, progress=progress)
        return evaluate(y, probs, predictor.labels, predictor.threshold, predictor.positive)

    def export(self, format: str, *, precision: str = "auto", sign: Any = None, target: str | Path | None = None,
               out: str | Path | None = None, log: Log | None = stderr_log, **options: Any) -> Bundle:
        """Export this run through the accuracy gate into a (signed) bundle: ``edgetl export``.

        Args:
            format: a target plugin (``onnx``, ``openvino``, ``tensorrt``, …).
            precision: ``auto`` (walk the chain), ``fp32``, ``fp16`` or ``int8``.
            sign: the private key (``NAME.key``) to sign with; None leaves the bundle unsigned.
            target: a device profile (``targets/X.yaml``).
            out: the bundle's path (default ``<run name>-<format>.edgetl``).
            **options: any other field of :class:`edgetl.host.export.ExportOptions` (``gate``,
                ``fallback``, ``calib_count``, ``latency_runs``, …).
        """
        from edgetl.delivery import export_bundle

        if self.is_bundle:
            raise UsageError(f"{self.path}: already a bundle; export the run directory it came from")
        return export_bundle(self.path, format=format, precision=precision, sign=sign, target=target, out=out,
                             log=log, **options)

    def close(self) -> None:
        """Release the runtime (a bundle's extracted files); the Model reloads on next use."""
        if self._predictor is not None and hasattr(self._predictor, "close"):
            self._predictor.close()
        self._predictor = None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class _MapReader:
    """A predictor that also keeps the anomaly map of the image it last scored.

    The map contract (docs/python.md): the predictor (or a bundle's runtime)
    has ``predict_outputs(batch) -> {"output": scores, "map": (N, 1, h, w)}``,
    maps normalised so 0.5 is the threshold; then one inference gives both.
    An older ``predict_map(batch) -> (N, 1, h, w)`` is called on its own.
    """

    def __init__(self, predictor: Any, outputs: Callable[[Any], Any] | None, map_fn: Callable[[Any], Any] | None):
        self.inner, self._outputs, self._map_fn, self._map = predictor, outputs, map_fn, None
        for name in ("name", "labels", "task", "threshold", "positive", "input"):
            setattr(self, name, getattr(predictor, name))

    @classmethod
    def wrap(cls, predictor: Any) -> _MapReader | None:
        """The reader for an anomaly predictor that gives maps; None for any other."""
        if predictor.task != "anomaly":
            return None
        runtime = getattr(predictor, "runtime", None)
        outputs = getattr(predictor, "predict_outputs", None)
        map_fn = getattr(predictor, "predict_map", None) or getattr(runtime, "predict_map", None)
        return cls(predictor, outputs, map_fn) if (outputs or map_fn) else None

    def predict(self, batch: Any) -> Any:
        if self._outputs is None:
            self._map = self._map_fn(batch)
            return self.inner.predict(batch)
        outs = self._outputs(batch)
        self._map = outs.get("map")
        return outs["output"]

    def last_map(self) -> Any:
        """(h, w) float32 map of the first tile scored last, or None when the model gave none."""
        import numpy as np

        if self._map is None:
            return None
        return np.asarray(self._map, dtype=np.float32)[0].squeeze()
