"""The compatibility stage: can this device run the bundle as the host exported it?

The core knows no format: what a bundle's files are tied to is the target
plugin's declaration (:attr:`edgetl.api.Target.bound_to`), and which
distributions carry its runtime on a device is
:meth:`edgetl.api.Target.runtime_distributions`. The target is asked through
the plugin manager (no torch on either side).

Refused (the install fails, the old model keeps serving):
- the bundle's target plugin is not installed here, or its runtime library is
  missing (the message names the extra);
- the bundle was made for another CPU architecture (``compat.arch``: the
  device profile's, or the exporting host's without a profile) and its target
  declares its files tied to the architecture (``"arch"``); for portable
  files (ONNX, OpenVINO IR, the ONNX a TensorRT engine is built from on the
  device) a mismatch is a warning;
- the bundle names the GPU it was made for (``compat.gpu``: the profile's
  ``gpu``) and its target declares its files tied to the GPU (``"gpu"``: an
  engine plan), and no GPU of this device matches;
- a runtime version that differs in major.minor from the host's, for a target
  that declares ``"runtime"``.

Warned (recorded in the report; the reference check on this device decides):
- any of the differences above for a target that does not declare it;
- an INT8 model chosen for CPU features (e.g. VNNI) this CPU lacks, for a
  target that declares ``"cpu_features"`` (CPU INT8 kernels: ONNX Runtime,
  OpenVINO): its kernels take another path, so scores may move; with
  ``strict_int8`` the agent refuses instead. A TensorRT bundle's INT8 runs on
  the GPU: the exporting host's CPU is not its business.
"""

from __future__ import annotations

from typing import Any

from edgetl.api import Target
from edgetl.errors import EdgetlError, InstallError
from edgetl.manifest import Manifest, as_manifest

INT8_FEATURES = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:2])


def gpu_matches(expected: str, gpus: list[dict[str, Any]]) -> bool:
    """Whether one of ``gpus`` (:func:`edgetl.device.facts.gpu_facts`) is the GPU a profile names.

    The profile's ``gpu`` is a case-insensitive part of the device's GPU name or
    board model (``Orin Nano`` matches ``NVIDIA Jetson Orin Nano Developer Kit``,
    ``RTX 4090`` matches ``NVIDIA GeForce RTX 4090``).
    """
    want = expected.strip().lower()
    return any(want in f"{g.get('name', '')} {g.get('model', '')}".lower() for g in gpus)


class _Undeclared(Target):
    """A target this machine does not have (a fleet client checking a device whose plugin the host
    lacks): the contract's cautious defaults, files tied to the architecture."""

    def __init__(self, name: str, runtimes: dict[str, str]):
        self.name, self.runtime_packages = name, tuple(runtimes)

    def export(self, model: Any, example: Any, out_dir: Any, spec: Any) -> Any:
        raise NotImplementedError

    def load(self, files: Any, manifest: Any, options: Any = None) -> Any:
        raise NotImplementedError


def _target(manifest: Manifest) -> Target:
    from edgetl.plugins import get_manager

    try:
        return get_manager().get("target", manifest.target.format)  # type: ignore[return-value]
    except EdgetlError:
        return _Undeclared(manifest.target.format, manifest.compat.runtimes)


def _present(fmt: str, facts: dict[str, Any]) -> None:
    """Refuse a bundle whose target plugin or runtime library this device lacks."""
    runtime = facts["runtimes"].get(fmt)
    if runtime is None:
        known = ", ".join(sorted(facts["runtimes"])) or "none"
        raise InstallError(f"incompatible: the bundle needs target '{fmt}', which is not installed on this "
                           f"device (targets here: {known})")
    if not runtime["available"]:
        extra = f"; install edgetl[{runtime['extra']}]" if runtime.get("extra") else ""
        raise InstallError(f"incompatible: target '{fmt}' needs {', '.join(runtime['missing'])}, "
                           f"missing on this device{extra}")


