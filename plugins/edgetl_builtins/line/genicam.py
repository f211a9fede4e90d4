"""``genicam`` source: GigE Vision / USB3 Vision cameras through Aravis (GObject introspection).

Why Aravis: it is packaged by Debian (``gir1.2-aravis-0.8``, ``aravis-tools``
with the fake GigE Vision camera the tests start), speaks GigE Vision and USB3
Vision without a vendor SDK, and exposes every GenICam feature by name. Python
reaches it through PyGObject (``gi``), built into the venv by ``pip install
'edgetl[line]'`` (pinned below 3.51, the last series that builds against
Debian 12's girepository-1.0).

URI: ``genicam://`` (the first camera found), ``genicam://serial=S``,
``genicam://user_id=U``, ``genicam://model=M``, ``genicam://ip=A.B.C.D`` or
``genicam://<Aravis device id>``. ``source_options``:

- ``features``: GenICam features applied in order and read back
  (``PixelFormat``, ``ExposureTime``, ``Gain``, ``AcquisitionFrameRate``,
  ``TriggerMode``, ``TriggerSource``, ``TriggerActivation``, or any other
  feature the camera has); an unknown feature or a value outside the camera's
  range is a one-line ConfigError naming the feature, the range and the field.
- ``roi``: ``[x, y, width, height]`` on the sensor (GenICam OffsetX/OffsetY/Width/Height).
- ``trigger``: ``free-run`` (default), ``software`` (fired by
  ``POST /v1/pipeline/trigger`` or the OPC UA method) or a hardware line (``Line0``…);
  ``trigger_activation``: ``RisingEdge`` (default), ``FallingEdge``…
- ``timeout_ms`` (default 1000): how long a frame may take after its trigger
  (free-run: after the previous frame) before it counts as lost.
- ``buffers`` (default 8): frame buffers queued to the stream.

Free-run frames are *live* (a frame still waiting when the next arrives is
dropped and counted, as for any camera); triggered frames (software or a
hardware line) are each a part, so the pipeline predicts every one.

Each frame carries ``camera_frame_id`` (the GVSP block id; 16-bit ids are
unwrapped so they keep increasing), ``device_timestamp_ns`` and
``host_received`` (seconds since the epoch) in ``Frame.meta``. Incomplete
frames (missing packets) and frames that never came are counted in
``stats()["lost"]``; a camera that stops answering ends the stream with the
reason and the pipeline reconnects with backoff.
"""

from __future__ import annotations

import difflib
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, unquote

from edgetl.api import Frame, FrameStream, Source
from edgetl.errors import ConfigError, EdgetlError
from edgetl_builtins.line.pixels import canonical, check_supported, to_bgr

SCHEME = "genicam://"
SELECTORS = ("serial", "user_id", "model", "ip", "id")
_PFNC = {  # Aravis pixel-format constant -> PFNC name (the ones pixels.SUPPORTED can convert)
    "PIXEL_FORMAT_MONO_8": "Mono8", "PIXEL_FORMAT_MONO_10": "Mono10", "PIXEL_FORMAT_MONO_12": "Mono12",
    "PIXEL_FORMAT_BAYER_RG_8": "BayerRG8", "PIXEL_FORMAT_BAYER_BG_8": "BayerBG8",
    "PIXEL_FORMAT_BAYER_GR_8": "BayerGR8", "PIXEL_FORMAT_BAYER_GB_8": "BayerGB8",
    "PIXEL_FORMAT_RGB_8_PACKED": "RGB8", "PIXEL_FORMAT_BGR_8_PACKED": "BGR8",
}
INSTALL = ("install the Debian package gir1.2-aravis-0.8 (apt-get install gir1.2-aravis-0.8) and "
           "PyGObject (pip install 'edgetl[line]')")


def aravis():
    """The Aravis 0.8 GObject module, or a one-line EdgetlError naming the package to install."""
    try:
        import gi
    except ModuleNotFoundError:
        raise EdgetlError("source 'genicam': the Python module 'gi' (PyGObject) is not installed; "
                          f"{INSTALL}") from None
    try:
        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis
    except (ValueError, ImportError):
        raise EdgetlError("source 'genicam': Aravis 0.8 (its GObject typelib) is not installed; "
                          f"{INSTALL}") from None
    return Aravis


