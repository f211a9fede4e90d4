"""The model an agent serves: an installed bundle's runtime behind the Predictor protocol.

It satisfies :class:`edgetl.predictor.Predictor`, so the agent's answers come
from the same :func:`edgetl.predictor.predict_document` as ``edgetl predict``
(same threshold rule, same tile aggregation).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.api import InputSpec
from edgetl.device.state import read_manifest
from edgetl.manifest import Manifest, as_manifest


@dataclass
class DeviceModel:
    """One loaded model.

    Attributes:
        install_id: the install that put it on this device (its folder under models/).
        manifest: the bundle's validated manifest (a dict given here is validated once).
        runtime: the target's :class:`edgetl.api.Runtime`.
        threshold: the operating point in force (the manifest's, or one set by PATCH).
    """

    install_id: str
    manifest: Manifest
    runtime: Any
    threshold: float | None = None
    input: InputSpec = field(init=False)
    _lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)
    _leases: int = field(init=False, repr=False, default=0)
    _retired: bool = field(init=False, repr=False, default=False)
    _closed: bool = field(init=False, repr=False, default=False)
    _count_lock: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.manifest = as_manifest(self.manifest)
        self.input = InputSpec.from_dict(self.manifest.input.model_dump())
        if self.threshold is None:
            self.threshold = self.manifest.threshold

    @property
    def name(self) -> str:
        return self.manifest.model_version

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.labels)

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def positive(self) -> str | None:
        return self.manifest.positive

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 normalised -> the runtime's output (N, K), or (N,) anomaly scores.

        One inference at a time: the runtimes already spread one run over every core, and
        concurrent runs from the server's threads only oversubscribe them (measured: twice the
        throughput and a quarter of the p99 with 30 concurrent clients). Decoding and
        preprocessing still run in parallel.
        """
        with self._lock:
            return self.runtime.predict(batch)

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (anomaly models add ``map``), under the same one-at-a-time lock."""
        with self._lock:
            return self.runtime.predict_outputs(batch)

    def close(self) -> None:
        """Close the runtime now (once), whatever uses it: for a model no request can hold."""
        with self._count_lock:
            if self._closed:
                return
            self._closed = True
        self.runtime.close()

    # -- leases: a replaced model is closed after its last in-flight request ---------------
    def acquire(self) -> None:
        """One more request uses this model (the agent takes it under the lock of its swap)."""
        with self._count_lock:
            self._leases += 1

    def release(self) -> None:
        """A request is done with this model; the last one out closes a retired model."""
        with self._count_lock:
            self._leases -= 1
            last = self._retired and self._leases == 0
        if last:
            self.close()

    def retire(self) -> None:
        """This model no longer serves: close it now if no request holds it, else after the last one."""
        with self._count_lock:
            self._retired = True
            idle = self._leases == 0
        if idle:
            self.close()

    @classmethod
    def load(cls, install_id: str, folder: Path, engines_dir: Path | None = None,
             threshold: float | None = None, progress: Any = None,
             manifest: Manifest | None = None) -> "DeviceModel":
        """Load an extracted bundle from ``folder`` (its manifest.json and model files).

        Args:
            manifest: the folder's manifest when the caller has validated it already (an
                install); otherwise ``folder/manifest.json`` is read and validated here.
            progress: ``progress(phase, done, total)``, called by targets with a long load
                (a TensorRT engine build) so the install status can show it.
        """
        from edgetl.bundle import load_runtime

        if manifest is None:
            manifest = read_manifest(folder)
        options: dict[str, Any] = {}
        if engines_dir is not None:  # TensorRT keeps its engines here, keyed by (GPU, TensorRT, bundle)
            options["engine_cache"] = str(engines_dir)
        if progress is not None:
            options["progress"] = progress
        runtime = load_runtime(folder, manifest, options)
        return cls(install_id=install_id, manifest=manifest, runtime=runtime, threshold=threshold)

