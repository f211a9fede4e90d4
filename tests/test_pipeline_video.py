"""The pipeline with real sources and sinks: a video file written here, an image folder, JSON lines out."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from edgetl.api import Frame, FrameStream, Source
from edgetl.device.pipeline import Pipeline, PipelineConfig
from edgetl.errors import ConfigError
from edgetl.plugins import get_manager


def write_video(path, frames: int, fps: float, size=(40, 30)):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), (i * 7) % 256, dtype=np.uint8))
    writer.release()
    return path


def slow_predict(delay_s: float):
    calls = []

    def predict(image, roi):
        calls.append((image.shape, roi))
        time.sleep(delay_s)
        return {"label": "good", "scores": {"good": 0.9, "defect": 0.1}, "latency_ms": delay_s * 1000,
                "model": "m-test"}

    predict.calls = calls
    return predict


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pipeline_drops_frames_from_a_live_video_when_inference_is_slower(tmp_path):
    video = write_video(tmp_path / "line.avi", frames=40, fps=100.0)  # plays in 0.4 s
    out = tmp_path / "results.jsonl"
    config = PipelineConfig.from_dict({"source": str(video), "sinks": [{"name": "jsonl", "options": {"path": str(out)}}]})
    pipeline = Pipeline(config, slow_predict(0.05))
    pipeline.start()
    assert pipeline.wait(10)
    status = pipeline.status()
    assert status["state"] == "finished"
    assert status["dropped"] >= 20, status          # ~8 predicted in 0.4 s at 20/s
    assert status["frames"] + status["dropped"] == 40
    lines = read_lines(out)
    assert len(lines) == status["frames"]
    indices = [r["frame"] for r in lines]
    assert indices == sorted(indices) and indices[-1] >= 30  # the newest frames win, not the oldest
    assert set(lines[0]) >= {"timestamp", "source", "frame", "label", "scores", "latency_ms", "model"}


def test_pipeline_predicts_every_frame_of_a_replay_and_applies_the_roi(tmp_path):
    video = write_video(tmp_path / "line.avi", frames=25, fps=100.0)
    out = tmp_path / "results.jsonl"
    predict = slow_predict(0.005)
    config = PipelineConfig.from_dict({"source": str(video), "source_options": {"realtime": False},
                                       "roi": [0, 0, 20, 10],
                                       "sinks": [{"name": "jsonl", "options": {"path": str(out)}}]})
    pipeline = Pipeline(config, predict)
    pipeline.start()
    assert pipeline.wait(10)
    assert pipeline.status()["dropped"] == 0
    assert [r["frame"] for r in read_lines(out)] == list(range(25))
    assert predict.calls[0] == ((30, 40, 3), (0, 0, 20, 10))


def test_pipeline_replays_a_folder_with_an_fps_limit(tmp_path):
    import cv2

    for i in range(6):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((8, 8, 3), i, np.uint8))
    out = tmp_path / "out" / "r.jsonl"
    pipeline = Pipeline(PipelineConfig.from_dict({"source": str(tmp_path), "fps_limit": 20,
                                                  "sinks": [{"name": "jsonl", "options": {"path": str(out)}}]}),
                        slow_predict(0))
    start = time.monotonic()
    pipeline.start()
    assert pipeline.wait(10)
    assert time.monotonic() - start >= 0.2  # 6 frames at 20/s
    assert [r["source"] for r in read_lines(out)] == [f"{i}.png" for i in range(6)]


class _FlakyStream(FrameStream):
    live, reconnect = True, True

    def __init__(self, opened: list):
        self.opened = opened

    def __iter__(self):
        for i in range(3):
            time.sleep(0.01)
            yield Frame(image=np.zeros((8, 8, 3), np.uint8), timestamp=time.time(), index=i, source="flaky")


class _FlakySource(Source):
    name = "flaky"

    def __init__(self):
        self.opened = []

    def accepts(self, uri):
        return uri.startswith("flaky:")

    def open(self, uri, options):
        self.opened.append(time.monotonic())
        return _FlakyStream(self.opened)


def test_pipeline_reconnects_a_dead_stream_with_backoff(monkeypatch, caplog):
    import re

    import edgetl.device.pipeline as pl

    manager = get_manager()
    source = _FlakySource()
    manager.registry["source"] = {"flaky": source}
    monkeypatch.setattr(pl, "BACKOFF_START_S", 0.1)
    pipeline = Pipeline(PipelineConfig.from_dict({"source": "flaky:cam"}), slow_predict(0))
    with caplog.at_level("WARNING", logger="edgetl.agent.pipeline"):
        pipeline.start()
        deadline = time.monotonic() + 5
        while len(source.opened) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        pipeline.stop()
    assert pipeline.reconnects >= 3 and len(source.opened) >= 4
    waits = [float(m.group(1)) for r in caplog.records if (m := re.search(r"reconnecting in ([\d.]+) s", r.message))]
    assert waits[:3] == [0.1, 0.2, 0.4]  # the wait doubles
    gaps = np.diff(source.opened)
    # and is waited: each reopening comes at least its announced wait after the last (a busy CPU only adds)
    assert all(gap >= wait - 0.01 for gap, wait in zip(gaps[:3], waits[:3], strict=True)), (gaps, waits)
    assert pipeline.status()["state"] == "stopped"


def test_pipeline_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="'source' is required"):
        PipelineConfig.from_dict({"sinks": []})
    with pytest.raises(ConfigError, match="fps_limit"):
        PipelineConfig.from_dict({"source": "0", "fps_limit": -1})
    with pytest.raises(ConfigError, match="roi"):
        PipelineConfig.from_dict({"source": "0", "roi": [1, 2]})
    with pytest.raises(ConfigError, match="no source plugin accepts"):
        Pipeline(PipelineConfig.from_dict({"source": "nowhere-at-all"}), slow_predict(0)).start()


def test_pipeline_reads_an_http_stream_and_reconnects_when_it_ends(tmp_path, monkeypatch):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    import edgetl.device.pipeline as pl

    write_video(tmp_path / "clip.avi", frames=8, fps=100.0)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(pl, "BACKOFF_START_S", 0.05)
    out = tmp_path / "r.jsonl"
    url = f"http://127.0.0.1:{server.server_address[1]}/clip.avi"
    pipeline = Pipeline(PipelineConfig.from_dict({"source": url, "sinks": [{"name": "jsonl",
                                                                             "options": {"path": str(out)}}]}),
                        slow_predict(0))
    try:
        pipeline.start()
        deadline = time.monotonic() + 10
        while pipeline.reconnects < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        pipeline.stop()
    finally:
        server.shutdown()
        server.server_close()
    status = pipeline.status()
    assert status["reconnects"] >= 2 and status["state"] == "stopped"
    assert status["frames"] + status["dropped"] >= 16  # 8 frames per connection, read more than once
    lines = read_lines(out)
    assert len(lines) == status["frames"] >= 2 and all(r["source"] == url for r in lines)
