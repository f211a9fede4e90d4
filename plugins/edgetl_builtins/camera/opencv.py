"""``opencv`` source: camera index, rtsp/http streams, video files, ``gst:`` pipelines."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetl.api import Frame, FrameStream, Source
from edgetl.errors import ConfigError, DataError

STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts")


def _cv2():
    import cv2

    return cv2


def classify_uri(uri: str) -> str:
    """``camera``, ``stream``, ``gst`` or ``file`` for a URI this source accepts (else ``""``)."""
    if uri.strip().isdigit():
        return "camera"
    if uri.startswith(STREAM_PREFIXES):
        return "stream"
    if uri.startswith("gst:"):
        return "gst"
    path = Path(uri.removeprefix("file://"))
    if path.suffix.lower() in VIDEO_SUFFIXES or path.is_file():
        return "file"
    return ""


class VideoStream(FrameStream):
    """Frames from one ``cv2.VideoCapture``.

    Attributes:
        reconnect: True for cameras, streams and ``gst:``: the pipeline reopens them when they die.
        live: True for cameras, streams, ``gst:`` and video files played at
            their own frame rate (``realtime``, the default for files): the
            pipeline may drop their frames. False for a file read flat out.
        fps: the capture's nominal frame rate (frames per second), 0 if unknown.
    """

    def __init__(self, uri: str, kind: str, options: dict[str, Any]):
        cv2 = _cv2()
        self.uri, self.kind = uri, kind
        if kind == "camera":
            self.capture = cv2.VideoCapture(int(uri))
        elif kind == "gst":
            self.capture = cv2.VideoCapture(uri[4:], cv2.CAP_GSTREAMER)
        elif kind == "stream":
            self.capture = cv2.VideoCapture(uri, cv2.CAP_FFMPEG)
        else:
            path = Path(uri.removeprefix("file://"))
            if not path.is_file():
                raise DataError(f"source {uri!r}: video file not found")
            self.capture = cv2.VideoCapture(str(path))
        if not self.capture.isOpened():
            hint = (" (this OpenCV build has no GStreamer: on Jetson use JetPack's OpenCV, see docs/deploy.md)"
                    if kind == "gst" and "GStreamer:                   NO" in cv2.getBuildInformation() else "")
            raise DataError(f"source {uri!r}: OpenCV could not open it{hint}")
        self.fps = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        realtime = bool(options.get("realtime", True))
        self.live = kind != "file" or realtime
        self.reconnect = kind != "file"  # a camera or stream that dies is reopened; a file just ends
        self._pace = 1.0 / self.fps if (kind == "file" and realtime and self.fps > 0) else 0.0
        self._index = 0

    def __iter__(self) -> Iterator[Frame]:
        next_at = time.monotonic()
        while True:
            ok, image = self.capture.read()
            if not ok or image is None:
                return  # end of file, or the stream died: the pipeline decides to reconnect
            if self._pace:
                next_at += self._pace
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            frame = Frame(image=image, timestamp=time.time(), index=self._index, source=self.uri)
            self._index += 1
            yield frame

    def close(self) -> None:
        self.capture.release()


class OpenCVSource(Source):
    name = "opencv"
    description = "camera index, rtsp:// or http:// stream, video file, or gst:<pipeline> (OpenCV)"
    requires = ("cv2",)

    def accepts(self, uri: str) -> bool:
        return bool(classify_uri(uri))

    def open(self, uri: str, options: dict[str, Any]) -> FrameStream:
        kind = classify_uri(uri)
        if not kind:
            raise ConfigError(f"source {uri!r}: expected a camera index, rtsp://, http://, gst: or a video file")
        return VideoStream(uri, kind, options or {})
