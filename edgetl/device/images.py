"""Images sent to ``/v1/predict``: the type from the bytes, the size from the header, then decode.

OpenCV cannot say how large an image is without decoding it, and decoding a
1 MB PNG of 20000 x 20000 pixels takes 1.2 GB. So the header is read first
(a PNG's IHDR, a JPEG's SOF marker: a few dozen bytes, no library needed) and
an image over the pixel cap is refused before a pixel is decoded. Only JPEG
and PNG are accepted, checked against the data's magic bytes (not the
client's Content-Type), so no other OpenCV decoder is reachable. A JPEG much
larger than the network's input is decoded at 1/2, 1/4 or 1/8 scale
(``IMREAD_REDUCED_*``: the decoder skips the detail, so it is also faster).

The decode's *work* is bounded too, not only its output: a JPEG may hold at
most ``max_scans`` scans (a progressive JPEG has about 10; each scan makes the
decoder pass over the whole image again, so thousands of tiny ones cost
minutes), and a PNG's image data may not inflate to more than its declared
width x height needs (:func:`check_png_inflate`; libpng inflates every IDAT
byte, so a 1x1 PNG with 30 MB of IDAT cost 30 s of CPU).
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


# a PNG row's bits per pixel, by colour type (greyscale, RGB, palette, grey+alpha, RGBA), times bit depth
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DEFLATE_MAX_RATIO = 1032  # zlib's best case: one compressed byte never inflates to more than this


def png_chunks(data: bytes | memoryview):
    """(type, payload) of each chunk after the signature, stopping at a truncated one."""
    view = memoryview(data)
    i = 8
    while i + 8 <= len(view):
        length = struct.unpack(">I", view[i:i + 4])[0]
        kind = bytes(view[i + 4:i + 8])
        payload = view[i + 8:i + 8 + length]
        yield kind, payload
        if kind == b"IEND":
            return
        i += 12 + length


def check_png_inflate(data: bytes | memoryview, width: int, height: int) -> None:
    """DataError when the PNG's image data inflates to more than ``width`` x ``height`` can use.

    Only run when the compressed size could hold more (deflate inflates at most 1032:1); then the
    data is inflated here, 1 MiB at a time, and stopped as soon as it passes the bound, so the cost
    is at most that of decoding an honest image of that size.
    """
    import zlib

    view = memoryview(data)
    if len(view) < 29:
        return  # no complete IHDR: the decoder refuses it
    depth, colour, interlace = view[24], view[25], view[28]
    bits = _PNG_CHANNELS.get(colour, 4) * max(depth, 1)
    need = height * (1 + (width * bits + 7) // 8)
    bound = need + (16 * (height + 8) if interlace else 0) + 1024  # Adam7: a filter byte per pass row
    idat = [payload for kind, payload in png_chunks(view) if kind == b"IDAT"]
    if sum(len(p) for p in idat) * _DEFLATE_MAX_RATIO <= bound:
        return
    inflater, produced = zlib.decompressobj(), 0
    for payload in idat:
        pending = bytes(payload)
        while pending and not inflater.eof:
            try:
                produced += len(inflater.decompress(pending, 1 << 20))
            except zlib.error:
                return  # corrupt: the decoder will say so
            pending = inflater.unconsumed_tail
            if produced > bound:
                raise DataError(f"request body: the PNG's image data inflates to more than the {need} bytes "
                                f"its {width}x{height} pixels need (a decompression bomb)")
        if inflater.eof:
            return


def check_jpeg_scans(data: bytes | memoryview, max_scans: int) -> None:
    """DataError for a JPEG with more than ``max_scans`` scans (SOS markers; byte stuffing means
    0xFFDA occurs in a JPEG only as a marker)."""
    scans = bytes(data).count(b"\xff\xda")
    if scans > max_scans:
        raise DataError(f"request body: a JPEG with {scans} scans, more than the {max_scans} allowed "
                        "(a progressive JPEG has about 10)")


def check_decode_cost(data: bytes | memoryview, kind: str, width: int, height: int, max_scans: int) -> None:
    """The decode-work bounds of the module docstring, for a JPEG or a PNG of a known size."""
    if kind == "image/png":
        check_png_inflate(data, width, height)
    else:
        check_jpeg_scans(data, max_scans)


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


def check_image(data: bytes | memoryview, max_pixels: int, declared: str | None = None,
                max_scans: int = 32) -> tuple[str, int, int]:
    """(type, width, height) of a JPEG or PNG that passes every check short of decoding it: its type
    from the magic bytes, its pixel count from its header, its decode work (:func:`check_decode_cost`).
    The errors of :func:`decode_checked`."""
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
    check_decode_cost(data, kind, width, height, max_scans)
    return kind, width, height


def decode_checked(data: bytes | memoryview, max_pixels: int, want: tuple[int, int] | None = None,
                   declared: str | None = None, max_scans: int = 32) -> np.ndarray:
    """Decode a JPEG or PNG body after checking its type and declared size.

    Args:
        max_pixels: refuse (ImageTooLarge) an image declaring more pixels than this.
        want: the network's (width, height) when a reduced JPEG decode is allowed (no ROI or
            tiles in pixel coordinates); None decodes at full size.
        declared: the request's Content-Type; the data must be of that type.
        max_scans: the most scans a JPEG may hold (:func:`check_jpeg_scans`).

    Raises:
        WrongImageType: not a JPEG/PNG, or not the declared type.
        DataError: a broken header, undecodable data, or a decode over its work bounds.
        ImageTooLarge: over ``max_pixels``.
    """
    import cv2

    kind, width, height = check_image(data, max_pixels, declared, max_scans)
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