def parse_uri(uri: str) -> dict[str, str]:
    """``genicam://serial=X`` -> ``{"serial": "X"}``; ``genicam://ID`` -> ``{"id": "ID"}``; bare -> {}."""
    rest = uri[len(SCHEME):] if uri.startswith(SCHEME) else uri.split(":", 1)[-1]
    if not rest:
        return {}
    if "=" not in rest:
        return {"id": unquote(rest)}
    pairs = dict(parse_qsl(rest, keep_blank_values=True))
    unknown = sorted(set(pairs) - set(SELECTORS))
    if unknown:
        raise ConfigError(f"pipeline source {uri!r}: unknown selector {unknown[0]!r} "
                          f"(expected one of {', '.join(SELECTORS)})")
    return pairs


def list_cameras() -> list[dict[str, str]]:
    """Every camera Aravis discovers: id, vendor, model, serial, address, protocol, physical id."""
    arv = aravis()
    arv.update_device_list()
    return [{"id": arv.get_device_id(i), "vendor": arv.get_device_vendor(i) or "",
             "model": arv.get_device_model(i) or "", "serial": arv.get_device_serial_nbr(i) or "",
             "address": arv.get_device_address(i) or "", "protocol": arv.get_device_protocol(i) or "",
             "physical_id": arv.get_device_physical_id(i) or ""} for i in range(arv.get_n_devices())]


def _describe(cameras: list[dict[str, str]]) -> str:
    if not cameras:
        return "no camera answered discovery"
    return "cameras seen: " + "; ".join(f"{c['id']} (serial {c['serial']}, model {c['model']}, {c['address']})"
                                        for c in cameras)


def open_camera(uri: str):
    """The ``Aravis.Camera`` the URI selects, or a one-line ConfigError naming what was looked for."""
    arv = aravis()
    from gi.repository import GLib

    selector = parse_uri(uri)

    def connect(name: str | None):
        try:
            return arv.Camera.new(name)
        except GLib.Error as exc:
            raise EdgetlError(f"pipeline source {uri!r}: cannot open camera {name or '(first)'}: "
                              f"{exc.message}") from None

    if "ip" in selector:
        return connect(selector["ip"])
    cameras = list_cameras()
    if not selector:
        if not cameras:
            raise EdgetlError(f"pipeline source {uri!r}: {_describe(cameras)}")
        return connect(cameras[0]["id"])
    key, value = next(iter(selector.items()))
    if key == "user_id":  # not in the discovery answer of every transport: ask each camera
        for camera in cameras:
            cam = connect(camera["id"])
            if _feature_value(cam, "DeviceUserID") == value:
                return cam
            del cam
        raise ConfigError(f"pipeline source {uri!r}: no camera with user id {value!r}; {_describe(cameras)}")
    field = {"serial": "serial", "model": "model", "id": "id"}[key]
    for camera in cameras:
        if camera[field] == value:
            return connect(camera["id"])
    raise ConfigError(f"pipeline source {uri!r}: no camera with {key} {value!r}; {_describe(cameras)}")


def _feature_value(cam, name: str) -> str | None:
    try:
        node = cam.get_device().get_feature(name)
        return None if node is None else str(cam.get_string(name))
    except Exception:
        return None


