"""``edgetl.load``: a run directory or a bundle as a :class:`Model` that predicts, evaluates and exports.

``edgetl eval`` and ``edgetl predict`` call these same methods. Importing this
module imports no ML framework: a run's model (torch) or a bundle's runtime
loads on first use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgetl.errors import DataError, UsageError
from edgetl.workflow.training import Log, stderr_log

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.prediction import Prediction
    from edgetl.workflow.bundle import Bundle


def load(path: str | Path, *, threads: int | None = None) -> Model:
    """A run directory or a bundle file, as a :class:`Model` (nothing is loaded until first use).

    Args:
        threads: CPU threads for its runtime (``torch.set_num_threads`` for a run, the
            runtime's ``threads`` option for a bundle); None keeps the runtime's own choice.
            :func:`edgetl.threads.configure` picks one from the free CPUs.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such run directory or bundle file")
    if path.is_dir():
        from edgetl.host.run import MODEL_FILE  # the constant only: no torch until the model is used

        if not (path / MODEL_FILE).is_file():
            raise DataError(f"{path}: not a run directory (no {MODEL_FILE}); train one with 'edgetl train'")
    return Model(path, threads=threads)


class Model:
    """A trained model from a run directory (torch) or a bundle (its target's runtime, no torch).

    Attributes:
        path: the run directory or bundle file.
    """

    def __init__(self, path: str | Path, *, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads
        self._predictor: Any = None

    def __repr__(self) -> str:
        return f"Model({str(self.path)!r})"

    @property
    def predictor(self) -> Any:
        """The loaded :class:`edgetl.predictor.Predictor` (loaded on first use)."""
        if self._predictor is None:
            if self.threads is not None and self.is_bundle:
                from edgetl.bundle_predictor import BundlePredictor

                self._predictor = BundlePredictor(self.path, {"threads": self.threads})
                return self._predictor
            if self.threads is not None:
                import torch  # a run is PyTorch eager: the thread count is torch's

                torch.set_num_threads(self.threads)
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
                 log: Log | None = None, slices: Any = ()) -> dict[str, Any]:
        """Evaluate on a labelled folder (one sub-folder per class) under the stored operating point.

        Args:
            slices: :class:`edgetl.config.SliceConfig` items; when given, the document gains
                ``slices`` (per-slice metrics with Wilson intervals, docs/training.md).

        Returns:
            The ``eval --json`` document (docs/schemas/eval.schema.json): accuracy, balanced accuracy,
            per class, confusion matrix, ROC AUC, threshold, recall at it, false-reject rate, n.
            For an anomaly model: image AUROC, F1, pixel AUROC and PRO where ``masks/`` exist
            (docs/schemas/eval-anomaly.schema.json, docs/anomaly.md).
        """
        from edgetl.data.folder import check_images, load_split, not_a_label_error
        from edgetl.metrics import evaluate
        from edgetl.predictor import predict_files

        log = log or (lambda message: None)
        predictor = self.predictor
        if predictor.task == "anomaly":
            from edgetl.anomaly_metrics import evaluate_anomaly

            return evaluate_anomaly(predictor, folder, batch_size=batch,
                                    progress=lambda done, total: log(f"  {done}/{total} images"))
        samples = load_split(Path(folder))
        unknown = [c for c in samples.classes if c not in predictor.labels]
        if unknown:
            raise not_a_label_error(folder, unknown[0], list(predictor.labels))
        samples = check_images(samples, skip_bad=skip_bad)
        for path in samples.skipped:
            log(f"skipped unreadable image: {path}")
        y = [predictor.labels.index(samples.classes[s.label]) for s in samples.items]
        step = max(1, len(samples) // 10)

        def progress(done: int, total: int) -> None:
            if done % step == 0 or done == total:
                log(f"  {done}/{total} images")

        paths = [s.path for s in samples.items]
        probs = predict_files(predictor, paths, batch_size=batch, progress=progress)
        doc = evaluate(y, probs, predictor.labels, predictor.threshold, predictor.positive)
        if slices:
            from edgetl.slices import slice_report

            doc["slices"] = slice_report(slices, y, probs, predictor.labels, paths,
                                         predictor.threshold, predictor.positive)
        return doc

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
        from edgetl.workflow.bundle import export_bundle

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
