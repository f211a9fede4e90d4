"""The agent's HTTP API (FastAPI): DESIGN.md's endpoint table, nothing more.

Every route but health and metrics needs ``Authorization: Bearer <token>``,
compared in constant time. Errors are ``{"error": "<one line>"}``, never a
stack trace. ``python -m edgetl.device.app`` prints the OpenAPI document that
is kept in docs/agent-openapi.json.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from edgetl import __version__
from edgetl.device import schemas
from edgetl.device.agent import Agent, ConflictError, NoModelError
from edgetl.device.install import InstallBusy
from edgetl.errors import ConfigError, DataError, EdgetlError

log = logging.getLogger("edgetl.agent.http")
IMAGE_TYPES = ("image/jpeg", "image/png")
ERRORS = {401: {"model": schemas.ErrorDoc, "description": "missing or wrong bearer token"}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def _status_for(exc: EdgetlError) -> int:
    if isinstance(exc, NoModelError):
        return 503
    if isinstance(exc, (ConflictError, InstallBusy)):
        return 409
    if isinstance(exc, (ConfigError, DataError)):
        return 400
    return 400


def create_app(agent: Agent, token: str) -> FastAPI:
    """The FastAPI application serving ``agent``, protected by ``token``."""
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        if hasattr(agent, "shutdown"):  # uvicorn's graceful stop (SIGTERM/SIGINT): close sinks and runtime
            agent.shutdown()

    app = FastAPI(title="edgetl device agent", version=__version__, lifespan=lifespan,
                  description="Installs, verifies and runs signed edgetl bundles on a device (DESIGN.md).")
    bearer = HTTPBearer(auto_error=False)
    expected = token.encode("utf-8")

    def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = (credentials.credentials if credentials else "").encode("utf-8")
        if not hmac.compare_digest(given, expected):
            raise ApiError(401, "missing or wrong bearer token (Authorization: Bearer …)",
                           {"WWW-Authenticate": "Bearer"})

    auth = [Depends(require_token)]

    # -- error boundary and request metrics -------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(EdgetlError)
    async def _edgetl_error(request: Request, exc: EdgetlError):
        return JSONResponse({"error": str(exc)}, status_code=_status_for(exc))

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

    app.add_middleware(_RequestMetrics, metrics=agent.metrics)

    # -- routes ------------------------------------------------------------------------
    @app.get("/v1/health", response_model=schemas.HealthDoc, tags=["agent"])
    def health() -> dict[str, str]:
        """Liveness: answers without a token."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["agent"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}})
    def metrics() -> Response:
        """Prometheus metrics: requests, latency, predictions per label, installs, pipeline, input drift."""
        body, content_type = agent.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/v1/info", response_model=schemas.InfoDoc, dependencies=auth, responses=ERRORS, tags=["model"])
    def info() -> dict[str, Any]:
        """Device facts, runtimes with versions, the current and previous manifests."""
        return agent.info()

    @app.put("/v1/model", status_code=202, response_model=schemas.InstallAccepted, dependencies=auth,
             tags=["model"],
             responses={**ERRORS, 400: {"model": schemas.ErrorDoc}, 409: {"model": schemas.ErrorDoc},
                        413: {"model": schemas.ErrorDoc}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request) -> dict[str, str]:
        """Upload a bundle (the raw .edgetl bytes); it installs in the background."""
        limit = agent.max_bundle_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise ApiError(413, f"bundle too large: {declared} bytes, the limit is {limit} bytes (--max-bundle-mb)")
        install_id = agent.installer.reserve()
        path = agent.state.upload_path(install_id)
        size = 0
        try:
            with open(path, "wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"bundle too large: more than {limit} bytes (--max-bundle-mb)")
                    out.write(chunk)
            if declared is not None and size != int(declared):
                raise ApiError(400, f"truncated upload: {size} of {declared} bytes received")
            if size == 0:
                raise ApiError(400, "empty upload: the body must be the .edgetl bundle")
        except ClientDisconnect:
            agent.installer.abandon(install_id, "client went away")
            raise ApiError(400, f"truncated upload: the connection closed after {size} bytes") from None
        except ApiError:
            agent.installer.abandon(install_id, "refused")
            raise
        agent.installer.start(install_id, size)
        return {"install_id": install_id, "status_url": f"/v1/model/install/{install_id}"}

    @app.get("/v1/model/install/{install_id}", response_model=schemas.InstallStatusDoc, dependencies=auth,
             tags=["model"], responses={**ERRORS, 404: {"model": schemas.ErrorDoc}})
    def install_status(install_id: str) -> dict[str, Any]:
        """Stage, progress (0–1) and, at the end, the verification report or the error."""
        status = agent.installer.status(install_id)
        if status is None:
            raise ApiError(404, f"no install {install_id!r} on this device")
        return status

    @app.post("/v1/model/rollback", response_model=schemas.RollbackDoc, response_model_by_alias=True,
              dependencies=auth, tags=["model"], responses={**ERRORS, 409: {"model": schemas.ErrorDoc}})
    def rollback() -> dict[str, Any]:
        """Swap current and previous (a second rollback returns); 409 without a previous model."""
        return agent.rollback()

    @app.patch("/v1/model/threshold", response_model=schemas.ThresholdDoc, dependencies=auth, tags=["model"],
               responses={**ERRORS, 503: {"model": schemas.ErrorDoc}})
    def threshold(body: schemas.ThresholdRequest) -> dict[str, Any]:
        """Change the operating threshold (journaled; the next install resets it)."""
        return agent.set_threshold(body.threshold)

    @app.post("/v1/predict", response_model=schemas.PredictDoc, response_model_exclude_none=True,
              dependencies=auth, tags=["predict"],
              responses={**ERRORS, 400: {"model": schemas.ErrorDoc}, 415: {"model": schemas.ErrorDoc},
                         503: {"model": schemas.ErrorDoc}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES}}})
    async def predict(request: Request, heatmap: bool = False) -> dict[str, Any]:
        """One image (image/jpeg or image/png body) → the predict document."""
        from edgetl.preprocess import decode_image

        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            raise ApiError(415, f"Content-Type must be image/jpeg or image/png (got {content_type or 'none'})")
        body = await request.body()

        def work() -> dict[str, Any]:  # one thread hop for decode, preprocess and inference
            image = decode_image(body, "request body")
            doc = agent.predict_image(image)
            if heatmap:
                doc["heatmap_png"] = _heatmap(agent, image)
            return doc

        return await run_in_threadpool(work)

    @app.get("/v1/pipeline", response_model=schemas.PipelineStatusDoc, dependencies=auth, tags=["pipeline"],
             responses=ERRORS)
    def pipeline_status() -> dict[str, Any]:
        """The pipeline's state, counters (frames, dropped, reconnects, fps) and saved config."""
        return agent.pipeline_status()

    @app.post("/v1/pipeline", response_model=schemas.PipelineStatusDoc, dependencies=auth, tags=["pipeline"],
              responses={**ERRORS, 400: {"model": schemas.ErrorDoc}})
    def pipeline_control(body: schemas.PipelineRequest) -> dict[str, Any]:
        """Start {source, sinks, fps_limit, roi} or stop {"action": "stop"}; persisted, resumed on restart."""
        if body.action == "stop":
            return agent.stop_pipeline()
        return agent.start_pipeline(body.model_dump(exclude={"action"}))

    return app


