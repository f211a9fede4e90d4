"""Peak memory of a training stage, for reports that compare strategies (e.g. LoRA against finetune).

On CUDA the allocator's own peak (``torch.cuda.max_memory_allocated``) is
exact. On the CPU torch allocates outside Python's allocator (tracemalloc
does not see tensors), so the process's resident set size is sampled every
few milliseconds on a thread; the peak *increase* over the RSS at the start is
what compares across strategies (the absolute peak also counts the
interpreter, the libraries and the data loaded before).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any


def rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc``; elsewhere the peak so far from ``resource``)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


@dataclass
class PeakMemory:
    """``with PeakMemory(device) as mem: ...`` then ``mem.facts()``.

    Attributes:
        kind: ``cuda_allocated`` or ``cpu_rss``.
        start_bytes, peak_bytes: at entry and the highest seen inside the block.
    """

    device: Any = None
    interval_s: float = 0.005
    kind: str = "cpu_rss"
    start_bytes: int = 0
    peak_bytes: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _cuda(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cuda"

    def __enter__(self) -> PeakMemory:
        if self._cuda():
            import torch

            self.kind = "cuda_allocated"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = self.peak_bytes = torch.cuda.memory_allocated(self.device)
            return self
        self.start_bytes = self.peak_bytes = rss_bytes()
        self._thread = threading.Thread(target=self._sample, name="edgetl-peak-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, rss_bytes())

    def __exit__(self, *exc: Any) -> None:
        if self._cuda():
            import torch

            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak_bytes = max(self.peak_bytes, rss_bytes())

    def facts(self, prefix: str = "train") -> dict[str, Any]:
        """``{PREFIX_peak_mb, PREFIX_peak_increase_mb, PREFIX_memory_kind}`` for ``TrainedModel.extra``."""
        mb = 1024 * 1024
        return {f"{prefix}_peak_mb": round(self.peak_bytes / mb, 1),
                f"{prefix}_peak_increase_mb": round((self.peak_bytes - self.start_bytes) / mb, 1),
                f"{prefix}_memory_kind": self.kind}
