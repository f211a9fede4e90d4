"""The ``opencv`` and ``folder`` sources on real files written by the test."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.errors import ConfigError, DataError
from edgetl.plugins import get_manager


def write_video(path, frames: int = 12, fps: float = 30.0, size=(48, 32)):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        image = np.full((size[1], size[0], 3), (i * 20) % 256, dtype=np.uint8)
        writer.write(image)
    writer.release()
    return path


def test_opencv_source_reads_every_frame_of_a_video_file_flat_out(tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=12)
    source = get_manager().get("source", "opencv")
    assert source.accepts(str(video))
    stream = source.open(str(video), {"realtime": False})
    assert stream.live is False and stream.fps == pytest.approx(30.0)
    frames = list(stream)
    stream.close()
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (32, 48, 3) and frames[0].image.dtype == np.uint8
    assert frames[5].image.mean() == pytest.approx(100, abs=6)
    assert all(f.source == str(video) for f in frames)


def test_opencv_source_paces_a_video_file_at_its_frame_rate_by_default(tmp_path):
    import time

    video = write_video(tmp_path / "clip.avi", frames=10, fps=50.0)
    stream = get_manager().get("source", "opencv").open(str(video), {})
    assert stream.live is True
    start = time.monotonic()
    assert len(list(stream)) == 10
    assert time.monotonic() - start >= 0.15  # 10 frames at 50 fps ≈ 0.2 s


def test_opencv_source_classifies_uris():
    from edgetl_builtins.camera.opencv import classify_uri

    assert classify_uri("0") == "camera"
    assert classify_uri("rtsp://10.0.0.5/stream1") == "stream"
    assert classify_uri("http://cam/mjpg") == "stream"
    assert classify_uri("gst:nvarguscamerasrc ! appsink") == "gst"
    assert classify_uri("line.mp4") == "file"
    assert classify_uri("not-a-thing") == ""


def test_opencv_source_errors_name_the_uri(tmp_path):
    source = get_manager().get("source", "opencv")
    with pytest.raises(DataError, match="missing.avi"):
        source.open(str(tmp_path / "missing.avi"), {})
    with pytest.raises(ConfigError, match="expected a camera index"):
        source.open("nonsense", {})
    with pytest.raises(DataError, match="could not open"):
        source.open("gst:videotestsrc num-buffers=1 ! appsink", {})


def test_folder_source_replays_images_in_name_order_and_skips_bad_files(tmp_path):
    import cv2

    for name, value in (("b/2.png", 20), ("a/1.png", 10), ("c.jpg", 30)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(tmp_path / name), np.full((16, 16, 3), value, np.uint8))
    (tmp_path / "d.png").write_bytes(b"not an image")
    source = get_manager().get("source", "folder")
    assert source.accepts(str(tmp_path)) and not source.accepts(str(tmp_path / "c.jpg"))
    stream = source.open(str(tmp_path), {})
    frames = list(stream)
    assert stream.live is False
    assert [f.source for f in frames] == ["a/1.png", "b/2.png", "c.jpg"]
    assert stream.skipped == [str(tmp_path / "d.png")]
    with pytest.raises(DataError, match="d.png"):
        list(source.open(str(tmp_path), {"skip_bad": False}))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        source.open(str(tmp_path / "empty"), {})
