"""Images sent to ``/v1/predict``: the type from the bytes, the size from the header, then decode.

OpenCV cannot say how large an image is without decoding it, and decoding a
1 MB PNG of 20000 x 20000 pixels takes 1.2 GB. So the header is read first
(a PNG's IHDR, a JPEG's SOF marker: a few dozen bytes, no library needed) and
an image over the pixel cap is refused before a pixel is decoded. Only JPEG
and PNG are accepted, checked against the data's magic bytes (not the
client's Content-Type), so no other OpenCV decoder is reachable. A JPEG much
larger than the network's input is decoded at 1/2, 1/4 or 1/8 scale
(``IMREAD_REDUCED_*``: the decoder skips the detail, so it is also faster).
"""

from __future__ import annotations

import struct

import numpy as np

from edgetl.errors import DataError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG start-of-frame markers (baseline, progressive, lossless…): not DHT (C4), JPG (C8) or DAC (CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageTooLarge(DataError):
    """The image declares more pixels than the agent's cap (HTTP 413)."""


class WrongImageType(DataError):
    """The data is not the image type the request declared, or not JPEG/PNG at all (HTTP 415)."""


def sniff(data: bytes | memoryview) -> str | None:
    """``image/png``, ``image/jpeg`` or None, from the magic bytes."""
    head = bytes(data[:8])
    if head.startswith(PNG_MAGIC):
        return "image/png"
    if head.startswith(JPEG_MAGIC):
        return "image/jpeg"
    return None


def png_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, which must come first."""
    if len(data) < 24 or bytes(data[12:16]) != b"IHDR":
        raise DataError("request body: a PNG without its IHDR header")
    return struct.unpack(">II", bytes(data[16:24]))


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """(width, height) from the first SOF marker, walking the segments (not their contents)."""
    view = memoryview(data)
    i, n = 2, len(view)
    while i + 4 <= n:
        if view[i] != 0xFF:
            raise DataError("request body: a JPEG with a broken marker before its frame header")
        marker = view[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = (view[i + 2] << 8) | view[i + 3]
        if marker in _SOF:
            if i + 9 > n:
                break
            height = (view[i + 5] << 8) | view[i + 6]
            width = (view[i + 7] << 8) | view[i + 8]
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header: malformed
            break
        i += 2 + length
    raise DataError("request body: a JPEG without a frame header (SOF)")


def image_size(data: bytes | memoryview, kind: str) -> tuple[int, int]:
    return png_size(data) if kind == "image/png" else jpeg_size(data)


def reduce_flag(width: int, height: int, want: tuple[int, int]):
    """The largest IMREAD_REDUCED_COLOR_* that keeps both sides >= 2x the network's input, or None."""
    import cv2

    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if width // factor >= 2 * want[0] and height // factor >= 2 * want[1]:
            return flag
    return None


def decode_checked(data: bytes | memoryview, max_pixels: int, want: tuple[int, int] | None = None,
                   declared: str | None = None) -> np.ndarray:
    """Decode a JPEG or PNG body after checking its type and declared size.

    Args:
        max_pixels: refuse (ImageTooLarge) an image declaring more pixels than this.
        want: the network's (width, height) when a reduced JPEG decode is allowed (no ROI or
            tiles in pixel coordinates); None decodes at full size.
        declared: the request's Content-Type; the data must be of that type.

    Raises:
        WrongImageType: not a JPEG/PNG, or not the declared type.
        DataError: a broken header, or undecodable data.
        ImageTooLarge: over ``max_pixels``.
    """
    import cv2

    kind = sniff(data)
    if kind is None:
        raise WrongImageType("request body: not a readable image: neither JPEG nor PNG (checked from its "
                             "first bytes)")
    if declared and declared != kind:
        raise WrongImageType(f"request body: Content-Type says {declared} but the data is {kind}")
    width, height = image_size(data, kind)
    if width == 0 or height == 0:
        raise DataError(f"request body: the {kind} header declares {width}x{height} pixels")
    if width * height > max_pixels:
        raise ImageTooLarge(f"request body: image of {width}x{height} = {width * height} pixels is over the "
                            f"limit of {max_pixels} (--max-image-mpix)")
    flag = reduce_flag(width, height, want) if want and kind == "image/jpeg" else None
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buf, flag if flag is not None else cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise DataError(f"request body: the {kind} image cannot be decoded ({str(exc).strip().splitlines()[-1]})"
                        ) from None
    if image is None:
        raise DataError("request body: not a readable image (corrupt or unsupported format)")
    return image
