"""The agent's HTTP routes, one router per concern; :func:`edgetl.device.app.create_app` mounts them.

Each module's ``router(agent)`` returns an :class:`fastapi.APIRouter` whose
handlers close over the agent. Authentication and body caps are not here: the
ASGI layers in :mod:`edgetl.device.asgi` apply them before a route runs.
"""

from __future__ import annotations

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from edgetl.device import schemas


class ApiError(Exception):
    """An HTTP error with a one-line message (``{"error": message}``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


ERRORS = {401: {"model": schemas.ErrorDoc, "description": "missing or wrong bearer token"}}


def errors(*codes: int) -> dict:
    """The OpenAPI ``responses`` for a protected route: 401 plus ``codes``, all ``{"error": …}``."""
    return {**ERRORS, **{code: {"model": schemas.ErrorDoc} for code in codes}}


def bearer_dependency():
    """Documents the bearer scheme in OpenAPI; the check itself is :class:`edgetl.device.asgi.TokenGate`,
    which runs before any body is read."""
    scheme = HTTPBearer(auto_error=False)

    def documented(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        return None

    return [Depends(documented)]
