"""Built-in frame sources (device side, no torch): OpenCV underneath.

Two components:

- ``opencv``: a camera index (``0``), a network stream (``rtsp://``,
  ``http://``, ``https://``), a video file, or a GStreamer pipeline written as
  ``gst:<pipeline>`` (Jetson CSI cameras through JetPack's own OpenCV).
- ``folder``: an image folder replayed in name order (every image once), the
  way a held-out test set is pushed through the pipeline.

A stream says whether it is ``live``: the pipeline drops frames from a live
stream rather than queue them behind a slow model, and reconnects it with
backoff when it dies; a replay is back-pressured so every frame is seen.
"""

from __future__ import annotations

from edgetl.hookspecs import hookimpl
from edgetl_builtins.camera.folder import FolderSource
from edgetl_builtins.camera.opencv import OpenCVSource


@hookimpl
def edgetl_sources(register):
    register(OpenCVSource())
    register(FolderSource())
