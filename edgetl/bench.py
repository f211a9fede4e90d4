"""``edgetl bench``: latency, throughput, size and accuracy of runs and bundles, side by side.

Every model is measured in this one process, on this machine, under the same
thread count, its timed calls interleaved with the others' (rounds of one call
each, the order rotating), so a load that comes and goes hits every model
alike and the figures compare. A run directory
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
        threads: CPU threads every runtime gets; None = ``OMP_NUM_THREADS`` when set,
            else this process's free CPUs (:func:`edgetl.threads.free_cpus`).
        data: a labelled ImageFolder for accuracy and agreement, or None.
        interleave: time the models in rounds (one call each, order rotating) so
            a load that comes and goes hits every model alike; False times each
            model's calls in one block (the figures then depend on when the
            load came).
        progress: a callable taking one line of progress (stderr in the CLI).
    """

    batch: int = 1
    runs: int = 50
    warmup: int = 5
    threads: int | None = None
    threads_source: str | None = None  # where ``threads`` came from, when the caller chose it
    data: Path | None = None
    interleave: bool = True
    progress: Callable[[str], None] = field(default=lambda message: None)


UNSTABLE_RATIO = 1.3  # p90 / median above this: the timings say more about the machine than the model
# (PyTorch eager at 2 threads under a load of 19 gave 1.47, its p10-p90 spanning 4.5-9.8 s: unreliable)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (:mod:`edgetl.threads`)."""
    from edgetl.threads import available_cpus

    return available_cpus()


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


def threads_default(threads: int | None) -> tuple[int, str]:
    """The thread count and where it came from: ``--threads``, ``OMP_NUM_THREADS`` or the free CPUs.

    The same choice as ``predict`` and ``eval`` (:func:`edgetl.threads.inference_threads`): the CPUs
    this process may use, less those other processes keep busy.
    """
    from edgetl.threads import inference_threads

    return inference_threads(threads)


