"""This machine's CPU, as far as INT8 quantization cares (no torch; host and device alike).

INT8 kernels take different paths by ISA: without VNNI, x86 U8S8 convolutions
accumulate pairs in 16 bits and can saturate (ONNX Runtime documents this; it
is why ``reduce_range`` exists), with AVX512-VNNI / AVX-VNNI / AMX they do not.
The export records these flags in the manifest (``compat.host_cpu``) so a
device can tell that its CPU differs from the one the INT8 choice was made for.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = ["ISA_FLAGS", "VNNI_FLAGS", "cpu_info", "needs_reduce_range"]


ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile",
             "asimd", "asimddp", "fphp", "asimdhp", "i8mm", "bf16")
"""The instruction-set flags :func:`cpu_info` reports (x86 and Arm names, as the kernel spells them)."""
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
"""The flags of INT8 dot-product instructions (VNNI, AMX): x86 without one needs reduced range (:func:`needs_reduce_range`)."""


@lru_cache(maxsize=1)
def cpu_info() -> dict[str, Any]:
    """``{"model", "arch", "cores", "flags": [ISA flags relevant to int8/fp16], "vnni": bool}`` from /proc/cpuinfo.

    The host records it in the manifest; the device reads its own to compare.
    """
    model, flags = platform.processor() or "unknown", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key in ("model name", "hardware") and model in ("unknown", "", platform.machine()):
                model = value.strip()
            elif key in ("flags", "features"):
                flags.update(value.split())
    except OSError:
        pass
    found = sorted(f for f in ISA_FLAGS if f in flags)
    return {"model": model, "arch": platform.machine(), "cores": os.cpu_count(), "flags": found,
            "vnni": any(f in flags for f in VNNI_FLAGS)}


def needs_reduce_range() -> bool:
    """True on x86 without VNNI: 7-bit weights avoid the 16-bit accumulation saturation of U8S8 kernels."""
    cpu = cpu_info()
    return cpu["arch"] in ("x86_64", "AMD64", "i686") and not cpu["vnni"]
