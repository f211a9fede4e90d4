"""A GigE Vision camera on loopback that serves image files: Aravis's fake camera with our pixels.

``arv-fake-gv-camera-0.8`` only draws its own test pattern. The same camera is
available in-process through GObject introspection (``Aravis.GvFakeCamera``:
real GVCP and GVSP on the network, so the agent's ``genicam`` source sees a
camera like any other), and its ``FakeCamera`` takes a fill callback. The
callback writes the k-th image of a list into the k-th frame, in the pixel
format the client chose (RGB8, BGR8 or Mono8), decoded exactly as
``edgetl eval`` decodes files (:func:`edgetl.preprocess.read_image`).

The callback is installed and called through ctypes (libaravis's own
``arv_fake_camera_set_fill_pattern``, ``arv_buffer_get_data``): PyGObject would
free its closure after the setter returns and copies buffer bytes.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

FILL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32)


class FileCamera:
    """``Aravis.GvFakeCamera`` on ``interface`` (default 127.0.0.1) serving ``images`` in order, then again."""

    def __init__(self, images: list[Path], serial: str = "EDGETL-FILES", interface: str = "127.0.0.1"):
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis

        from edgetl.preprocess import read_image

        self.images = [read_image(p) for p in images]  # BGR uint8, as eval reads them
        self.served = 0
        self._lock = threading.Lock()
        lib = self._lib = ctypes.CDLL("libaravis-0.8.so.0")
        lib.arv_buffer_get_data.restype = ctypes.c_void_p
        lib.arv_buffer_get_data.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]
        for name in ("arv_buffer_get_image_width", "arv_buffer_get_image_height"):
            getattr(lib, name).restype, getattr(lib, name).argtypes = ctypes.c_int, [ctypes.c_void_p]
        lib.arv_fake_camera_set_fill_pattern.argtypes = [ctypes.c_void_p, FILL, ctypes.c_void_p]
        capsule = ctypes.pythonapi.PyCapsule_GetPointer
        capsule.restype, capsule.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        self._formats = {Aravis.PIXEL_FORMAT_RGB_8_PACKED: "RGB8", Aravis.PIXEL_FORMAT_BGR_8_PACKED: "BGR8",
                         Aravis.PIXEL_FORMAT_MONO_8: "Mono8"}
        self.camera = Aravis.GvFakeCamera.new(interface, serial)
        if not self.camera.is_running():
            raise RuntimeError(f"the fake camera could not start on {interface} (is another one running there?)")
        # through ctypes, not PyGObject: the introspection data gives the callback "call" scope, so a
        # PyGObject closure would be freed while the camera's thread still calls it
        self._fill_c = FILL(self._fill)
        self._fake = self.camera.get_fake_camera()
        lib.arv_fake_camera_set_fill_pattern(capsule(self._fake.__gpointer__, None), self._fill_c, None)

    def _fill(self, buffer, _data, _exposure, _gain, pixel_format) -> None:
        import cv2
        import numpy as np

        with self._lock:
            image = self.images[self.served % len(self.images)]
            self.served += 1
        name = self._formats.get(pixel_format)
        height, width = self._lib.arv_buffer_get_image_height(buffer), self._lib.arv_buffer_get_image_width(buffer)
        if name is None or (height, width) != image.shape[:2]:
            return  # leave the camera's frame as it is: the client sees a wrong frame, not a crash
        pixels = {"RGB8": lambda: cv2.cvtColor(image, cv2.COLOR_BGR2RGB), "BGR8": lambda: image,
                  "Mono8": lambda: cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)}[name]()
        raw = np.ascontiguousarray(pixels).tobytes()
        # the buffer was allocated with the camera's payload; arv_buffer_get_data reports the bytes
        # received so far (none, while filling), so the bound is the payload
        data = self._lib.arv_buffer_get_data(buffer, ctypes.byref(ctypes.c_size_t()))
        ctypes.memmove(data, raw, min(self._fake.get_payload(), len(raw)))

    def close(self) -> None:
        """Drop the last reference: finalizing the GvFakeCamera stops its threads and closes its sockets."""
        self.camera = None
        import gc

        gc.collect()

    def __enter__(self) -> "FileCamera":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
