"""``edgetl bench``: latency, throughput, size and accuracy of runs and bundles, side by side.

Every model is measured in this one process, on this machine, one after the
other, under the same thread count, so the figures compare. A run directory
runs in PyTorch eager through its predictor (torch is imported only then); a
bundle runs in its own runtime through :class:`edgetl.bundle_predictor.BundlePredictor`.
This module imports no ML framework, so a bundle-only bench runs on a device.

Latency is the wall-clock time of one ``predict`` call on a batch of N model
inputs (``(N, 3, H, W)`` float32, already preprocessed: preprocessing is not
in it), after a warm-up, over a fixed number of calls. The input is the first
N preprocessed inputs of ``--data`` when given (THE preprocessing, tiles
included), else seeded standard-normal noise of the model's input size.

Accuracy, balanced accuracy and top-1 agreement use the same code as
``edgetl eval`` (:func:`edgetl.predictor.predict_files`, :func:`edgetl.metrics.evaluate`)
under each model's stored operating point. Agreement is the fraction of images
on which a model's decided label equals the first model's (the reference).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import DataError

SCHEMA_VERSION = 1
RUN_MODEL_FILE = "model.pt"  # edgetl.host.run.MODEL_FILE; repeated here so this module stays torch-free


@dataclass
class BenchOptions:
    """What to measure and how.

    Attributes:
        batch: model inputs per ``predict`` call (N).
        runs: timed calls per model (median / p90 / p99 are over these).
        warmup: untimed calls before them (allocator, kernel selection, caches).
        threads: CPU threads every runtime gets; None = this process's usable CPUs.
        data: a labelled ImageFolder for accuracy and agreement, or None.
        progress: a callable taking one line of progress (stderr in the CLI).
    """

    batch: int = 1
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    data: Path | None = None
    progress: Callable[[str], None] = field(default=lambda message: None)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def model_kind(path: str | Path) -> str:
    """``run`` for a run directory, ``bundle`` for a bundle file; anything else is a one-line error.

    Checked for every path before any model loads, so a typo fails in a second.
    """
    path = Path(path)
    if path.is_dir():
        if (path / RUN_MODEL_FILE).is_file():
            return "run"
        raise DataError(f"{path}: neither a run directory (no {RUN_MODEL_FILE}) nor a bundle file")
    if path.is_file():
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                if "manifest.json" in zf.namelist():
                    return "bundle"
        raise DataError(f"{path}: neither a run directory nor an edgetl bundle (no manifest.json in a zip)")
    raise DataError(f"{path}: no such run directory or bundle file")


def latency_stats(samples_ms: list[float]) -> dict[str, Any]:
    """Median, p90, p99, mean, min, max and the raw samples of per-call latencies (ms)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    return {"median": p50, "p90": p90, "p99": p99, "mean": float(a.mean()), "min": float(a.min()),
            "max": float(a.max()), "samples": [float(v) for v in a]}


def time_calls(predict: Callable[[np.ndarray], Any], batch: np.ndarray, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``predict(batch)``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        predict(batch)
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        predict(batch)
        samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def input_batch(spec: Any, n: int, files: list[Path] | None) -> tuple[np.ndarray, str]:
    """(N, 3, H, W) float32 for the latency runs, and where it came from (``data`` or ``noise``)."""
    if files:
        from edgetl.preprocess import preprocess_file

        tiles: list[np.ndarray] = []
        for path in files:
            tiles.extend(preprocess_file(path, spec))
            if len(tiles) >= n:
                break
        while len(tiles) < n:  # fewer images than the batch: repeat them
            tiles.extend(tiles[: n - len(tiles)])
        return np.ascontiguousarray(np.stack(tiles[:n]), dtype=np.float32), "data"
    height, width = spec.size
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 3, height, width), dtype=np.float32), "noise"


class _Loaded:
    """A predictor and the facts about it that need its kind (and torch only for a run)."""

    def __init__(self, path: Path, kind: str, threads: int):
        from edgetl.predictor import open_predictor

        self.path, self.kind = path, kind
        if kind == "run":
            import torch  # a run is PyTorch eager: the thread count is torch's

            torch.set_num_threads(threads)
            self.predictor = open_predictor(path)
            self.format, self.precision, self.method = "pytorch", "fp32", "eager"
            self.runtime = {"runtime": "pytorch", "version": torch.__version__, "device": "cpu",
                            "threads": torch.get_num_threads()}
            self.threads: int | None = torch.get_num_threads()
            self.size_bytes = self.model_bytes = (path / RUN_MODEL_FILE).stat().st_size
        else:
            from edgetl.bundle_predictor import BundlePredictor

            self.predictor = BundlePredictor(path, {"threads": threads})
            target = self.predictor.manifest.target
            self.format, self.precision, self.method = target.format, target.precision, target.method
            self.runtime = dict(self.predictor.runtime.info())
            # TensorRT runs on the GPU: a CPU thread count would mean nothing there
            self.threads = threads if self.runtime.get("runtime") in ("onnxruntime", "openvino") else None
            self.size_bytes = path.stat().st_size
            root = self.predictor.extracted_dir
            # the files the runtime loads (model/…), without the reference set and manifest
            self.model_bytes = sum((root / name).stat().st_size for name in target.files
                                   if (root / name).is_file())

    def close(self) -> None:
        close = getattr(self.predictor, "close", None)
        if close is not None:
            close()


