"""What this device is: arch, OS, CPU (model and ISA flags), GPU, runtimes and versions.

Read from ``platform``, ``/proc/cpuinfo``, ``/etc/nv_tegra_release`` (Jetson)
and package metadata; no runtime is imported just to learn its version.
"""

from __future__ import annotations

import functools
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-gpu", "openvino", "tensorrt", "opencv-python-headless",
                    "opencv-python", "numpy")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_facts() -> dict[str, Any]:
    """``{"model", "arch", "cores", "flags", "vnni"}``: the same reading the host records in the manifest."""
    from edgetl.cpuinfo import cpu_info

    return cpu_info()


@functools.lru_cache(maxsize=1)
def gpu_facts() -> list[dict[str, Any]]:
    """NVIDIA GPUs (through nvidia-smi) or the Jetson's integrated GPU (L4T release file)."""
    gpus: list[dict[str, Any]] = []
    tegra = Path("/etc/nv_tegra_release")
    if tegra.is_file():
        board = Path("/proc/device-tree/model")  # e.g. "NVIDIA Jetson Orin Nano Developer Kit"
        model = board.read_text(errors="replace").strip("\x00\n ") if board.is_file() else None
        gpus.append({"name": "NVIDIA Jetson (integrated)", "l4t": tegra.read_text().splitlines()[0].strip(),
                     **({"model": model} if model else {})})
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=5).stdout
            for line in out.strip().splitlines():
                name, driver, memory = (part.strip() for part in line.split(",")[:3])
                gpus.append({"name": name, "driver": driver, "memory": memory})
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    return gpus


def runtime_facts() -> dict[str, Any]:
    """Per target plugin: whether its runtime is usable here, the extra to install, and versions."""
    from edgetl.plugins import get_manager

    out: dict[str, Any] = {}
    for target in get_manager().all("target"):
        missing = target.missing_modules()
        out[target.name] = {"available": not missing, "missing": missing, "extra": target.extra,
                            "plugin": target.plugin}
    return out


def _distributions() -> list[str]:
    """:data:`RUNTIME_PACKAGES` and every distribution a target plugin names as carrying its runtime."""
    from edgetl.plugins import get_manager

    names = list(RUNTIME_PACKAGES)
    for target in get_manager().all("target"):
        names += [d for dists in target.runtime_distributions().values() for d in dists if d not in names]
    return names


def device_facts() -> dict[str, Any]:
    """Everything ``GET /v1/info`` reports about the machine itself (a copy of one reading per process:
    none of it changes while the agent runs, and package metadata lookups cost milliseconds)."""
    import copy

    return copy.deepcopy(_device_facts())


@functools.lru_cache(maxsize=1)
def _device_facts() -> dict[str, Any]:
    from edgetl import __version__

    uname = platform.uname()
    os_release = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key in ("NAME", "VERSION_ID", "PRETTY_NAME"):
                os_release[key.lower()] = value.strip('"')
    except OSError:
        pass
    return {
        "arch": uname.machine, "os": {"system": uname.system, "kernel": uname.release, **os_release},
        "python": platform.python_version(), "edgetl": __version__, "cpu": cpu_facts(), "gpus": gpu_facts(),
        "versions": {p: v for p in _distributions() if (v := _version(p))}, "runtimes": runtime_facts(),
    }
