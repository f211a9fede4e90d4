"""A bundle as a :class:`edgetl.predictor.Predictor` (no torch): ``edgetl eval|predict BUNDLE``.

Opening checks the manifest's schema and every member's hash (the signature
is the device's business: ``bundle verify --trust`` and the agent check it),
extracts the bundle safely into a private temporary folder, and loads the
model through its target plugin's device half.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import InputSpec
from edgetl.errors import SignatureNotCheckedError

MAX_BYTES = 4 << 30


class BundlePredictor:
    """``name`` (model_version), ``labels``, ``task``, ``threshold``, ``positive``, ``input``; ``predict``."""

    def __init__(self, path: str | Path, options: dict[str, Any] | None = None):
        from edgetl.bundle import extract_bundle, load_runtime, open_bundle, verify_bundle
        from edgetl.manifest import Manifest, as_manifest

        self.path = Path(path)
        try:
            verify_bundle(self.path, None)
        except SignatureNotCheckedError:
            pass  # schema and hashes passed; trust is checked where models are installed
        with open_bundle(self.path) as bundle:
            self.manifest: Manifest = as_manifest(bundle.manifest)  # validated by verify_bundle
        self._dir = Path(tempfile.mkdtemp(prefix="edgetl-bundle-"))
        try:
            extract_bundle(self.path, self._dir, MAX_BYTES)
            self.runtime = load_runtime(self._dir, self.manifest, options)
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        m = self.manifest
        self.name: str = m.model_version
        self.labels: list[str] = list(m.labels)
        self.task: str = m.task
        self.threshold: float | None = m.threshold
        self.positive: str | None = m.positive
        self.input = InputSpec.from_dict(m.input.model_dump())

    @property
    def extracted_dir(self) -> Path:
        return self._dir

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 normalised -> (N, K) probabilities (anomaly: (N,) scores)."""
        return self.runtime.predict(np.asarray(batch, dtype=np.float32))

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (anomaly models: ``output`` scores and ``map``)."""
        return self.runtime.predict_outputs(np.asarray(batch, dtype=np.float32))

    def info(self) -> dict[str, Any]:
        return {"bundle": str(self.path), "model_version": self.name, **self.runtime.info()}

    def close(self) -> None:
        try:
            self.runtime.close()
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "BundlePredictor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # best effort: a forgotten predictor still removes its folder
        shutil.rmtree(getattr(self, "_dir", ""), ignore_errors=True) if getattr(self, "_dir", None) else None
