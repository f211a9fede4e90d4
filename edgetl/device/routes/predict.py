"""``POST /v1/predict``: one JPEG or PNG, checked before it is decoded."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from edgetl.device import schemas
from edgetl.device.routes import ApiError, bearer_dependency, errors

IMAGE_TYPES = ("image/jpeg", "image/png")
IMAGE_BODY = {"requestBody": {"required": True, "content": {
    t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES}}}


def router(agent) -> APIRouter:
    api = APIRouter(dependencies=bearer_dependency(), tags=["predict"])

    @api.post("/v1/predict", response_model=schemas.PredictDoc, response_model_exclude_none=True,
              responses=errors(400, 413, 415, 503), openapi_extra=IMAGE_BODY)
    async def predict(request: Request, heatmap: bool = False) -> dict[str, Any]:
        """One image (image/jpeg or image/png body, at most --max-image-mb and --max-image-mpix) → the
        predict document."""
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            raise ApiError(415, f"Content-Type must be image/jpeg or image/png (got {content_type or 'none'})")
        with agent.slots.admitted():  # 503 + Retry-After beyond the queue, before the body is read
            body = await request.body()
            if not body:
                raise ApiError(400, "request body: empty (0 bytes), expected an image")
            # one thread hop for the header check, decode, preprocessing and inference (one of K slots)
            return await agent.slots.run(agent.predict_bytes, body, heatmap, content_type)

    return api
