"""Process-group lifecycle for ``edgetl train --nproc N``: torchrun launch, join, leave.

What a strategy needs while training (rank, sharding, gathering) is public in
:mod:`edgetl.training.dist`; this module is the engine's half.
"""

from __future__ import annotations

import os
import subprocess
import sys

from edgetl.errors import UsageError
from edgetl.training.dist import DistInfo, env_info


def init(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun: gloo on CPU, NCCL on CUDA."""
    info = env_info()
    if not info.enabled:
        return info
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            import torch

            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``edgetl <argv>`` under torchrun with ``nproc`` processes on this node; its exit status.

    ``argv`` must not contain ``--nproc`` (the children are the workers).
    """
    if nproc < 1:
        raise UsageError(f"--nproc {nproc}: expected a positive number of processes")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "edgetl", *argv]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    return subprocess.call(cmd, env=env)
