"""Bounded prediction work: at most K decodes + inferences at once, a bounded queue, 503 beyond it.

A decoded image near the pixel cap is ~120 MB (40 Mpix x 3 bytes) and its
preprocessing about as much again, so N concurrent predictions cost N times
that: sixteen took an 8 GB device from 0.4 to 3.9 GB. :class:`PredictSlots`
admits at most ``max_inflight + max_queued`` predictions (before their body is
read), lets ``max_inflight`` of them decode and infer at once, and answers the
rest ``503`` with ``Retry-After`` at once instead of queueing without end.

The work runs on ``max_inflight`` threads of its own (:meth:`PredictSlots.run`),
not on the server's 40-thread pool: glibc gives each thread its own heap arena
and keeps freed large blocks there, so decodes spread over 16 threads held 16
images' worth of memory even when only one ran at a time.
Defaults (docs/deploy.md, "Limits and hardening"): 2 running, 16 queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edgetl.errors import EdgetlError

RETRY_AFTER_S = 1


class Busy(EdgetlError):
    """Every prediction slot and queue place is taken (HTTP 503 with Retry-After)."""

    retry_after = RETRY_AFTER_S


class PredictSlots:
    """``admitted()`` around a whole request (refuses beyond the queue), ``running()`` around the
    decode and inference (waits for one of ``max_inflight``)."""

    def __init__(self, max_inflight: int, max_queued: int):
        self.max_inflight, self.max_queued = max(1, max_inflight), max(0, max_queued)
        self._run = threading.BoundedSemaphore(self.max_inflight)
        self._count = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.admitted_now = 0
        self.refused = 0

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on one of the ``max_inflight`` prediction threads (queued for one if all are busy)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.max_inflight, thread_name_prefix="predict")
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args))

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        with self._count:
            if self.admitted_now >= self.max_inflight + self.max_queued:
                self.refused += 1
                raise Busy(f"busy: {self.max_inflight} predictions running and {self.max_queued} queued "
                           f"(--max-inflight, --max-queued); retry in {RETRY_AFTER_S} s")
            self.admitted_now += 1
        try:
            yield
        finally:
            with self._count:
                self.admitted_now -= 1

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self._run:
            yield
