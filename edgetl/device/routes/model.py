"""Install (upload), install status, rollback and threshold."""

from __future__ import annotations

import asyncio
import collections
import errno
import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Request
from starlette.requests import ClientDisconnect

from edgetl.device import schemas
from edgetl.device.faults import check_disk
from edgetl.device.routes import ApiError, bearer_dependency, errors

DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
BUNDLE_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


async def receive_upload(request: Request, path: Path, idle_s: float, min_rate: int = 0,
                         window_s: float = 30.0, max_s: float | None = None) -> int:
    """Stream the body to ``path``; return its size. Errors are ApiError (the caller frees the slot).

    Dropped with 408: an upload that sends nothing for ``idle_s``; one that brings fewer than
    ``min_rate * window_s`` bytes in any ``window_s`` (a trickle: a per-chunk or since-the-start
    average would let a slow one hold the install slot for hours); one that lasts over ``max_s``.
    """
    declared = request.headers.get("content-length")
    started = time.monotonic()
    size = 0
    marks: collections.deque[tuple[float, int]] = collections.deque([(started, 0)])
    stream = request.stream().__aiter__()
    try:
        with open(path, "wb") as out:
            while True:
                wait = idle_s if max_s is None else max(0.0, min(idle_s, started + max_s - time.monotonic()))
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), wait)
                except StopAsyncIteration:
                    break
                size += len(chunk)
                check_disk("upload", size)
                out.write(chunk)
                now = time.monotonic()
                if max_s is not None and now - started > max_s:
                    raise ApiError(408, f"upload too long: {size} bytes in {now - started:.0f} s; an upload may "
                                        f"take at most {max_s:.0f} s (from --max-bundle-mb)")
                marks.append((now, size))
                while len(marks) >= 2 and marks[1][0] <= now - window_s:
                    marks.popleft()
                since, base = marks[0]
                if min_rate and now - since >= window_s and size - base < min_rate * (now - since):
                    raise ApiError(408, f"upload too slow: {size - base} bytes in the last {now - since:.0f} s, "
                                        f"under {min_rate} bytes/s on average")
    except asyncio.TimeoutError:
        if max_s is not None and time.monotonic() - started >= max_s:
            raise ApiError(408, f"upload too long: {size} bytes in {max_s:.0f} s, the most an upload may take "
                                "(from --max-bundle-mb)") from None
        raise ApiError(408, f"upload stalled: nothing received for {idle_s:g} s after {size} bytes "
                            "(--upload-idle-timeout)") from None
    except ClientDisconnect:
        raise ApiError(400, f"truncated upload: the connection closed after {size} bytes") from None
    except OSError as exc:
        if exc.errno in DISK_ERRORS:
            raise ApiError(507, f"the device's disk is full: the upload stopped after {size} bytes "
                                f"({exc.strerror}); free space and deploy again") from None
        raise ApiError(500, f"cannot store the upload ({exc.strerror or exc})") from None
    if declared is not None and size != int(declared):
        raise ApiError(400, f"truncated upload: {size} of {declared} bytes received")
    if size == 0:
        raise ApiError(400, "empty upload: the body must be the .edgetl bundle")
    return size


def router(agent) -> APIRouter:
    api = APIRouter(dependencies=bearer_dependency(), tags=["model"])

    @api.put("/v1/model", status_code=202, response_model=schemas.InstallAccepted,
             responses=errors(400, 408, 409, 413, 507), openapi_extra=BUNDLE_BODY)
    async def upload(request: Request, background: BackgroundTasks, allow_downgrade: bool = False) -> dict[str, str]:
        """Upload a bundle (the raw .edgetl bytes); it installs in the background.

        A bundle older than the serving one (``bundle_version``) is refused unless ``allow_downgrade``;
        the serving bundle itself installs as a no-op that keeps the rollback target.
        """
        install_id = agent.installer.reserve()
        try:
            limits = agent.limits
            size = await receive_upload(request, agent.state.upload_path(install_id), limits.upload_idle_s,
                                        limits.upload_min_rate, limits.upload_idle_s,
                                        limits.upload_max_s)
        except BaseException:  # refused, broken off, disk full, cancelled: the slot is freed whatever happened
            agent.installer.abandon(install_id)
            raise
        job = agent.installer.accept(install_id, size, allow_downgrade)
        # the stages start once the 202 is sent: a client always learns the id of an install that ran
        background.add_task(agent.installer.launch, job)
        return {"install_id": install_id, "status_url": f"/v1/model/install/{install_id}"}

    @api.get("/v1/model/install/{install_id}", response_model=schemas.InstallStatusDoc, responses=errors(404))
    def install_status(install_id: str) -> dict[str, Any]:
        """Stage, progress (0–1) and, at the end, the verification report or the error."""
        status = agent.installer.status(install_id)
        if status is None:
            raise ApiError(404, f"no install {install_id!r} on this device")
        return status

    @api.post("/v1/model/rollback", response_model=schemas.RollbackDoc, response_model_by_alias=True,
              responses=errors(409))
    def rollback() -> dict[str, Any]:
        """Swap current and previous (a second rollback returns); 409 without a previous model."""
        return agent.rollback()

    @api.patch("/v1/model/threshold", response_model=schemas.ThresholdDoc, responses=errors(413, 503))
    def threshold(body: schemas.ThresholdRequest) -> dict[str, Any]:
        """Change the operating threshold (a JSON number in [0, 1]; journaled; the next install resets it)."""
        return agent.set_threshold(body.threshold)

    return api
