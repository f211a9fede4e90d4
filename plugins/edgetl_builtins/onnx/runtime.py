"""Device half of the ONNX target: an ONNX Runtime session (no torch).

A model exported with a static batch is fed in chunks of that batch (the last
chunk padded), so callers may pass any N.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgetl.api import Runtime
from edgetl.errors import BundleError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from edgetl.manifest import Manifest


def run_static(run_one, batch: np.ndarray, fixed: int | None) -> np.ndarray:
    """Run ``run_one`` on ``batch`` in chunks of ``fixed`` rows (pad the last); whole batch if None."""
    return run_static_all(lambda chunk: [run_one(chunk)], batch, fixed)[0]


def run_static_all(run_one, batch: np.ndarray, fixed: int | None) -> list[np.ndarray]:
    """Like :func:`run_static` for a model with several outputs: ``run_one`` returns a list of arrays."""
    if fixed is None or len(batch) == fixed:
        return list(run_one(batch))
    parts = []
    for start in range(0, len(batch), fixed):
        chunk = batch[start:start + fixed]
        real = len(chunk)
        if real < fixed:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - real, axis=0)])
        parts.append([out[:real] for out in run_one(chunk)])
    return [np.concatenate(outs) for outs in zip(*parts, strict=True)]


class OnnxRuntimeModel(Runtime):
    """An ``onnxruntime.InferenceSession`` over the bundle's ``.onnx`` file."""

    def __init__(self, path: Path, runtime: dict[str, Any], precision: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if runtime.get("threads"):
            opts.intra_op_num_threads = int(runtime["threads"])
        available = ort.get_available_providers()
        wanted = [p for p in (runtime.get("providers") or []) if p in available]
        providers = wanted or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except Exception as exc:
            raise BundleError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.precision = precision
        self.providers = self.session.get_providers()
        self.ort_version = ort.__version__

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: batch})[0]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        return np.asarray(run_static(self._run, batch, self.fixed_batch), dtype=np.float32)

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        names = [o.name for o in self.session.get_outputs()]
        outs = run_static_all(lambda b: self.session.run(None, {self.input_name: b}), batch, self.fixed_batch)
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(names, outs, strict=True)}

    def info(self) -> dict[str, Any]:
        return {"runtime": "onnxruntime", "version": self.ort_version, "providers": self.providers,
                "precision": self.precision, "batch": self.fixed_batch or "dynamic"}


def load(files: Sequence[Path], manifest: Manifest, options: dict[str, Any] | None = None) -> Runtime:
    runtime = {**manifest.target.runtime, **(options or {})}
    onnx_files = [Path(f) for f in files if str(f).endswith(".onnx")]
    if not onnx_files:
        raise BundleError("the bundle's target files hold no .onnx model")
    return OnnxRuntimeModel(onnx_files[0], runtime, manifest.target.precision)
