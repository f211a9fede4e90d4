"""``folder`` source: replay an image folder (recursively, in name order) as frames."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgetl.api import Frame, FrameStream, Source
from edgetl.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class FolderStream(FrameStream):
    """Every image under a folder once, sorted by relative path.

    Attributes:
        live: False unless option ``fps`` paces the replay like a camera.
        files: the images, in replay order.
    """

    def __init__(self, root: Path, options: dict[str, Any]):
        self.root = root
        # only files that really lie in the folder: a link out of it (to a file or a folder elsewhere)
        # would let a replay read what the folder's owner confined it from
        real_root = root.resolve()
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                            and real_root in p.resolve().parents)
        if not self.files:
            raise DataError(f"source {str(root)!r}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
        fps = float(options.get("fps") or 0)
        self.live = fps > 0
        self.reconnect = False
        self._pace = 1.0 / fps if fps > 0 else 0.0
        self.skip_bad = bool(options.get("skip_bad", True))
        self.skipped: list[str] = []

    def __iter__(self) -> Iterator[Frame]:
        from edgetl.preprocess import read_image

        next_at = time.monotonic()
        for index, path in enumerate(self.files):
            try:
                image = read_image(path)
            except DataError:
                if not self.skip_bad:
                    raise
                self.skipped.append(str(path))
                continue
            if self._pace:
                next_at += self._pace
                time.sleep(max(0.0, next_at - time.monotonic()))
            yield Frame(image=image, timestamp=time.time(), index=index,
                        source=str(path.relative_to(self.root)))


class FolderSource(Source):
    name = "folder"
    description = "replay the images of a folder in name order (options: fps to pace, skip_bad)"
    requires = ("cv2",)

    def accepts(self, uri: str) -> bool:
        return Path(uri.removeprefix("file://")).is_dir()

    def open(self, uri: str, options: dict[str, Any]) -> FrameStream:
        root = Path(uri.removeprefix("file://"))
        if not root.is_dir():
            raise ConfigError(f"source {uri!r}: not a folder")
        return FolderStream(root, options or {})
