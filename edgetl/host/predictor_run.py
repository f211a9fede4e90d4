"""A run directory as a :class:`edgetl.predictor.Predictor` (host side, torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgetl.host.run import load_run


class RunPredictor:
    """Wraps :func:`edgetl.host.run.load_run`: numpy (N, 3, H, W) float32 -> (N, K) probabilities."""

    def __init__(self, run_dir: str | Path, device: str = "cpu"):
        import torch

        self.run = load_run(run_dir)
        self.device = torch.device(device)
        self.model = self.run.model.to(self.device).eval()
        self.name = self.run.name
        self.labels = list(self.run.labels)
        self.task = self.run.task
        self.threshold = self.run.threshold
        self.positive = self.run.positive
        self.input = self.run.input

    def predict_outputs(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name, as the runtimes name them: ``output`` (anomaly models add ``map``)."""
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            out = self.model(x)
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        names = ["output", "map", *[f"output_{i}" for i in range(2, len(outs))]]
        return {name: o.float().cpu().numpy() for name, o in zip(names, outs, strict=False)}

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) -> the first output, as ``Runtime.predict``: (N, K) probabilities or (N,) anomaly scores."""
        return self.predict_outputs(batch)["output"]
