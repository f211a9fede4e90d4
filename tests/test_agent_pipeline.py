"""The pipeline through the agent: persisted in the state dir, resumed on restart, --autostart."""

from __future__ import annotations

import time

import numpy as np
import pytest
from agent_support import ThreadAgent, bundles, install


@pytest.fixture(scope="module")
def b(tmp_path_factory):
    return bundles(tmp_path_factory)


def long_video(path, frames=400, fps=20.0):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (48, 48))
    for i in range(frames):
        writer.write(np.full((48, 48, 3), i % 256, np.uint8))
    writer.release()
    return path


def wait_frames(client, n, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/v1/pipeline").json()
        if status["status"] and status["status"]["frames"] >= n:
            return status
        time.sleep(0.05)
    raise AssertionError(f"pipeline made fewer than {n} frames: {status}")


def test_a_running_pipeline_is_resumed_after_a_restart_and_a_stopped_one_only_with_autostart(tmp_path, b):
    video = long_video(tmp_path / "line.avi")  # 20 s at its own rate: still running when we restart
    out = tmp_path / "r.jsonl"
    request = {"source": str(video), "fps_limit": 10, "roi": [0, 0, 32, 32],
               "sinks": [{"name": "jsonl", "options": {"path": str(out)}}]}
    state = tmp_path / "state"
    with ThreadAgent(state, [b.pub]) as agent, agent.client() as client:
        install(client, b.v1)
        assert client.post("/v1/pipeline", json=request).json()["running"] is True
        status = wait_frames(client, 3)
        assert status["status"]["config"]["roi"] == [0, 0, 32, 32]
        assert status["status"]["dropped"] > 0  # 20 fps source, 10 fps limit
    lines_before = len(out.read_text().splitlines())
    with ThreadAgent(state, [b.pub]) as agent, agent.client() as client:
        status = client.get("/v1/pipeline").json()
        assert status["running"] is True and status["saved"]["source"] == str(video)
        wait_frames(client, 2)
        stopped = client.post("/v1/pipeline", json={"action": "stop"}).json()
        assert stopped["running"] is False and stopped["status"]["state"] == "stopped"
    assert len(out.read_text().splitlines()) > lines_before
    with ThreadAgent(state, [b.pub]) as agent, agent.client() as client:
        assert client.get("/v1/pipeline").json()["running"] is False
    with ThreadAgent(state, [b.pub], autostart=True) as agent, agent.client() as client:
        status = client.get("/v1/pipeline").json()
        assert status["running"] is True and status["autostart"] is True
        assert "edgetl_pipeline_frames_total" in client.get("/metrics").text


def test_the_pipeline_skips_frames_until_a_model_is_installed(tmp_path, b):
    video = long_video(tmp_path / "line.avi", frames=200)
    with ThreadAgent(tmp_path / "state", [b.pub]) as agent, agent.client() as client:
        assert client.post("/v1/pipeline", json={"source": str(video)}).status_code == 200
        time.sleep(0.3)
        status = client.get("/v1/pipeline").json()["status"]
        assert status["frames"] == 0 and status["skipped_no_model"] > 0
        install(client, b.v1)
        wait_frames(client, 2)