def _arch_and_gpu(fmt: str, compat: Any, facts: dict[str, Any], bound: set[str], warnings: list[str]) -> None:
    bundle_arch, device_arch = compat.arch, facts["arch"]
    if bundle_arch and bundle_arch != device_arch:
        if "arch" in bound:
            raise InstallError(f"incompatible: the bundle's {fmt} model was made for {bundle_arch}, "
                               f"this device is {device_arch} (target '{fmt}' declares its files tied to the "
                               f"CPU architecture)")
        warnings.append(f"exported for {bundle_arch}, running on {device_arch} ({fmt} files are portable)")
    gpus = facts.get("gpus") or []
    device_gpus = ", ".join(g.get("model") or g.get("name", "?") for g in gpus) or "no GPU found"
    if compat.gpu and not gpu_matches(compat.gpu, gpus):
        if "gpu" in bound:
            raise InstallError(f"incompatible: the bundle's {fmt} model was built for GPU '{compat.gpu}'; "
                               f"this device has {device_gpus} (target '{fmt}' declares its files tied to the GPU)")
        warnings.append(f"the device profile expects GPU '{compat.gpu}'; this device has {device_gpus}")


def _versions(fmt: str, compat: Any, facts: dict[str, Any], target: Target, bound: set[str],
              warnings: list[str]) -> dict[str, Any]:
    distributions = target.runtime_distributions()
    versions: dict[str, Any] = {}
    for name, host_version in compat.runtimes.items():
        device_version = next((facts["versions"][p] for p in distributions.get(name, ())
                               if p in facts["versions"]), None)
        versions[name] = {"bundle": host_version, "device": device_version}
        if device_version and _major_minor(str(host_version)) != _major_minor(device_version):
            message = f"{name} {device_version} here, {host_version} on the host"
            if "runtime" in bound:
                raise InstallError(f"incompatible: {message} (target '{fmt}' declares its files tied to the "
                                   f"runtime version)")
            warnings.append(message)
    return versions


def check_compatibility(manifest: Manifest | dict[str, Any], facts: dict[str, Any], strict_int8: bool = False,
                        target: Any = None) -> dict[str, Any]:
    """Compare the manifest's target and compat facts with :func:`edgetl.device.facts.device_facts`.

    ``manifest`` is the validated :class:`edgetl.manifest.Manifest` (a dict is validated first);
    ``target`` the bundle's :class:`edgetl.api.Target` (default: the registered one of that name).

    Returns:
        ``{"passed": True, "format", "precision", "bound_to", "arch": {"bundle", "device"},
        "gpu": {"bundle", "device"}, "runtimes": {name: {"bundle", "device"}}, "warnings": [str]}``.

    Raises:
        InstallError: a refusal, naming what is missing or different.
    """
    manifest = as_manifest(manifest)
    fmt, precision, compat = manifest.target.format, manifest.target.precision, manifest.compat
    warnings: list[str] = []
    _present(fmt, facts)
    target = target if target is not None else _target(manifest)
    bound = set(target.bound_to)
    _arch_and_gpu(fmt, compat, facts, bound, warnings)
    versions = _versions(fmt, compat, facts, target, bound, warnings)
    if precision == "int8" and "cpu_features" in bound:
        host_flags = set(compat.host_cpu.get("flags") or [])
        lacking = sorted((host_flags & set(INT8_FEATURES)) - set(facts["cpu"]["flags"]))
        if lacking:
            message = (f"the INT8 choice was made for CPU features this device lacks: {', '.join(lacking)}")
            if strict_int8:
                raise InstallError(f"incompatible: {message}")
            warnings.append(message + "; the reference check on this device decides")
    gpus = facts.get("gpus") or []
    return {"passed": True, "format": fmt, "precision": precision, "bound_to": sorted(bound),
            "arch": {"bundle": compat.arch, "device": facts["arch"]},
            "gpu": {"bundle": compat.gpu, "device": [g.get("model") or g.get("name") for g in gpus]},
            "runtimes": versions, "warnings": warnings}
