"""Export a trained run through the default gate and check the real agent serves it as the host does.

Shared by the strategy tests (transfer learning, continual learning): every strategy's
run must export to ONNX and OpenVINO through the gate and answer ``/v1/predict``
with the host model's class and scores.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def export_fp32(run_dir: Path, out: Path, fmt: str = "onnx", sign: Path | None = None):
    """FP32 through the default gate (1 point, 0.98 agreement): the exported graph must be the trained model."""
    from edgetl.host.export import ExportOptions, export_run

    options = ExportOptions(format=fmt, precision="fp32", calib_count=8, out=out, latency_runs=0, sign=sign)
    return export_run(run_dir, options)


@contextmanager
def running_agent(tmp_path_factory) -> Iterator[tuple[Path, object]]:
    """(signing key, agent client): one agent in a thread (a module fixture); each test installs its bundle."""
    from agent_support import ThreadAgent

    from edgetl.keys import generate_keypair

    root = tmp_path_factory.mktemp("agent")
    key, pub = generate_keypair(root / "signer")
    with ThreadAgent(root / "state", [pub]) as running, running.client() as client:
        yield key, client


def served_like_the_host(agent, run_dir: Path, bundle_path: Path, images: list[Path]) -> None:
    """Install the bundle on the agent; /v1/predict gives the host run's class and scores for ``images``."""
    from agent_support import install

    from edgetl.workflow.model import Model

    _, client = agent
    assert install(client, bundle_path)["status"] == "installed"
    host = Model(run_dir).predict(images)
    for image, expected in zip(images, host, strict=True):
        response = client.post("/v1/predict", content=image.read_bytes(), headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        doc = response.json()
        assert doc["label"] == expected.label, image
        assert doc["scores"] == pytest.approx(expected.scores, abs=1e-4)  # the same model, not just the same class


def exports_and_serves(agent, run_dir: Path, out_dir: Path, images: list[Path]) -> None:
    """ONNX, then OpenVINO: each through the default gate, signed, installed and served like the host."""
    for fmt in ("onnx", "openvino"):
        if fmt == "openvino":
            pytest.importorskip("openvino", reason="openvino is not installed (pip install 'edgetl[openvino]')")
        result = export_fp32(run_dir, out_dir / f"{run_dir.name}-{fmt}.edgetl", fmt=fmt, sign=agent[0])
        assert result.bundle.is_file() and any(a["passed"] for a in result.attempts), fmt
        served_like_the_host(agent, run_dir, result.bundle, images)
