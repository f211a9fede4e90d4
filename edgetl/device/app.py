"""The agent's HTTP API (FastAPI): the routers of :mod:`edgetl.device.routes` behind ASGI guards.

Every route but health, metrics and the line's page needs ``Authorization:
Bearer <token>``, checked (in constant time) before any body is read (the page
under ``/ui`` has its own session gate: :mod:`edgetl.device.ui.auth`); every body has a cap per
route (see :mod:`edgetl.device.limits`). Errors are ``{"error": "<one line>"}``,
never a stack trace. ``python -m edgetl.device.app`` prints the OpenAPI
document that is kept in docs/agent-openapi.json.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from edgetl import __version__
from edgetl.device.agent import Agent, ConflictError, NoModelError
from edgetl.device.asgi import OPEN_PATHS, BodyLimit, RequestMetrics, TokenGate
from edgetl.device.images import ImageTooLarge, WrongImageType
from edgetl.device.install import InstallBusy
from edgetl.device.limits import Limits
from edgetl.device.pipeline import SourceAway
from edgetl.device.routes import ApiError, model, pipeline, predict, system
from edgetl.device.slots import Busy
from edgetl.device.ui import UiSettings
from edgetl.device.ui import attach as attach_ui
from edgetl.errors import EdgetlError

log = logging.getLogger("edgetl.agent.http")
IMAGE_TYPES = predict.IMAGE_TYPES


def _status_for(exc: EdgetlError) -> int:
    if isinstance(exc, (NoModelError, Busy, SourceAway)):
        return 503
    if isinstance(exc, (ConflictError, InstallBusy)):
        return 409
    if isinstance(exc, ImageTooLarge):
        return 413
    if isinstance(exc, WrongImageType):
        return 415
    return 400


def _add_error_handlers(app: FastAPI) -> None:
    """One-line ``{"error": …}`` bodies for every failure, a 500 only for a bug (logged)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(EdgetlError)
    async def _edgetl_error(request: Request, exc: EdgetlError):
        retry_after = getattr(exc, "retry_after", None)  # errors that mean "try again later" carry one
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
        return JSONResponse({"error": str(exc)}, status_code=_status_for(exc), headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        # the client went away mid-body: its mistake, not ours (no 500, no traceback); nobody reads this
        return JSONResponse({"error": "the client closed the connection before its body was complete"},
                            status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return JSONResponse({"error": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the agent's log"},
                            status_code=500)


def create_app(agent: Agent, token: str, ui: UiSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``agent``, protected by ``token``; ``ui`` sets the line's page."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if hasattr(agent, "shutdown"):  # uvicorn's graceful stop (SIGTERM/SIGINT): close sinks and runtime
            agent.shutdown()

    app = FastAPI(title="edgetl device agent", version=__version__, lifespan=lifespan,
                  description="Installs, verifies and runs signed edgetl bundles on a device.")
    _add_error_handlers(app)
    for routes in (system, model, predict, pipeline):
        app.include_router(routes.router(agent))
    attach_ui(app, agent, token, ui)  # the line's page (/ui, its session gate) and /v1/captures
    # added last = outermost: metrics see everything, the gate runs before any body is read
    limits = getattr(agent, "limits", Limits())
    app.add_middleware(BodyLimit, limits=limits)
    open_paths = OPEN_PATHS - {"/metrics"} if limits.metrics_token else OPEN_PATHS
    app.add_middleware(TokenGate, token=token, open_paths=open_paths)
    app.add_middleware(RequestMetrics, metrics=agent.metrics)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, generated without a state dir or keys (for docs/agent-openapi.json)."""
    app = create_app(_SchemaOnlyAgent(), token="x")  # type: ignore[arg-type]
    return app.openapi()


class _SchemaOnlyAgent:
    """Stands in for an Agent when only the routes' schemas are needed."""

    metrics = None
    limits = Limits()


if __name__ == "__main__":  # python -m edgetl.device.app > docs/agent-openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
