"""A third-party strategy driven the whole way: train -> eval -> export (gate) -> verify -> agent -> predict.

The steps go through the real command line, ``edgetl.cli.cli`` under click's
``CliRunner``, in this process: the plugin's folder on ``sys.path`` and
``EDGETL_LOAD_PLUGINS`` naming it (:func:`plugin_factory.activate`), so the
plugin is found through its entry point as an installed one is. ``train`` can
instead run as ``python -m edgetl`` in a fresh interpreter (:func:`edgetl`),
exactly as an outsider who pip-installed the plugin runs it: the one chain
where the fresh process is the point. The agent runs in a thread (it needs no
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


def invoke(*args: Any) -> tuple[int, str, str]:
    """``edgetl ARGS`` in this process: (exit code, stdout, stderr)."""
    from click.testing import CliRunner

    from edgetl.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def ok(result: subprocess.CompletedProcess | tuple[int, str, str]) -> dict[str, Any]:
    code, out, err = ((result.returncode, result.stdout, result.stderr)
                      if isinstance(result, subprocess.CompletedProcess) else result)
    assert code == 0, err[-3000:]
    return json.loads(out)


def plugin_env(site: Path, load: str) -> dict[str, str]:
    """PYTHONPATH with the plugin's folder after this checkout (so this edgetl is the one imported)."""
    paths = [str(ROOT), str(ROOT / "plugins"), str(site), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p), "EDGETL_LOAD_PLUGINS": load}


def train_to_prediction(tmp_path: Path, config: Path, data: Path,
                        fresh_train_env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run the chain; returns {summary, eval, export, verify, install, prediction}.

    The plugin must be active in this process; with ``fresh_train_env`` (see :func:`plugin_env`) ``train``
    runs in a fresh interpreter with that environment instead.
    """
    run, bundle = tmp_path / "run", tmp_path / "model.edgetl"
    train = ["train", config, "--out", run, "--device", "cpu", "--json"]
    out: dict[str, Any] = {"summary": ok(edgetl(*train, env=fresh_train_env) if fresh_train_env else invoke(*train))}
    out["eval"] = ok(invoke("eval", run, data / "val", "--json"))
    ok(invoke("keys", "generate", tmp_path / "k", "--json"))
    out["export"] = ok(invoke("export", run, "--format", "onnx", "--precision", "fp32", "--calib-count", 8,
                              "--latency-runs", 0, "--gate", 1.0, "--min-agreement", 0.98,
                              "--sign", tmp_path / "k.key", "--out", bundle, "--json"))
    out["verify"] = ok(invoke("bundle", "verify", bundle, "--trust", tmp_path / "k.pub", "--json"))
    with ThreadAgent(tmp_path / "state", [tmp_path / "k.pub"]) as agent, agent.client() as client:
        out["install"] = install(client, bundle)
        image = next((data / "val" / "defect").glob("*.png")).read_bytes()
        response = client.post("/v1/predict", content=image, headers={"Content-Type": "image/png"})
        assert response.status_code == 200, response.text
        out["prediction"] = response.json()
    return out
