"""kill -9 at every install step, then restart: the previous or the new model serves, never none.

The seed agent and the crash-during-recovery test run ``edgetl agent serve`` in subprocesses whose
torch imports are blocked (and logged), so they also prove the agent installs and predicts without
torch; there ``EDGETL_TEST_CRASH_AT=<stage>`` makes it ``os._exit(137)`` at that step, the same as a
``kill -9`` or a power cut there. The per-stage test is about the state machine (what the disk holds
after the crash and what recovery makes of it), so its agents run in this process and
``EDGETL_TEST_CRASH_AT=<stage>:freeze`` stops the install dead at the step instead.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from agent_support import (
    BLOCKED_RUNNER,
    ProcessAgent,
    ThreadAgent,
    bundles,
    install,
    serving,
    upload,
    write_token,
)
from net_helpers import wait_for

from edgetl.device import faults
from edgetl.device.install import STAGES

CRASH_POINTS = list(STAGES) + ["switched"]


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


@pytest.fixture(scope="module")
def seeded_state(tmp_path_factory, b):
    """A state dir in which a torch-blocked agent installed v1; copied for each crash test."""
    root = tmp_path_factory.mktemp("seed")
    token = write_token(root / "token")
    agent = ProcessAgent(root / "state", [b.pub], token).wait_ready()
    try:
        with agent.client() as client:
            status = install(client, b.v1)
            assert status["status"] == "installed", status
            r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["model"] == b.v1_version
    finally:
        assert agent.stop() in (0, -15)
    assert agent.blocked_imports() == [], "the agent tried to import torch/timm"
    return root / "state", token


def test_agent_installs_and_predicts_with_torch_blocked(seeded_state):
    state, _ = seeded_state
    assert (state / "current.json").exists()


def test_device_side_modules_import_with_torch_unimportable():
    code = BLOCKER_IMPORTS
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok", out.stdout


BLOCKER_IMPORTS = BLOCKED_RUNNER.split("from edgetl.cli import main")[0] + """
import importlib, pkgutil
import edgetl.device, edgetl.deploy
mods = ['edgetl.device.' + m.name for m in pkgutil.iter_modules(edgetl.device.__path__)]
mods += ['edgetl.deploy.' + m.name for m in pkgutil.iter_modules(edgetl.deploy.__path__)]
mods += ['edgetl_builtins.camera', 'edgetl_builtins.camera.opencv', 'edgetl_builtins.camera.folder', 'edgetl_builtins.sinks',
         'edgetl_builtins.sinks.webhook', 'edgetl_builtins.sinks.mqtt', 'edgetl_builtins.sinks.capture', 'edgetl_builtins.stdio',
         'edgetl.onnxtools', 'edgetl.cli.agent_cmd', 'edgetl.cli.deploy_cmd', 'edgetl.cli.device_cmd',
         'edgetl.bundle', 'edgetl.keys', 'edgetl.reference', 'edgetl.predictor', 'edgetl.preprocess']
for m in mods:
    importlib.import_module(m)
from edgetl.plugins import get_manager
get_manager().get('target', 'onnx'); get_manager().get('sink', 'mqtt'); get_manager().get('source', 'opencv')
bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')]
assert not bad, bad
print('ok')
"""


def _check_recovered(state, client, b, install_id: str, stage: str) -> None:
    """After the restart: the old model (or, past the pointer rename, the new one) serves, the install's
    status says what happened, the agent installs again, and nothing is left half-done on disk."""
    expected = b.v2_version if stage == "switched" else b.v1_version
    assert serving(client) == expected
    r = client.post("/v1/predict", content=b.jpeg(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200 and r.json()["model"] == expected
    status = client.get(f"/v1/model/install/{install_id}").json()
    assert status["status"] == ("installed" if stage == "switched" else "failed")
    if stage != "switched":
        assert f"interrupted during '{stage}'" in status["error"]
        previous = client.get("/v1/info").json()["previous"]
        assert previous is None  # the seed had only v1
    # the agent is usable after recovery: the same bundle now installs cleanly
    assert install(client, b.v2)["status"] == "installed"
    leftovers = [p.name for p in (state / "staging").iterdir()] + [p.name for p in (state / "uploads").iterdir()]
    assert leftovers == []
    models = sorted(p.name for p in (state / "models").iterdir())
    pointer = json.loads((state / "current.json").read_text())
    assert sorted(i for i in pointer.values() if i) == models


@pytest.mark.parametrize("stage", CRASH_POINTS)
def test_kill_at_install_step_then_restart_serves_old_or_new_model(seeded_state, b, tmp_path, stage, monkeypatch):
    """The install stops dead at ``stage`` (``EDGETL_TEST_CRASH_AT=<stage>:freeze``: its thread parks there
    and writes nothing more, so the disk is as a kill -9 there leaves it), then a new agent starts on that
    state directory in this process: what recovery reads is the same as after a real kill, which
    :func:`test_kill_during_recovery_then_restart_recovers` does with real processes."""
    seed, _ = seeded_state
    state = tmp_path / "state"
    shutil.copytree(seed, state)
    faults.frozen.clear()
    monkeypatch.setenv("EDGETL_TEST_CRASH_AT", f"{stage}:freeze")
    with ThreadAgent(state, [b.pub]) as crashing, crashing.client() as client:
        response = upload(client, b.v2)
        assert response.status_code == 202
        install_id = response.json()["install_id"]
        wait_for(lambda: faults.frozen == [stage], what=f"the install to stop at {stage}")
    monkeypatch.delenv("EDGETL_TEST_CRASH_AT")  # the crashed agent's install thread stays parked
    with ThreadAgent(state, [b.pub]) as restarted, restarted.client() as client:
        _check_recovered(state, client, b, install_id, stage)


def test_kill_during_recovery_then_restart_recovers(seeded_state, b, tmp_path):
    """Real processes, torch blocked: a hard exit (137) at 'load', then a second one while recovering from
    it; the third start still ends with v1 serving, the install failed and nothing left over."""
    seed, token = seeded_state
    state = tmp_path / "state"
    shutil.copytree(seed, state)
    crashing = ProcessAgent(state, [b.pub], token, env={"EDGETL_TEST_CRASH_AT": "load"}).wait_ready()
    with crashing.client() as client:
        install_id = upload(client, b.v2).json()["install_id"]
    assert crashing.proc.wait(30) == 137, "expected the crash point to fire at load"
    crashing.kill()
    recovering = ProcessAgent(state, [b.pub], token, env={"EDGETL_TEST_CRASH_AT": "recover"})
    assert recovering.proc.wait(30) == 137
    recovering.kill()
    restarted = ProcessAgent(state, [b.pub], token).wait_ready()
    try:
        with restarted.client() as client:
            _check_recovered(state, client, b, install_id, "load")
    finally:
        restarted.stop()
    assert restarted.blocked_imports() == []
