"""glibc's allocator, tuned for speed: large blocks stay in the process instead of going back to the kernel.

glibc serves every block above its mmap threshold (at most 32 MiB) with a
fresh ``mmap()`` and returns it with ``munmap()`` when freed. A convolution
network at 300 px allocates and frees blocks of that size for every batch
(a 16 x 32 x 150 x 150 float map is 46 MiB), so each batch pays the kernel
to map and zero-fill those pages again. ``benchmarks/experiments/cpu_settings.py``
measured the recipe's frozen pass 3.3x faster with mmap turned off and the
heap (almost) never trimmed, like preloading tcmalloc.

The price is memory, and it is why this is opt-in (``EDGETL_MALLOC=keep``
for ``edgetl train``): freed blocks stay mapped and the heap fragments, so
the resident size grows far past the live data. A full ELPV partial
fine-tune held 9.4 GB after its feature pass, and its 8-view test-time
evaluation was killed for memory at 20.7 GB on a 24 GB machine. Other C
libraries (musl) and other systems are left alone; the device side never
calls this.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt(3) parameter numbers (malloc.h)
M_MMAP_MAX = -4
KEEP_BELOW = 2**31 - 1  # the largest trim threshold mallopt's int takes: free memory is kept up to 2 GiB


def keep_large_blocks() -> bool:
    """With ``EDGETL_MALLOC=keep``, turn glibc's mmap for large blocks off and its heap trimming (almost) off;
    True when applied.

    Anything else (unset, ``system``) leaves glibc as it comes, and so do
    other systems and a C library with no ``mallopt`` (musl) or one that
    refuses the setting (False).
    """
    if os.environ.get("EDGETL_MALLOC", "system").strip().lower() != "keep" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this Python runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