def median_ci(samples_ms: list[float], level: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: two order statistics.

    The number of samples below the true median is Binomial(n, 1/2); the
    normal approximation gives the 1-based ranks ⌊n/2 − z·√n/2⌋ and
    ⌈1 + n/2 + z·√n/2⌉ (40 and 61 for n = 100). With fewer than 6 samples it
    is the whole range.
    """
    a = np.sort(np.asarray(samples_ms, dtype=np.float64))
    n = len(a)
    z = {0.9: 1.645, 0.95: 1.96, 0.99: 2.576}[level]
    half = z * np.sqrt(n) / 2
    lo, hi = int(np.floor(n / 2 - half)) - 1, int(np.ceil(1 + n / 2 + half)) - 1
    if n < 6 or lo < 0 or hi >= n:
        return float(a[0]), float(a[-1])
    return float(a[lo]), float(a[hi])


def latency_stats(samples_ms: list[float]) -> dict[str, Any]:
    """Median (with its 95% CI), p10/p25/p75/p90/p99, mean, min, max and the raw samples (ms)."""
    a = np.asarray(samples_ms, dtype=np.float64)
    p10, p25, p50, p75, p90, p99 = (float(v) for v in np.percentile(a, [10, 25, 50, 75, 90, 99]))
    return {"median": p50, "median_ci95": list(median_ci(samples_ms)), "p10": p10, "p25": p25, "p75": p75,
            "p90": p90, "p99": p99, "mean": float(a.mean()), "min": float(a.min()), "max": float(a.max()),
            "samples": [float(v) for v in a]}


def _timed(predict: Callable[[np.ndarray], Any], batch: np.ndarray) -> float:
    start = time.perf_counter()
    predict(batch)
    return (time.perf_counter() - start) * 1000.0


def time_calls(predict: Callable[[np.ndarray], Any], batch: np.ndarray, warmup: int, runs: int) -> list[float]:
    """Milliseconds of each of ``runs`` calls of ``predict(batch)``, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        predict(batch)
    return [_timed(predict, batch) for _ in range(runs)]


def time_interleaved(predicts: list[Callable[[np.ndarray], Any]], batches: list[np.ndarray], warmup: int,
                     runs: int, progress: Callable[[str], None] = lambda message: None) -> list[list[float]]:
    """Per model, the milliseconds of ``runs`` calls timed in rounds: A B C, B C A, C A B, …

    Every round calls each model once, starting one model later than the round
    before, so a burst of load from elsewhere and the after-effects of the
    previous call (caches, spinning thread pools) fall on every model alike.
    """
    k = len(predicts)
    for _ in range(warmup):
        for predict, batch in zip(predicts, batches, strict=True):
            predict(batch)
    samples: list[list[float]] = [[] for _ in range(k)]
    step = max(1, runs // 5)
    for r in range(runs):
        for j in range(k):
            i = (r + j) % k
            samples[i].append(_timed(predicts[i], batches[i]))
        if (r + 1) % step == 0 or r + 1 == runs:
            progress(f"  timed round {r + 1}/{runs}")
    return samples


def stability_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """One sentence per model whose p90 is more than UNSTABLE_RATIO times its median."""
    out = []
    for row in rows:
        lat = row["latency_ms"]
        ratio = lat["p90"] / lat["median"] if lat["median"] > 0 else float("inf")
        row["unstable"] = bool(ratio > UNSTABLE_RATIO)
        if row["unstable"]:
            out.append(f"{row['path']}: p90 {lat['p90']:.4g} ms is {ratio:.1f}x the median {lat['median']:.4g} ms "
                       "(the machine is busy, or threads wait on each other): these timings are not reliable; "
                       "measure on an idle machine or with --threads 1")
    return out


def add_comparisons(rows: list[dict[str, Any]]) -> None:
    """Ratios against the first model; a speed-up counts only when the medians' 95% CIs do not overlap."""
    ref = rows[0]
    ref_lo, ref_hi = ref["latency_ms"]["median_ci95"]
    for row in rows:
        row["latency_ratio"] = _ratio(row["latency_ms"]["median"], ref["latency_ms"]["median"])
        row["speedup"] = _ratio(ref["latency_ms"]["median"], row["latency_ms"]["median"])
        row["size_ratio"] = _ratio(row["model_bytes"], ref["model_bytes"])
        lo, hi = row["latency_ms"]["median_ci95"]
        row["speedup_significant"] = None if row is ref else bool(hi < ref_lo or lo > ref_hi)


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
        from edgetl.data.folder import not_a_label_error

        raise not_a_label_error(data, unknown[0], labels, str(loaded.path))
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

    threads, threads_source = threads_default(options.threads)
    threads_source = options.threads_source or threads_source
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
    loaded: list[_Loaded] = []
    try:
        for path, kind in zip(paths, kinds, strict=True):
            options.progress(f"{path}: loading ({kind}, {threads} threads from {threads_source})")
            loaded.append(_Loaded(Path(path), kind, threads))
        rows = _measure(loaded, files, truth, options)
    finally:
        for model in loaded:
            model.close()
    add_comparisons(rows)
    warnings = stability_warnings(rows)
    return {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": host_facts(threads),
        "batch": options.batch, "runs": options.runs, "warmup": options.warmup, "threads": threads,
        "threads_source": threads_source, "interleaved": options.interleave,
        "data": None if options.data is None else str(options.data),
        "classes": classes,
        "reference": rows[0]["path"],
        "warnings": warnings,
        "models": rows,
    }


def _measure(loaded: list[_Loaded], files: list[Path], truth: list[str], options: BenchOptions) -> list[dict]:
    """Latency of every loaded model (interleaved or one block each), then accuracy and agreement."""
    batches = [input_batch(m.predictor.input, options.batch, files[: options.batch] or None) for m in loaded]
    predicts = [m.predictor.predict for m in loaded]
    if options.interleave:
        options.progress(f"{options.warmup} warm-up + {options.runs} timed rounds at batch {options.batch}, "
                         f"{len(loaded)} model(s) interleaved")
        samples = time_interleaved(predicts, [b for b, _ in batches], options.warmup, options.runs,
                                   options.progress)
    else:
        samples = []
        for model, predict, (batch, _) in zip(loaded, predicts, batches, strict=True):
            options.progress(f"{model.path}: {options.warmup} warm-up + {options.runs} timed calls "
                             f"at batch {options.batch}")
            samples.append(time_calls(predict, batch, options.warmup, options.runs))
    rows: list[dict[str, Any]] = []
    reference_labels: list[str] | None = None
    for model, times, (_, source) in zip(loaded, samples, batches, strict=True):
        row = _row(model, times, source, options)
        if files:
            doc, decided = _accuracy(model, files, truth, Path(options.data), options.batch, options.progress)
            reference_labels = decided if reference_labels is None else reference_labels
            agree = sum(a == b for a, b in zip(decided, reference_labels, strict=True))
            row.update(accuracy=doc["accuracy"], balanced_accuracy=doc["balanced_accuracy"],
                       agreement=agree / len(decided), n=doc["n"])
        rows.append(row)
    return rows


def _row(model: _Loaded, samples: list[float], source: str, options: BenchOptions) -> dict[str, Any]:
    return {
        "path": str(model.path), "kind": model.kind, "name": model.predictor.name,
        "format": model.format, "precision": model.precision, "method": model.method,
        "runtime": model.runtime, "threads": model.threads,
        "input": {"size": list(model.predictor.input.size), "source": source},
        "size_bytes": int(model.size_bytes), "model_bytes": int(model.model_bytes),
        "latency_ms": latency_stats(samples),
        "throughput_ips": options.batch * len(samples) / (sum(samples) / 1000.0),
        "accuracy": None, "balanced_accuracy": None, "agreement": None, "n": None,
    }
