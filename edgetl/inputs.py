"""What ``predict`` accepts, turned into a stream of images (no torch).

A source is an image file, a folder (its images, recursively, in name order),
a glob (``'data/*/*.png'``, quoted so edgetl expands it), a video file, a
camera index (``0``), a stream URL, or an image already in memory ((H, W, 3)
uint8 BGR array). Video files, cameras and streams are read through the
source plugins (the same ones the device pipeline uses), never with OpenCV
code of their own here.

Each item carries where it came from (``source``, ``frame``) and ``name``, the
relative file name ``predict --save`` writes it under.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.data.folder import IMAGE_SUFFIXES, list_images
from edgetl.errors import DataError

__all__ = ["STREAM_PREFIXES", "Item", "expand", "iter_items", "as_bgr"]


GLOB_CHARS = set("*?[")
STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://", "gst:")
"""A predict source starting with one of these is a stream, opened by a source plugin, not a file."""


@dataclass
class Item:
    """One image to predict.

    Attributes:
        image: (H, W, 3) uint8 BGR.
        source: the image's path, ``array[i]``, or the video/camera URI.
        frame: index within a video or camera stream, else None.
        name: relative file name for saving (``good/a.png``, ``clip.mp4``).
        stream: the open stream for video/camera frames (its ``fps`` sizes a saved video), else None.
    """

    image: np.ndarray
    source: str
    name: str
    frame: int | None = None
    stream: Any = None


@dataclass
class _Entry:
    kind: str  # "file", "array" or "stream"
    value: Any
    name: str
    source: str = ""


def _is_stream(text: str) -> bool:
    return text.strip().isdigit() or text.startswith(STREAM_PREFIXES)


def _entries(source: Any, index: int) -> list[_Entry]:
    """Expand one source into image files, in-memory arrays or a stream to open."""
    if isinstance(source, np.ndarray):
        return [_Entry("array", source, f"array_{index:04d}.png", f"array[{index}]")]
    if isinstance(source, int) and not isinstance(source, bool):
        return [_Entry("stream", str(source), f"camera{source}.mp4")]
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: no images in the folder (expected {', '.join(IMAGE_SUFFIXES[:4])}…)")
        return [_Entry("file", f, f.relative_to(path).as_posix()) for f in files]
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return [_Entry("file", path, path.name)]
        return [_Entry("stream", text, path.stem + ".mp4")]
    if _is_stream(text):
        return [_Entry("stream", text, ("camera" + text.strip() if text.strip().isdigit() else "stream") + ".mp4")]
    if GLOB_CHARS & set(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{text}: the pattern matches no image files")
        return [_Entry("file", f, f.name) for f in files]
    raise DataError(f"{text}: no such file or folder (expected an image, a folder, a glob, a video file, "
                    "a camera index or a stream URL)")


def expand(sources: Any) -> list[_Entry]:
    """All entries of ``sources`` (one source or a list), checked up front so a typo fails before any work."""
    if isinstance(sources, (str, Path, np.ndarray, int)):
        sources = [sources]
    entries: list[_Entry] = []
    for i, source in enumerate(sources):
        entries += _entries(source, i)
    taken: dict[str, int] = {}
    for entry in entries:  # two files called a.png from two places must not overwrite each other
        count = taken.get(entry.name, 0)
        taken[entry.name] = count + 1
        if count:
            stem, dot, suffix = entry.name.rpartition(".")
            entry.name = f"{stem}-{count}.{suffix}" if dot else f"{entry.name}-{count}"
    return entries


def _open_stream(uri: str) -> Any:
    """The first source plugin that accepts ``uri``, opened to read every frame (not paced)."""
    from edgetl.plugins import get_manager

    for source in get_manager().all("source"):
        if source.name != "folder" and source.accepts(uri):
            return source.open(uri, {"realtime": False})
    raise DataError(f"{uri}: no source plugin accepts it (expected a video file, a camera index or a stream "
                    "URL; `edgetl plugins list` shows the sources)")


def _frames(entry: _Entry) -> Iterator[Item]:
    stream = _open_stream(entry.value)
    try:
        for frame in stream:
            yield Item(image=frame.image, source=entry.value, name=entry.name, frame=frame.index, stream=stream)
    finally:
        stream.close()


def iter_items(sources: Any) -> Iterator[Item]:
    """Every image and frame of ``sources``, read lazily (one at a time, in order)."""
    from edgetl.preprocess import read_image

    for entry in expand(sources):
        if entry.kind == "file":
            yield Item(image=read_image(entry.value), source=str(entry.value), name=entry.name)
        elif entry.kind == "array":
            yield Item(image=as_bgr(entry.value, entry.source), source=entry.source, name=entry.name)
        else:
            yield from _frames(entry)


def as_bgr(image: np.ndarray, name: str) -> np.ndarray:
    """An in-memory image as (H, W, 3) uint8 BGR; greyscale (H, W) is expanded."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"{name}: expected an (H, W, 3) uint8 BGR image array, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)

