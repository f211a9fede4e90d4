"""Health, metrics and device info."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from edgetl.device import schemas
from edgetl.device.routes import bearer_dependency, errors


def router(agent) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/health", response_model=schemas.HealthDoc, response_model_exclude_none=True, tags=["agent"])
    def health() -> dict[str, Any]:
        """Liveness, without a token: ``ok`` (serving a model, or none installed yet: ``serving: false`` and
        what that means), or ``degraded`` with the reason (installed models do not load)."""
        return agent.health()

    @api.get("/metrics", tags=["agent"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Prometheus metrics: requests, latency, predictions per label, installs, pipeline, input drift."""
        body, content_type = agent.metrics.render()
        return Response(body, media_type=content_type)

    @api.get("/v1/info", response_model=schemas.InfoDoc, dependencies=bearer_dependency(), responses=errors(),
             tags=["model"])
    def info() -> dict[str, Any]:
        """Device facts, runtimes with versions, the current and previous manifests, the limits."""
        return agent.info()

    return api