class _RequestMetrics:
    """Pure ASGI middleware: count requests and time them per route template (cheaper than
    Starlette's BaseHTTPMiddleware, which wraps every response in a stream)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.metrics is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(method=scope["method"], route=route, status=str(status["code"])).inc()
            self.metrics.request_latency.labels(route=route).observe(time.perf_counter() - start)


def _heatmap(agent: Agent, image) -> str:
    """The anomaly map as a base64 PNG: JET colours over the network-input-sized map (0.5 = threshold).

    The map comes from ``Runtime.predict_outputs(batch)["map"]``; a third-party
    runtime may still offer the older ``predict_map``.
    """
    import base64

    import cv2
    import numpy as np

    from edgetl.preprocess import preprocess

    model = agent.model
    if model is None:
        raise NoModelError("no model installed")
    batch = preprocess(image, model.input)
    if model.task != "anomaly":
        raise ApiError(400, "heatmap: this model gives no anomaly map (only anomaly models with a map output do)")
    if hasattr(model.runtime, "predict_map"):
        amap = model.runtime.predict_map(batch)
    else:
        amap = model.predict_outputs(batch).get("map")
        if amap is None:
            raise ApiError(400, "heatmap: this model gives no anomaly map (its runtime returns no 'map' output)")
    amap = np.asarray(amap, dtype=np.float32).reshape(-1, *np.asarray(amap).shape[-2:]).max(axis=0)
    amap = np.clip(amap, 0, 1)
    colour = cv2.applyColorMap((amap * 255).astype(np.uint8), cv2.COLORMAP_JET)
    ok, png = cv2.imencode(".png", colour)
    return base64.b64encode(png.tobytes()).decode("ascii")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, generated without a state dir or keys (for docs/agent-openapi.json)."""
    app = create_app(_SchemaOnlyAgent(), token="x")  # type: ignore[arg-type]
    return app.openapi()


class _SchemaOnlyAgent:
    """Stands in for an Agent when only the routes' schemas are needed."""

    metrics = None


if __name__ == "__main__":  # python -m edgetl.device.app > docs/agent-openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
