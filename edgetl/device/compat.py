"""The compatibility stage: can this device run the bundle as the host exported it?

Refused (the install fails, the old model keeps serving):
- the bundle's target plugin is not installed here, or its runtime library is
  missing (the message names the extra);
- the bundle was made for another CPU architecture and its format is not
  portable (a TensorRT engine plan is; ONNX and OpenVINO IR are not tied to
  one arch, so a mismatch there is only a warning).

Warned (recorded in the report; the reference check on this device decides):
- a runtime version that differs in major.minor from the host's;
- an INT8 model chosen for CPU features (e.g. VNNI) this CPU lacks: its
  kernels take another path, so scores may move; with ``strict_int8`` the
  agent refuses instead.
"""

from __future__ import annotations

from typing import Any

from edgetl.errors import InstallError
from edgetl.manifest import Manifest, as_manifest

PORTABLE_FORMATS = ("onnx", "openvino")
INT8_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
# the PyPI distribution whose version the host recorded, per compat.runtimes key
VERSION_PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "openvino": ("openvino",),
                    "tensorrt": ("tensorrt",)}


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def check_compatibility(manifest: Manifest | dict[str, Any], facts: dict[str, Any], strict_int8: bool = False) -> dict[str, Any]:
    """Compare the manifest's target and compat facts with :func:`edgetl.device.facts.device_facts`.

    ``manifest`` is the validated :class:`edgetl.manifest.Manifest` (a dict is validated first).

    Returns:
        ``{"passed": True, "format", "precision", "arch": {"bundle", "device"},
        "runtimes": {name: {"bundle", "device"}}, "warnings": [str]}``.

    Raises:
        InstallError: a refusal, naming what is missing or different.
    """
    manifest = as_manifest(manifest)
    fmt, precision, compat = manifest.target.format, manifest.target.precision, manifest.compat
    warnings: list[str] = []
    runtime = facts["runtimes"].get(fmt)
    if runtime is None:
        known = ", ".join(sorted(facts["runtimes"])) or "none"
        raise InstallError(f"incompatible: the bundle needs target '{fmt}', which is not installed on this "
                           f"device (targets here: {known})")
    if not runtime["available"]:
        extra = f"; install edgetl[{runtime['extra']}]" if runtime.get("extra") else ""
        raise InstallError(f"incompatible: target '{fmt}' needs {', '.join(runtime['missing'])}, "
                           f"missing on this device{extra}")
    bundle_arch, device_arch = compat.arch, facts["arch"]
    if bundle_arch and bundle_arch != device_arch:
        if fmt not in PORTABLE_FORMATS:
            raise InstallError(f"incompatible: the bundle's {fmt} model was made for {bundle_arch}, "
                               f"this device is {device_arch}")
        warnings.append(f"exported on {bundle_arch}, running on {device_arch} ({fmt} is portable)")
    versions: dict[str, Any] = {}
    for name, host_version in compat.runtimes.items():
        device_version = next((facts["versions"][p] for p in VERSION_PACKAGES.get(name, (name,))
                               if p in facts["versions"]), None)
        versions[name] = {"bundle": host_version, "device": device_version}
        if name in VERSION_PACKAGES and device_version and _major_minor(str(host_version)) != _major_minor(device_version):
            warnings.append(f"{name} {device_version} here, {host_version} on the host")
    if precision == "int8":
        host_flags = set(compat.host_cpu.get("flags") or [])
        lacking = sorted((host_flags & set(INT8_FEATURES)) - set(facts["cpu"]["flags"]))
        if lacking:
            message = (f"the INT8 choice was made for CPU features this device lacks: {', '.join(lacking)}")
            if strict_int8:
                raise InstallError(f"incompatible: {message}")
            warnings.append(message + "; the reference check on this device decides")
    return {"passed": True, "format": fmt, "precision": precision,
            "arch": {"bundle": bundle_arch, "device": device_arch}, "runtimes": versions, "warnings": warnings}
