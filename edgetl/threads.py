"""How many CPU threads inference gets, and keeping OpenMP from spinning on a busy machine (no torch).

PyTorch's default is one thread per core of the machine, and its OpenMP
threads spin-wait for each other between operators. On a shared 2-core
machine with two other busy processes that turns a 40 ms Lite0 prediction
into 0.7-1.6 s: each thread waits for a sibling that the scheduler has
parked (benchmarks/busy_cpu_predict.py measures it). Two things fix it:

* the thread count comes from the CPUs this process may actually use (its
  affinity mask, a cgroup CPU quota) less the ones other processes keep busy
  (the 1-minute load average), never below one;
* ``OMP_WAIT_POLICY=PASSIVE``: a waiting OpenMP thread sleeps instead of
  spinning. libgomp reads it once, when torch loads, so :func:`configure`
  must run before the first ``import torch`` of the process (the inference
  commands call it first thing); a value the user set is kept.

``--threads N`` or ``OMP_NUM_THREADS`` override the choice. The commands give
the same count to a bundle's runtime (ONNX Runtime, OpenVINO: their
``threads`` option, in place of the profile's), so every runtime is measured
and run alike on this machine; the agent keeps its profile's setting.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

from edgetl.errors import UsageError

CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpu_limit(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> int | None:
    """The CPU quota of this process's cgroup, rounded up to whole CPUs; None where there is none.

    A container started with ``--cpus 1.5`` sees all of the host's cores in
    its affinity mask but is throttled to 1.5 CPUs: more threads than that
    only queue.
    """
    try:
        quota, period = v2.read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = (int(p.read_text().strip()) for p in v1)
        return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by its cgroup quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


def busy_cpus() -> float:
    """CPUs other processes keep busy: the 1-minute load average (0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def free_cpus(available: int | None = None, busy: float | None = None) -> int:
    """Available CPUs not busy with other work, at least one.

    A load of 2 on 2 CPUs leaves one thread: two threads would each get half a
    core and wait for each other at every operator.
    """
    available = available_cpus() if available is None else available
    busy = busy_cpus() if busy is None else busy
    return max(1, min(available, available - int(round(busy))))


def inference_threads(requested: int | None = None) -> tuple[int, str]:
    """The thread count for inference and where it came from: ``--threads``, ``OMP_NUM_THREADS``, free CPUs."""
    if requested is not None:
        if requested < 1:
            raise UsageError(f"--threads {requested}: expected 1 or more threads")
        return requested, "--threads"
    raw = os.environ.get("OMP_NUM_THREADS", "").strip()
    if raw:
        try:
            return max(1, int(raw.split(",")[0])), "OMP_NUM_THREADS"
        except ValueError:
            raise UsageError(f"OMP_NUM_THREADS={raw!r}: expected a whole number of threads") from None
    return free_cpus(), "free CPUs"


def configure(requested: int | None = None) -> tuple[int, str]:
    """Set this process up for inference: passive OpenMP waits; returns ``(threads, source)``.

    Call it before torch is imported (``OMP_WAIT_POLICY`` is read once, when
    libgomp loads). Torch gets the count through ``OMP_NUM_THREADS`` when it is
    imported later; a bundle runtime through its ``threads`` option, which the
    caller passes. Where torch is already imported (edgetl called from a program
    that set torch up itself) its setting stays unless ``requested`` is given.
    """
    threads, source = inference_threads(requested)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    elif requested is not None:
        torch.set_num_threads(threads)
    return threads, source


def torch_owned_elsewhere() -> bool:
    """True where torch was imported before edgetl chose threads: its owner's setting is kept."""
    return "torch" in sys.modules
