"""A third-party strategy driven the whole way: train -> eval -> export (gate) -> verify -> agent -> predict.

Each ``edgetl`` step runs in a fresh interpreter with the plugin's folder on
``PYTHONPATH`` and ``EDGETL_LOAD_PLUGINS`` naming it, exactly as an outsider
who pip-installed it would run them; the agent runs in a thread (it needs no
strategy plugin: bundles are self-contained).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from agent_support import ThreadAgent, install

ROOT = Path(__file__).resolve().parents[1]


def edgetl(*args: Any, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``python -m edgetl ARGS`` with ``env`` on top of this environment (torch on one thread)."""
    full = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, "-m", "edgetl", *map(str, args)], capture_output=True, text=True,
                          env=full, cwd=ROOT, timeout=600)


def ok(result: subprocess.CompletedProcess) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def plugin_env(site: Path, load: str) -> dict[str, str]:
    """PYTHONPATH with the plugin's folder after this checkout (so this edgetl is the one imported)."""
    paths = [str(ROOT), str(ROOT / "plugins"), str(site), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p), "EDGETL_LOAD_PLUGINS": load}


def train_to_prediction(tmp_path: Path, config: Path, data: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run the chain; returns {summary, eval, export, verify, install, prediction}."""
    run, bundle = tmp_path / "run", tmp_path / "model.edgetl"
    out: dict[str, Any] = {"summary": ok(edgetl("train", config, "--out", run, "--device", "cpu", "--json", env=env))}
    out["eval"] = ok(edgetl("eval", run, data / "val", "--json", env=env))
    ok(edgetl("keys", "generate", tmp_path / "k", "--json", env=env))
    out["export"] = ok(edgetl("export", run, "--format", "onnx", "--precision", "fp32", "--calib-count", 8,
                              "--latency-runs", 0, "--gate", 1.0, "--min-agreement", 0.98,
                              "--sign", tmp_path / "k.key", "--out", bundle, "--json", env=env))
    out["verify"] = ok(edgetl("bundle", "verify", bundle, "--trust", tmp_path / "k.pub", "--json", env=env))
    with ThreadAgent(tmp_path / "state", [tmp_path / "k.pub"]) as agent, agent.client() as client:
        out["install"] = install(client, bundle)
        image = next((data / "val" / "defect").glob("*.png")).read_bytes()
        response = client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        out["prediction"] = response.json()
    return out
