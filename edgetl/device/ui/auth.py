"""Who may see the line's page and who may change things from it: sessions, roles, CSRF.

A browser logs in once with a token (the admin token of ``--token-file`` or the
viewer token of ``--viewer-token-file``) and gets a session cookie:
``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page
sends it), ``Secure`` over TLS, path ``/ui``. Sessions live in the agent's
memory (at most :data:`MAX_SESSIONS`, the oldest dropped first; a restart logs
everyone out) and expire after ``ttl_s``.

Every request under ``/ui`` but the login page passes :class:`SessionGate`
before any route runs: without a valid session it is refused (a page is
redirected to the login). A state-changing request (anything but GET/HEAD)
must also carry the session's CSRF token in ``X-CSRF-Token`` and, when the
browser sends ``Origin`` or ``Sec-Fetch-Site``, come from the agent's own
origin. Failed logins are throttled per client address.
"""

from __future__ import annotations

import collections
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

COOKIE = "edgetl_session"
MAX_SESSIONS = 64
SAFE_METHODS = frozenset({"GET", "HEAD"})
LOGIN_PATH = "/ui/login"
OPEN = frozenset({("GET", LOGIN_PATH), ("HEAD", LOGIN_PATH), ("POST", LOGIN_PATH), ("GET", "/ui/login.css")})
# What a browser may load on these pages: nothing from elsewhere, no inline script, no framing.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob:; style-src 'self'; script-src 'self'; "
                                 b"connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make Chrome send "Origin: null"
    (b"cache-control", b"no-store"),
]


@dataclass
class Session:
    role: str  # "admin" or "viewer"
    csrf: str
    expires: float
    created: float = field(default_factory=time.time)


class Sessions:
    """The tokens that open a session, and the open sessions (thread-safe)."""

    def __init__(self, admin_token: str, viewer_token: str | None = None, ttl_s: float = 12 * 3600):
        self.tokens = [("admin", admin_token.encode())]
        if viewer_token:
            self.tokens.append(("viewer", viewer_token.encode()))
        self.ttl_s = ttl_s
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._lock = threading.Lock()

    def role_for(self, token: str) -> str | None:
        """The role a token opens, comparing with every known token in constant time."""
        given = token.strip().encode()
        found = None
        for role, expected in self.tokens:
            if hmac.compare_digest(given, expected) and found is None:
                found = role
        return found

    def open(self, role: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        session = Session(role=role, csrf=secrets.token_urlsafe(32), expires=time.time() + self.ttl_s)
        with self._lock:
            self._sessions[sid] = session
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None and session.expires < time.time():
                del self._sessions[sid]
                return None
            return session

    def close(self, sid: str | None) -> None:
        with self._lock:
            self._sessions.pop(sid or "", None)


class LoginThrottle:
    """At most ``failures`` failed logins per client address per ``window_s``; then 429 until one ages out."""

    def __init__(self, failures: int = 5, window_s: float = 60.0, max_clients: int = 1024):
        self.failures, self.window_s, self.max_clients = failures, window_s, max_clients
        self._seen: collections.OrderedDict[str, collections.deque[float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def blocked_for(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            times = self._seen.get(client)
            while times and now - times[0] > self.window_s:
                times.popleft()
            if times is None or len(times) < self.failures:
                return 0.0
            return self.window_s - (now - times[0])

    def failed(self, client: str) -> None:
        with self._lock:
            times = self._seen.setdefault(client, collections.deque(maxlen=self.failures))
            times.append(time.monotonic())
            self._seen.move_to_end(client)
            while len(self._seen) > self.max_clients:
                self._seen.popitem(last=False)


def cookie_value(scope: dict[str, Any], name: str = COOKIE) -> str | None:
    from http.cookies import CookieError, SimpleCookie

    for key, value in scope.get("headers", ()):
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except CookieError:
                continue
            if name in jar:
                return jar[name].value
    return None


def session_cookie(sid: str, max_age: int, secure: bool) -> str:
    return (f"{COOKIE}={sid}; Path=/ui; Max-Age={max_age}; HttpOnly; SameSite=Strict"
            + ("; Secure" if secure else ""))


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def own_origin(scope: dict[str, Any]) -> str:
    """``scheme://host[:port]`` the browser used to reach the agent (its Host header)."""
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{_header(scope, b'host') or ''}"


def cross_site_reason(scope: dict[str, Any]) -> str | None:
    """Why an unsafe request looks like it comes from another site's page, or None."""
    origin = _header(scope, b"origin")
    if origin is not None and origin != own_origin(scope):
        return f"cross-origin request refused (Origin {origin})"
    fetch_site = _header(scope, b"sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site {fetch_site})"
    return None


async def _send(send, status: int, body: bytes, content_type: bytes, extra: list | None = None) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
               *SECURITY_HEADERS, *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SessionGate:
    """The ASGI guard of every ``/ui`` path (see the module docstring); other paths pass untouched.

    The session reaches the routes as ``request.state.ui_session``.
    """

    def __init__(self, app, sessions: Sessions):
        self.app, self.sessions = app, sessions

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/ui" or path.startswith("/ui/")):
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method not in SAFE_METHODS:
            reason = cross_site_reason(scope)
            if reason:
                await _send(send, 403, json.dumps({"error": reason}).encode(), b"application/json")
                return
        if (method, path) not in OPEN:
            session = self.sessions.get(cookie_value(scope))
            if session is None:
                if method in SAFE_METHODS and (path in ("/ui", "/ui/")):
                    await _send(send, 303, b"", b"text/plain", [(b"location", LOGIN_PATH.encode())])
                else:
                    await _send(send, 401, json.dumps({"error": "not logged in: open /ui/login"}).encode(),
                                b"application/json")
                return
            if method not in SAFE_METHODS:
                given = (_header(scope, b"x-csrf-token") or "").encode()
                if not hmac.compare_digest(given, session.csrf.encode()):
                    await _send(send, 403, json.dumps({"error": "missing or wrong X-CSRF-Token"}).encode(),
                                b"application/json")
                    return
            scope.setdefault("state", {})["ui_session"] = session

        async def with_headers(message):
            if message["type"] == "http.response.start":
                names = {k for k, _ in message.get("headers", [])}
                message = dict(message, headers=list(message.get("headers", []))
                               + [h for h in SECURITY_HEADERS if h[0] not in names])
            await send(message)

        await self.app(scope, receive, with_headers)