class _Features:
    """Apply the configured features one by one, reading each back (errors name feature, range, field)."""

    def __init__(self, cam, uri: str):
        self.cam, self.device, self.uri = cam, cam.get_device(), uri

    def apply(self, features: dict[str, Any], roi: Any, trigger: str | None, activation: str | None) -> dict:
        applied: dict[str, Any] = {}
        ordered = sorted(features.items(), key=lambda kv: kv[0] != "PixelFormat")  # format first: sizes depend on it
        for name, value in ordered:
            if name == "PixelFormat":
                applied[name] = self._pixel_format(value)
        if roi is not None:
            applied["roi"] = self._roi(roi)
        for name, value in ordered:
            if name != "PixelFormat":
                applied[name] = self._set(name, value, f"source_options.features.{name}")
        if trigger is not None:  # last: setting a frame rate turns TriggerMode off on many cameras (Aravis does)
            applied.update(self._trigger(trigger, activation))
        if "PixelFormat" not in applied:
            applied["PixelFormat"] = check_supported(self.cam.get_pixel_format_as_string(),
                                                     f"pipeline source {self.uri!r} (the camera's current format; "
                                                     "set source_options.features.PixelFormat)")
        return applied

    def _error(self, where: str, text: str) -> ConfigError:
        return ConfigError(f"pipeline {where}: {text} (camera {self.uri!r})")

    def _pixel_format(self, value: Any) -> str:
        where = "source_options.features.PixelFormat"
        name = check_supported(str(value), f"pipeline {where}")
        available = list(self.cam.dup_available_pixel_formats_as_strings())
        wanted = next((a for a in available if a in (value, name) or canonical(a) == name), None)
        if wanted is None:
            raise self._error(where, f"the camera does not offer {value!r} (it offers {', '.join(available)})")
        self._call(where, self.cam.set_pixel_format_from_string, wanted)
        got = self.cam.get_pixel_format_as_string()
        if canonical(got) != name:
            raise self._error(where, f"set {value!r} but the camera reads back {got!r}")
        return name

    def _roi(self, roi: Any) -> list[int]:
        where = "source_options.roi"
        if not (isinstance(roi, list) and len(roi) == 4 and all(isinstance(v, int) and v >= 0 for v in roi)):
            raise ConfigError(f"pipeline {where}: expected [x, y, width, height] non-negative integers (got {roi!r})")
        x, y, w, h = roi
        wmin, wmax = self.cam.get_width_bounds()
        hmin, hmax = self.cam.get_height_bounds()
        sensor_w, sensor_h = self.cam.get_sensor_size()
        if not (wmin <= w <= wmax and hmin <= h <= hmax and x + w <= sensor_w and y + h <= sensor_h):
            raise self._error(where, f"{roi} does not fit: width {wmin}..{wmax}, height {hmin}..{hmax}, "
                                     f"sensor {sensor_w}x{sensor_h}")
        self._call(where, self.cam.set_region, x, y, w, h)
        got = list(self.cam.get_region())
        if got != [x, y, w, h]:
            raise self._error(where, f"set {roi} but the camera reads back {got} (mind the width/offset increments)")
        return got

    def _trigger(self, trigger: str, activation: str | None) -> dict[str, Any]:
        where = "source_options.trigger"
        if trigger in ("free-run", "off", "Off"):
            self.cam.clear_triggers()
            if self.device.get_feature("TriggerMode") is not None:
                return {"TriggerMode": self._set("TriggerMode", "Off", where)}
            return {"TriggerMode": "Off"}
        source = "Software" if trigger == "software" else trigger
        sources = list(self.cam.dup_available_trigger_sources() or [])
        if source not in sources:
            raise self._error(where, f"trigger source {trigger!r} is not offered "
                                     f"(expected free-run, software or one of {', '.join(sources)})")
        self._call(where, self.cam.set_trigger, source)
        done = {"TriggerMode": self.cam.get_string("TriggerMode"), "TriggerSource": self.cam.get_trigger_source()}
        if done["TriggerMode"] != "On" or done["TriggerSource"] != source:
            raise self._error(where, f"set trigger {source} but the camera reads back {done}")
        if activation is not None:
            done["TriggerActivation"] = self._set("TriggerActivation", activation, "source_options.trigger_activation")
        return done

    def _set(self, name: str, value: Any, where: str) -> Any:
        """One feature by its GenICam type, its range checked first, its value read back."""
        cam = self.cam
        if name == "ExposureTime":  # Aravis maps ExposureTime/ExposureTimeAbs per camera
            return self._ranged(name, value, where, cam.get_exposure_time_bounds(), cam.set_exposure_time,
                                cam.get_exposure_time, " µs")
        if name == "Gain":
            return self._ranged(name, value, where, cam.get_gain_bounds(), cam.set_gain, cam.get_gain, " dB")
        if name == "AcquisitionFrameRate":
            return self._ranged(name, value, where, cam.get_frame_rate_bounds(), cam.set_frame_rate,
                                cam.get_frame_rate, " Hz")
        node = self.device.get_feature(name)
        if node is None:
            known = [n for n in ("ExposureTime", "Gain", "AcquisitionFrameRate", "PixelFormat", "TriggerMode",
                                 "TriggerSource", "TriggerActivation", "Width", "Height", "OffsetX", "OffsetY")]
            near = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise self._error(where, f"the camera has no feature {name!r}{hint}")
        kind = type(node).__name__
        if kind == "GcEnumeration":
            options = list(cam.dup_available_enumerations_as_strings(name))
            if str(value) not in options:
                raise self._error(where, f"{name} = {value!r} is not offered (expected one of {', '.join(options)})")
            self._call(where, cam.set_string, name, str(value))
            got = cam.get_string(name)
            if got != str(value):
                raise self._error(where, f"set {name} = {value!r} but the camera reads back {got!r}")
            return got
        if kind in ("GcIntegerNode", "GcSwissKnife", "GcConverter", "GcIntReg", "GcMaskedIntReg"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise self._error(where, f"{name} expects an integer (got {value!r})")
            return self._ranged(name, value, where, cam.get_integer_bounds(name),
                                lambda v: cam.set_integer(name, int(v)), lambda: cam.get_integer(name), "")
        if kind in ("GcFloatNode", "GcFloatReg"):
            return self._ranged(name, value, where, cam.get_float_bounds(name),
                                lambda v: cam.set_float(name, float(v)), lambda: cam.get_float(name), "")
        if kind == "GcBoolean":
            if not isinstance(value, bool):
                raise self._error(where, f"{name} expects true or false (got {value!r})")
            self._call(where, cam.set_boolean, name, value)
            return cam.get_boolean(name)
        raise self._error(where, f"feature {name!r} is a {kind}; only numbers, enumerations and booleans are set "
                                 "from the pipeline config")

    def _ranged(self, name, value, where, bounds, setter, getter, unit):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(where, f"{name} expects a number (got {value!r})")
        lo, hi = (bounds.min, bounds.max) if hasattr(bounds, "min") else tuple(bounds)
        if not lo <= value <= hi:
            raise self._error(where, f"{name} = {value}{unit} is outside the camera's range {lo:g}..{hi:g}{unit}")
        self._call(where, setter, value)
        got = getter()
        if abs(got - value) > max(1e-6, 0.01 * abs(value)):  # cameras round to their increment
            raise self._error(where, f"set {name} = {value} but the camera reads back {got:g}")
        return got

    def _call(self, where, func, *args):
        from gi.repository import GLib

        try:
            func(*args)
        except GLib.Error as exc:
            raise self._error(where, f"the camera refused it: {exc.message}") from None


class GenicamStream(FrameStream):
    """One open camera: buffers queued to an Aravis stream, popped, converted to BGR, counted."""

    live = True
    reconnect = True

    def __init__(self, uri: str, options: dict[str, Any]):
        known = {"features", "roi", "trigger", "trigger_activation", "timeout_ms", "buffers"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"pipeline source_options.{unknown[0]}: unknown option for a genicam source "
                              f"(expected {', '.join(sorted(known))})")
        features = options.get("features") or {}
        if not isinstance(features, dict):
            raise ConfigError("pipeline source_options.features: expected a mapping of GenICam feature: value")
        self.uri = uri
        self.timeout_s = float(options.get("timeout_ms", 1000)) / 1000.0
        self.arv = aravis()
        self.cam = open_camera(uri)
        try:
            trigger = options.get("trigger")
            if trigger is None and not {"TriggerMode", "TriggerSource"} & set(features):
                trigger = "free-run"  # whatever mode the camera was left in by its last user
            self.applied = _Features(self.cam, uri).apply(features, options.get("roi"), trigger,
                                                          options.get("trigger_activation"))
            self.software = self.applied.get("TriggerSource") == "Software"
            # a triggered frame is a part on the line: the pipeline predicts every one (back-pressure,
            # Aravis's buffers absorb a burst) instead of keeping only the newest as for free-run
            self.live = self.applied.get("TriggerMode") != "On"
            self.stream = self.cam.create_stream(None, None)
            if self.stream is None:
                raise EdgetlError(f"pipeline source {uri!r}: the camera opened no stream")
            payload = self.cam.get_payload()
            for _ in range(int(options.get("buffers", 8))):
                self.stream.push_buffer(self.arv.Buffer.new_allocate(payload))
            self._lost_signal = threading.Event()
            device = self.cam.get_device()  # Aravis emits control-lost from its heartbeat thread
            self._lost_handler = (device, device.connect("control-lost", lambda *_: self._lost_signal.set()))
            self.cam.start_acquisition()
        except Exception:
            self._release()
            raise
        self._status_ok = self.arv.BufferStatus.SUCCESS
        self._formats = {getattr(self.arv, const): name for const, name in _PFNC.items() if hasattr(self.arv, const)}
        self._lock = threading.Lock()
        self._counts = {"frames": 0, "lost": 0, "incomplete": 0, "timeouts": 0, "triggers": 0, "unsolicited": 0}
        self._pending: list[float] = []  # monotonic send time of each trigger not yet answered
        self._interrupted = threading.Event()
        self._unreachable = False  # set when the camera stopped answering (no stop command then)
        self._last_raw, self._wraps, self.index = None, 0, 0

    # -- the line ----------------------------------------------------------------------
    def trigger(self) -> int:
        """Fire one software trigger; the number of triggers sent so far."""
        from gi.repository import GLib

        if not self.software:
            raise ConfigError(f"pipeline source {self.uri!r}: not in software-trigger mode "
                              "(set source_options trigger: software)")
        with self._lock:
            try:
                self.cam.software_trigger()
            except GLib.Error as exc:
                raise EdgetlError(f"camera {self.uri!r}: trigger failed: {exc.message}") from None
            self._pending.append(time.monotonic())
            self._counts["triggers"] += 1
            return self._counts["triggers"]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def interrupt(self) -> None:
        self._interrupted.set()

    # -- frames --------------------------------------------------------------------------
    def __iter__(self):
        waited = 0.0
        poll_us = int(min(self.timeout_s, 0.25) * 1e6)
        while not self._interrupted.is_set():
            buf = self.stream.timeout_pop_buffer(poll_us)
            if buf is None:
                waited += poll_us / 1e6
                self._expire_triggers()
                if self._lost_signal.is_set():
                    self._unreachable = True
                    raise EdgetlError(f"camera {self.uri!r} lost (control connection lost)")
                if waited >= self.timeout_s:  # quiet for a while: is the camera still there?
                    waited = 0.0
                    self._check_alive()
                continue
            waited = 0.0
            received = time.time()
            try:
                frame = self._frame(buf, received)
            finally:
                self.stream.push_buffer(buf)
            if frame is not None:
                yield frame

    def _frame(self, buf, received: float) -> Frame | None:
        with self._lock:
            if self._pending:
                self._pending.pop(0)
            elif self.software:  # a frame nobody asked for (in flight when the trigger mode was set)
                self._counts["unsolicited"] += 1
                return None
            if buf.get_status() != self._status_ok:
                self._counts["lost"] += 1
                self._counts["incomplete"] += 1
                return None
            self._counts["frames"] += 1
        raw_id = int(buf.get_frame_id())
        if self._last_raw is not None and raw_id < self._last_raw and self._last_raw <= 0xFFFF:
            self._wraps += 1  # GVSP 1.x block ids are 16-bit and skip 0
        self._last_raw = raw_id
        name = self._formats.get(buf.get_image_pixel_format())
        if name is None:
            with self._lock:
                self._counts["lost"] += 1
            return None
        image = to_bgr(name, buf.get_data(), buf.get_image_width(), buf.get_image_height())
        self.index += 1
        meta = {"camera_frame_id": raw_id + self._wraps * 0xFFFF, "device_timestamp_ns": int(buf.get_timestamp()),
                "host_received": received}
        return Frame(image=image, timestamp=received, index=self.index, source=self.uri, meta=meta)

    def _expire_triggers(self) -> None:
        """A trigger unanswered for ``timeout_ms`` is a lost frame (the camera never sent it whole)."""
        now = time.monotonic()
        with self._lock:
            while self._pending and now - self._pending[0] > self.timeout_s:
                self._pending.pop(0)
                self._counts["lost"] += 1
                self._counts["timeouts"] += 1

    def _check_alive(self) -> None:
        from gi.repository import GLib

        try:
            self.cam.get_integer("Width")
        except GLib.Error as exc:
            self._unreachable = True
            raise EdgetlError(f"camera {self.uri!r} lost: {exc.message}") from None

    def close(self) -> None:
        self._interrupted.set()
        self._release()

    def _release(self) -> None:
        """Stop the acquisition and let go of the camera. A camera that stopped answering gets no stop
        command, and is let go of in a thread: each command to it, and the control release that
        Aravis sends when the device object goes, waits out the GVCP timeout and retries (about 5 s
        each), which would only delay ``degraded`` and the reconnect. The control-lost handler is
        disconnected first: Aravis's heartbeat thread must not call into a Python closure whose
        camera is being let go of in another thread."""
        handler, self._lost_handler = getattr(self, "_lost_handler", None), None
        if handler is not None:
            device, handler_id = handler
            try:
                device.disconnect(handler_id)
            except Exception:  # already gone with its device: nothing left to call us
                pass
        if getattr(self, "_unreachable", False):
            held = [getattr(self, "stream", None), getattr(self, "cam", None)]  # the only references left
            self.stream = self.cam = None
            threading.Thread(target=held.clear, name="genicam-release", daemon=True).start()
            return
        cam = getattr(self, "cam", None)
        if cam is not None:
            try:
                cam.stop_acquisition()
            except Exception:
                pass
        self.stream = None
        self.cam = None


class GenicamSource(Source):
    """GigE Vision / USB3 Vision cameras through Aravis: ``genicam://serial=…``."""

    name = "genicam"
    description = "GenICam camera (GigE Vision, USB3 Vision) through Aravis: genicam://serial=S"
    requires = ("gi",)
    install_hint = INSTALL

    def accepts(self, uri: str) -> bool:
        return uri.startswith(SCHEME) or uri == "genicam:"

    def open(self, uri: str, options: dict[str, Any]) -> FrameStream:
        return GenicamStream(uri, dict(options or {}))
