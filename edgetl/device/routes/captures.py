"""The capture store over the API, for ``edgetl collect``: the list, then each frame's PNG."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from edgetl.device.routes import ApiError, bearer_dependency, errors


class CaptureDoc(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(description="<UTC time>-<microseconds>; sorts oldest first")
    time: float
    frame: int
    source: str
    reason: str = Field(description="marked (an engineer marked it on the page) or low_margin (a sampled close call)")
    mark: str | None = Field(description="false_reject, missed_defect, label or null (unmarked)")
    label: str | None = Field(description="the class the mark says the frame is, or null (unlabelled)")
    result: dict[str, Any] = Field(description="the predict document of the frame")
    margin: float | None = None


class CapturesDoc(BaseModel):
    captures: list[CaptureDoc]
    usage: dict[str, Any] = Field(description="captures, bytes, max_bytes, min_free_bytes and write counters")


def router(store) -> APIRouter:
    api = APIRouter(dependencies=bearer_dependency(), tags=["captures"])

    @api.get("/v1/captures", response_model=CapturesDoc, responses=errors())
    def list_captures() -> dict[str, Any]:
        """Every stored capture (marked frames and sampled close calls), oldest first, with its metadata."""
        return {"captures": store.list(), "usage": store.usage()}

    @api.get("/v1/captures/{capture_id}/image", response_class=FileResponse, responses={
        **errors(404), 200: {"content": {"image/png": {}}, "description": "the raw frame (PNG)"}})
    def capture_image(capture_id: str) -> FileResponse:
        """The raw frame of one capture, as the camera gave it (PNG)."""
        path = store.image_path(capture_id)
        if path is None:
            raise ApiError(404, f"no capture {capture_id!r} on this device")
        return FileResponse(path, media_type="image/png")

    return api
