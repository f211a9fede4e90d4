"""glibc's allocator, tuned for training: large blocks stay in the process instead of going back to the kernel.

glibc serves every block above its mmap threshold (at most 32 MiB) with a
fresh ``mmap()`` and returns it with ``munmap()`` when freed. A convolution
network at 300 px allocates and frees blocks of that size for every batch
(a 16 x 32 x 150 x 150 float map is 46 MiB), so each batch pays the kernel
to map and zero-fill those pages again. ``benchmarks/cpu_settings.py``
measured the recipe's frozen pass 3.4x faster with mmap turned off and the
heap never trimmed (the same as preloading tcmalloc), and the training step
unchanged or slightly faster. The price is a resident size that stays at its
peak until the process exits, which a training command can afford.

``edgetl train`` applies it at start; ``EDGETL_MALLOC=system`` leaves glibc
as it is. Other C libraries (musl) and other systems are left alone. The
device side never calls this: its runtimes keep their own arenas.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt(3) parameter numbers (malloc.h)
M_MMAP_MAX = -4
KEEP_BELOW = 2**31 - 1  # the largest trim threshold mallopt's int takes: free memory is kept up to 2 GiB


def keep_large_blocks() -> bool:
    """Turn glibc's mmap for large blocks off and its heap trimming (almost) off; True when applied.

    Skipped (False) with ``EDGETL_MALLOC=system``, off Linux, and where the C
    library has no ``mallopt`` (musl) or refuses the setting.
    """
    if os.environ.get("EDGETL_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this Python runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
