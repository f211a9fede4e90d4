"""GenICam pixel formats into BGR (no camera needed), and the genicam source without Aravis installed."""

from __future__ import annotations

import numpy as np
import pytest

from edgetl.errors import ConfigError, EdgetlError

RED_BGR = (10, 50, 200)


def mosaic(pattern: str, bgr=RED_BGR, size: int = 8) -> np.ndarray:
    """A uniform colour sampled through a 2x2 Bayer ``pattern`` (row-major, e.g. RGGB: R at the top-left)."""
    value = {"B": bgr[0], "G": bgr[1], "R": bgr[2]}
    out = np.zeros((size, size), np.uint8)
    for dy in range(2):
        for dx in range(2):
            out[dy::2, dx::2] = value[pattern[dy * 2 + dx]]
    return out


@pytest.mark.parametrize("name,pattern", [("BayerRG8", "RGGB"), ("BayerBG8", "BGGR"),
                                          ("BayerGR8", "GRBG"), ("BayerGB8", "GBRG")])
def test_every_bayer_pattern_demosaics_to_the_colour_it_sampled(name, pattern):
    from edgetl_builtins.line.pixels import to_bgr

    image = to_bgr(name, mosaic(pattern).tobytes(), 8, 8)
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8
    assert tuple(int(v) for v in image[4, 4]) == RED_BGR


def test_mono_10_and_12_are_scaled_to_8_bits_and_rgb_is_swapped():
    from edgetl_builtins.line.pixels import to_bgr

    for name, top in (("Mono10", 1023), ("Mono12", 4095)):
        raw = np.array([[0, top // 2, top]], dtype="<u2")
        assert to_bgr(name, raw.tobytes(), 3, 1)[0, :, 0].tolist() == [0, 127, 255]
    assert to_bgr("Mono8", np.array([[7, 9]], np.uint8).tobytes(), 2, 1)[0].tolist() == [[7, 7, 7], [9, 9, 9]]
    rgb = np.array([[[1, 2, 3]]], np.uint8)
    assert to_bgr("RGB8", rgb.tobytes(), 1, 1)[0, 0].tolist() == [3, 2, 1]
    assert to_bgr("BGR8Packed", rgb.tobytes(), 1, 1)[0, 0].tolist() == [1, 2, 3]


def test_other_pixel_formats_are_refused_by_name():
    from edgetl_builtins.line.pixels import check_supported

    with pytest.raises(ConfigError, match=r"pixel format 'YUV422_8' is not supported \(supported: Mono8, "):
        check_supported("YUV422_8", "pipeline source_options.features.PixelFormat")


def test_without_pygobject_the_source_says_which_packages_to_install(monkeypatch):
    import sys

    from edgetl_builtins.line.genicam import GenicamSource

    monkeypatch.setitem(sys.modules, "gi", None)
    with pytest.raises(EdgetlError) as caught:
        GenicamSource().open("genicam://serial=X", {})
    message = str(caught.value)
    assert "gir1.2-aravis-0.8" in message and "edgetl[line]" in message and "\n" not in message


def test_genicam_uris_select_by_serial_user_id_model_ip_or_id():
    from edgetl_builtins.line.genicam import GenicamSource, parse_uri

    assert parse_uri("genicam://") == {}
    assert parse_uri("genicam://serial=A1") == {"serial": "A1"}
    assert parse_uri("genicam://user_id=left%20cam") == {"user_id": "left cam"}
    assert parse_uri("genicam://Basler-123") == {"id": "Basler-123"}
    with pytest.raises(ConfigError, match="unknown selector 'mac'"):
        parse_uri("genicam://mac=00:11")
    assert GenicamSource().accepts("genicam://ip=10.0.0.5") and not GenicamSource().accepts("rtsp://x")
