"""GenICam pixel formats to the BGR uint8 frames THE preprocessing takes (OpenCV for demosaicing).

Only formats whose conversion is exact and tested are accepted; any other is
refused by name when the pipeline starts, never guessed at frame time.

OpenCV names its Bayer codes after the second row of the pattern, so the
GenICam (PFNC) pattern ``BayerRG8`` (R at the top-left) is OpenCV's
``COLOR_BayerBG2BGR``; tests/test_sources_genicam.py checks every pattern on a
mosaic of a known colour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # numpy loads in to_bgr: registering the plugin (edgetl --help) imports no numpy
    import numpy as np

SUPPORTED = ("Mono8", "Mono10", "Mono12", "BayerRG8", "BayerBG8", "BayerGR8", "BayerGB8", "RGB8", "BGR8")
_BAYER = {"BayerRG8": "COLOR_BayerBG2BGR", "BayerBG8": "COLOR_BayerRG2BGR",
          "BayerGR8": "COLOR_BayerGB2BGR", "BayerGB8": "COLOR_BayerGR2BGR"}
_MONO_BITS = {"Mono10": 10, "Mono12": 12}
# names cameras use for the same layouts (GenICam SFNC 1.x "Packed" spellings)
ALIASES = {"RGB8Packed": "RGB8", "BGR8Packed": "BGR8"}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def check_supported(name: str, where: str) -> str:
    """``name`` in its canonical spelling, or a one-line ConfigError naming it and what is supported."""
    from edgetl.errors import ConfigError

    if canonical(name) not in SUPPORTED:
        raise ConfigError(f"{where}: pixel format {name!r} is not supported (supported: {', '.join(SUPPORTED)})")
    return canonical(name)


def to_bgr(name: str, data: Any, width: int, height: int) -> np.ndarray:
    """One frame's raw bytes in pixel format ``name`` as an (H, W, 3) BGR uint8 array (a copy)."""
    import cv2
    import numpy as np

    name = canonical(name)
    raw = np.frombuffer(data, dtype=np.uint8)
    if name == "Mono8":
        return cv2.cvtColor(raw[: width * height].reshape(height, width), cv2.COLOR_GRAY2BGR)
    if name in _MONO_BITS:  # unpacked: one little-endian uint16 per pixel, the top bits zero
        wide = np.frombuffer(data, dtype="<u2")[: width * height].reshape(height, width)
        mono = (wide >> (_MONO_BITS[name] - 8)).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(mono, cv2.COLOR_GRAY2BGR)
    if name in _BAYER:
        return cv2.cvtColor(raw[: width * height].reshape(height, width), getattr(cv2, _BAYER[name]))
    if name == "RGB8":
        return cv2.cvtColor(raw[: width * height * 3].reshape(height, width, 3), cv2.COLOR_RGB2BGR)
    if name == "BGR8":
        return raw[: width * height * 3].reshape(height, width, 3).copy()
    raise ValueError(f"pixel format {name!r} is not supported")
