"""Pure ASGI layers around the agent's routes: metrics, the token gate, body caps.

They run before FastAPI parses anything, which is the point: a request with a
wrong token is answered 401 without one byte of its body being read, and a body
over its route's cap is refused from its Content-Length or, while it streams,
at the first chunk past the cap. (FastAPI parses a JSON body *before* a route's
dependencies run, so a token check written as a dependency comes too late.)
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from fastapi import HTTPException

from edgetl.device.limits import METRIC_METHODS, Limits

OPEN_PATHS = frozenset({"/v1/health", "/metrics"})
UI_PREFIX = "/ui"  # the line's page checks its own session cookie (edgetl.device.ui.auth.SessionGate)


async def _send_error(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


class TokenGate:
    """401 for every path but ``open_paths`` (health, and metrics unless they need the token) unless
    ``Authorization: Bearer <token>`` matches (constant-time compare); the body is never read for a
    refused request."""

    def __init__(self, app, token: str, open_paths: frozenset[str] = OPEN_PATHS):
        self.app, self.expected, self.open_paths = app, token.encode("utf-8"), open_paths

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if (scope["type"] == "http" and path not in self.open_paths
                and not (path == UI_PREFIX or path.startswith(UI_PREFIX + "/"))):
            scheme, _, given = (_header(scope, b"authorization") or b"").partition(b" ")
            # compare even when the scheme is wrong, so the time taken says nothing about the token
            if not hmac.compare_digest(given.strip(), self.expected) or scheme.lower() != b"bearer":
                await _send_error(send, 401, "missing or wrong bearer token (Authorization: Bearer …)",
                                  {"WWW-Authenticate": "Bearer"})
                return
        await self.app(scope, receive, send)


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a body streams past its cap (FastAPI passes HTTPException through)."""


class BodyLimit:
    """Per-route body caps (:meth:`Limits.body_limit`): Content-Length first, then a streaming counter."""

    def __init__(self, app, limits: Limits):
        self.app, self.limits = app, limits

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap, flag = self.limits.body_limit(scope["method"], scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > cap):
            await _send_error(send, 413, f"request body too large: {declared.decode(errors='replace')} bytes, "
                                         f"the limit is {cap} bytes ({flag})")
            return
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    raise BodyTooLarge(413, f"request body too large: more than {cap} bytes ({flag})")
            return message

        await self.app(scope, counted, send)


class RequestMetrics:
    """Count requests and time them per route template, with bounded label values."""

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
            method = scope["method"] if scope["method"] in METRIC_METHODS else "other"
            self.metrics.requests.labels(method=method, route=route, status=str(status["code"])).inc()
            self.metrics.request_latency.labels(route=route).observe(time.perf_counter() - start)