def _load_data(data: Path) -> tuple[list[Path], list[str], list[str]]:
    """Image paths, their true class names and the class list of a labelled folder (all readable)."""
    from edgetl.data.folder import check_images, load_split

    samples = check_images(load_split(data), skip_bad=False)
    return ([s.path for s in samples.items], [samples.classes[s.label] for s in samples.items],
            list(samples.classes))


def _accuracy(loaded: _Loaded, files: list[Path], truth: list[str], data: Path, batch: int,
              progress: Callable[[str], None]) -> tuple[dict[str, Any], list[str]]:
    """The eval document of one model on the data, and its decided label per image."""
    from edgetl.metrics import decide, evaluate
    from edgetl.predictor import predict_files

    p = loaded.predictor
    labels = list(p.labels)
    unknown = sorted(set(truth) - set(labels))
    if unknown:
        raise DataError(f"{data}: class folder '{unknown[0]}' is not a label of {loaded.path} {labels}")
    step = max(1, len(files) // 4)

    def tick(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            progress(f"  accuracy: {done}/{total} images")

    probs = predict_files(p, files, batch_size=max(batch, 1), progress=tick)
    doc = evaluate([labels.index(t) for t in truth], probs, labels, p.threshold, p.positive)
    decided = [labels[i] for i in decide(probs, labels, p.threshold, p.positive)]
    return doc, decided


def _ratio(a: float | None, b: float | None) -> float | None:
    return float(a / b) if a is not None and b else None


def host_facts(threads: int) -> dict[str, Any]:
    """Where the figures were measured: they hold for this machine only."""
    return {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
            "system": platform.system(), "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "usable_cpus": usable_cpus(), "threads": threads}


def run_bench(paths: list[str | Path], options: BenchOptions) -> dict[str, Any]:
    """Measure every model and return the bench document (docs/schemas/bench.schema.json).

    Raises:
        DataError: a path that is neither a run directory nor a bundle, bad
            data, or a data class the model does not know.
        UsageError: batch, runs or warm-up out of range.
    """
    from edgetl.errors import UsageError

    threads = usable_cpus() if options.threads is None else options.threads
    for flag, value, least in (("--batch", options.batch, 1), ("--runs", options.runs, 1),
                               ("--warmup", options.warmup, 0), ("--threads", threads, 1)):
        if value < least:
            raise UsageError(f"{flag} {value}: expected {least} or more")
    if not paths:
        raise UsageError("give at least one RUN_DIR or BUNDLE")
    kinds = [model_kind(p) for p in paths]  # every path checked before anything loads
    files: list[Path] = []
    truth: list[str] = []
    classes: list[str] | None = None
    if options.data is not None:
        files, truth, classes = _load_data(Path(options.data))
        options.progress(f"data: {len(files)} images of {len(classes)} classes in {options.data}")
    rows: list[dict[str, Any]] = []
    reference_labels: list[str] | None = None
    for path, kind in zip(paths, kinds, strict=True):
        path = Path(path)
        options.progress(f"{path}: loading ({kind})")
        loaded = _Loaded(path, kind, threads)
        try:
            batch, source = input_batch(loaded.predictor.input, options.batch, files[: options.batch] or None)
            options.progress(f"{path}: {options.warmup} warm-up + {options.runs} timed calls at batch {options.batch}")
            samples = time_calls(loaded.predictor.predict, batch, options.warmup, options.runs)
            stats = latency_stats(samples)
            row: dict[str, Any] = {
                "path": str(path), "kind": kind, "name": loaded.predictor.name,
                "format": loaded.format, "precision": loaded.precision, "method": loaded.method,
                "runtime": loaded.runtime, "threads": loaded.threads,
                "input": {"size": list(loaded.predictor.input.size), "source": source},
                "size_bytes": int(loaded.size_bytes), "model_bytes": int(loaded.model_bytes),
                "latency_ms": stats,
                "throughput_ips": options.batch * options.runs / (sum(samples) / 1000.0),
                "accuracy": None, "balanced_accuracy": None, "agreement": None, "n": None,
            }
            if files:
                doc, decided = _accuracy(loaded, files, truth, Path(options.data), options.batch,
                                         options.progress)
                if reference_labels is None:
                    reference_labels = decided
                agree = sum(a == b for a, b in zip(decided, reference_labels, strict=True))
                row.update(accuracy=doc["accuracy"], balanced_accuracy=doc["balanced_accuracy"],
                           agreement=agree / len(decided), n=doc["n"])
        finally:
            loaded.close()
        rows.append(row)
    ref = rows[0]
    for row in rows:
        row["latency_ratio"] = _ratio(row["latency_ms"]["median"], ref["latency_ms"]["median"])
        row["speedup"] = _ratio(ref["latency_ms"]["median"], row["latency_ms"]["median"])
        row["size_ratio"] = _ratio(row["model_bytes"], ref["model_bytes"])
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": host_facts(threads),
        "batch": options.batch, "runs": options.runs, "warmup": options.warmup, "threads": threads,
        "data": None if options.data is None else str(options.data),
        "classes": classes,
        "reference": ref["path"],
        "models": rows,
    }
