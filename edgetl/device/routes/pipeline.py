"""The camera pipeline: status, start, stop, software trigger."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from edgetl.device import schemas
from edgetl.device.routes import bearer_dependency, errors


def router(agent) -> APIRouter:
    api = APIRouter(dependencies=bearer_dependency(), tags=["pipeline"])

    @api.get("/v1/pipeline", response_model=schemas.PipelineStatusDoc, responses=errors())
    def pipeline_status() -> dict[str, Any]:
        """The pipeline's state, counters (frames, dropped, reconnects, fps) and saved config."""
        return agent.pipeline_status()

    @api.post("/v1/pipeline", response_model=schemas.PipelineStatusDoc, responses=errors(400, 413))
    def pipeline_control(body: schemas.PipelineRequest) -> dict[str, Any]:
        """Start {source, sinks, fps_limit, roi} or stop {"action": "stop"}; persisted, resumed on restart.
        Paths (a folder or file source, a sink's dir/path) must lie under a --data-root."""
        if body.action == "stop":
            return agent.stop_pipeline()
        return agent.start_pipeline(body.model_dump(exclude={"action"}))

    @api.post("/v1/pipeline/trigger", response_model=schemas.TriggerDoc, responses=errors(400, 503))
    def pipeline_trigger() -> dict[str, Any]:
        """Fire one software trigger on the pipeline's camera (a genicam:// source with
        ``trigger: software``); the result reaches the sinks with the camera's frame id. 400: no
        pipeline, or its source takes no trigger; 503 + Retry-After: the camera is away (not queued)."""
        return agent.trigger_pipeline()

    return api
