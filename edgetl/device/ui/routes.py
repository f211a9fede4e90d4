"""The page's routes under ``/ui``: the login, the static assets, and the JSON/JPEG the page polls.

The :class:`edgetl.device.ui.auth.SessionGate` has already refused anything
without a session (and an unsafe request without its CSRF token) when a route
here runs; routes that change something also check the session's role.
Nothing here is in the agent's OpenAPI document: it is the page's own API.
"""

from __future__ import annotations

import html
import json
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from edgetl.device.routes import ApiError
from edgetl.device.ui.auth import LoginThrottle, Sessions, session_cookie
from edgetl.errors import ConfigError

STATIC_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}
STALE_S = 5.0  # no frame for this long while the pipeline runs: the page says so


def _static() -> dict[str, tuple[bytes, str]]:
    """The shipped assets by file name (read once; the set is fixed, so no path ever reaches the disk)."""
    folder = resources.files("edgetl.device.ui") / "static"
    out = {}
    for item in folder.iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in STATIC_TYPES:
            out[item.name] = (item.read_bytes(), STATIC_TYPES[suffix])
    return out


def _role(request: Request) -> str:
    return request.state.ui_session.role


def _admin(request: Request) -> None:
    if _role(request) != "admin":
        raise ApiError(403, "the viewer role changes nothing: log in with the admin token")


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        doc = json.loads(await request.body() or b"null")
    except ValueError:
        raise ApiError(400, "request body: not JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "request body: expected a JSON object")
    return doc


def model_card(view: Any) -> dict[str, Any] | None:
    """Name, versions, digest, target, the export gate's figures and this device's reference check."""
    model = view.agent.model
    if model is None:
        return None
    card = view._cards.get(model.install_id)
    if card is None:
        m = model.manifest
        status = view.agent.installer.status(model.install_id) or {}
        report = status.get("report") or {}
        export = m.export.model_dump() if m.export is not None else None
        passed = next((a for a in (export or {}).get("attempts", []) if a.get("passed")), None)
        card = {"name": m.name, "model_version": m.model_version, "bundle_version": m.bundle_version,
                "created": m.created, "task": m.task, "labels": list(m.labels), "positive": m.positive,
                "digest": (report.get("verify") or {}).get("manifest_sha256"),
                "key_id": (report.get("signature") or {}).get("key_id"),
                "target": m.target.format, "precision": m.target.precision,
                "gate": (export or {}).get("gate"), "gate_attempt": passed,
                "reference": report.get("reference"), "install_id": model.install_id}
        view._cards = {model.install_id: card}
    return {**card, "threshold": model.threshold}


def pipeline_health(view: Any) -> dict[str, Any]:
    agent = view.agent
    pipeline = agent.pipeline
    if pipeline is None:
        return {"state": "none", "running": False}
    status = pipeline.status()
    lost = sum(v for k, v in status.items() if k.startswith("lost") and isinstance(v, int))
    return {"state": status["state"], "running": status["state"] in ("running", "reconnecting", "degraded"),
            "source": status["config"]["source"], "fps": status["fps"], "frames": status["frames"],
            "dropped": status["dropped"], "lost": lost, "reconnects": status["reconnects"],
            "skipped_no_model": status["skipped_no_model"], "sink_errors": status["sink_errors"],
            "observer_errors": getattr(pipeline, "observer_errors", 0), "error": status["error"]}


def notices(view: Any, health: dict[str, Any], latest: dict[str, Any] | None) -> list[dict[str, str]]:
    """What the page must say before anything else: no model, no pipeline, the camera gone, no frames."""
    out = []
    if view.agent.model is None:
        out.append({"code": "no_model", "text": "No model installed: deploy a bundle (edgetl deploy)."})
    if health["state"] == "none" or not health["running"]:
        text = f"No pipeline running (state: {health['state']})."
        if health.get("error"):
            text += f" Last error: {health['error']}"
        out.append({"code": "no_pipeline", "text": text})
    elif health["state"] in ("reconnecting", "degraded"):
        out.append({"code": "camera_gone", "text": f"Camera {health['state']}: {health.get('error') or 'no frames'}"
                                                   f" (reconnects: {health['reconnects']})."})
    elif latest is None or time.time() - latest["time"] > STALE_S:
        out.append({"code": "stale", "text": "The pipeline runs but no frame was predicted in the last "
                                             f"{STALE_S:g} s."})
    return out


def router(view: Any, sessions: Sessions) -> APIRouter:
    """The page's routes: login and assets, what the page polls, the engineer's tools."""
    api = APIRouter(include_in_schema=False)
    _page_routes(api, sessions)
    _view_routes(api, view)
    _tool_routes(api, view)
    return api


def _page_routes(api: APIRouter, sessions: Sessions) -> None:
    """Login, logout, the page and its assets."""
    static = _static()
    throttle = LoginThrottle()

    def page(name: str, status: int = 200, message: str = "") -> HTMLResponse:
        body = static[name][0].decode("utf-8").replace("<!--message-->", html.escape(message))
        return HTMLResponse(body, status_code=status)

    # -- login ------------------------------------------------------------------------------
    @api.get("/ui/login")
    def login_page() -> HTMLResponse:
        return page("login.html")

    @api.get("/ui/login.css")
    def login_css() -> Response:
        return Response(static["login.css"][0], media_type=static["login.css"][1])

    @api.post("/ui/login")
    async def login(request: Request) -> Response:
        client = request.client.host if request.client else "?"
        wait = throttle.blocked_for(client)
        if wait > 0:
            return page("login.html", 429, f"Too many failed logins: try again in {wait:.0f} s.")
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        role = sessions.role_for((form.get("token") or [""])[0])
        if role is None:
            throttle.failed(client)
            return page("login.html", 401, "Wrong token.")
        sid, _ = sessions.open(role)
        response = RedirectResponse("/ui/", status_code=303)
        response.headers["set-cookie"] = session_cookie(sid, int(sessions.ttl_s), request.url.scheme == "https")
        return response

    @api.post("/ui/logout")
    def logout(request: Request) -> Response:
        from edgetl.device.ui.auth import COOKIE, cookie_value

        sessions.close(cookie_value(request.scope))
        response = JSONResponse({"ok": True})
        response.headers["set-cookie"] = f"{COOKIE}=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict"
        return response

    # -- the page and its assets ----------------------------------------------------------------
    @api.get("/ui")
    def root() -> Response:
        return RedirectResponse("/ui/", status_code=303)

    @api.get("/ui/")
    def index() -> HTMLResponse:
        return page("index.html")

    @api.get("/ui/static/{name}")
    def asset(name: str) -> Response:
        found = static.get(name)
        if found is None or name.startswith("login"):
            raise ApiError(404, "no such asset")
        return Response(found[0], media_type=found[1])


def _view_routes(api: APIRouter, view: Any) -> None:
    """What the page polls (any role)."""
    @api.get("/ui/api/session")
    def session(request: Request) -> dict[str, Any]:
        s = request.state.ui_session
        return {"role": s.role, "csrf": s.csrf, "expires": s.expires}

    @api.get("/ui/api/state")
    def state(request: Request) -> dict[str, Any]:
        health = pipeline_health(view)
        latest = view.feed.latest.summary() if view.feed.latest is not None else None
        counters = view.feed.counters()
        counters["lost"] = health.get("dropped", 0) + health.get("lost", 0)
        counters["errors"] = (health.get("sink_errors", 0) + health.get("observer_errors", 0)
                              + (1 if health["state"] == "error" else 0))
        return {"role": _role(request), "model": model_card(view), "pipeline": health, "counters": counters,
                "latest": latest, "notices": notices(view, health, latest), "captures": view.captures.usage(),
                "live_fps": view.settings.live_fps, "time": time.time()}

    @api.get("/ui/api/live.jpg")
    def live() -> Response:
        out = view.feed.live_picture()
        if out is None:
            raise ApiError(404, "no frame yet")
        record, jpeg = out
        summary = quote(json.dumps(record.summary()), safe="")  # ASCII for a header; the page decodes it
        return Response(jpeg, media_type="image/jpeg", headers={"X-Frame-Id": str(record.id), "X-Frame": summary})

    @api.get("/ui/api/frames/{record_id}.jpg")
    def frame(record_id: int, full: bool = False) -> Response:
        record = view.feed.find(record_id)
        if record is None:
            raise ApiError(404, f"frame {record_id} is no longer kept on the device")
        return Response(view.feed.draw(record, None if full else view.settings.live_width),
                        media_type="image/jpeg")

    @api.get("/ui/api/rejects")
    def rejects() -> dict[str, Any]:
        return {"rejects": view.feed.reject_list()}


def _tool_routes(api: APIRouter, view: Any) -> None:
    """The engineer's tools: threshold preview and apply, marks, the capture store (writes need admin)."""
    @api.get("/ui/api/preview")
    def preview(threshold: float) -> dict[str, Any]:
        model = view.agent.model
        if model is None:
            raise ApiError(503, "no model installed")
        if not 0.0 <= threshold <= 1.0:
            raise ApiError(400, f"threshold: expected a number in [0, 1], got {threshold}")
        try:
            return view.feed.preview(threshold, model)
        except ValueError as exc:
            raise ApiError(409, str(exc)) from None

    @api.post("/ui/api/threshold")
    async def threshold(request: Request) -> dict[str, Any]:
        _admin(request)
        value = (await _json_body(request)).get("threshold")
        return view.agent.set_threshold(value)

    @api.post("/ui/api/mark")
    async def mark(request: Request) -> dict[str, Any]:
        """Mark a frame still kept on the device: false_reject, missed_defect, or label (a class name)."""
        _admin(request)
        body = await _json_body(request)
        record = view.feed.find(body.get("id")) if isinstance(body.get("id"), int) else None
        if record is None:
            raise ApiError(404, f"frame {body.get('id')!r} is no longer kept on the device")
        kind = body.get("mark")
        label = body.get("label") or default_label(view.agent.model, kind)
        if kind == "label" and not body.get("label"):
            raise ConfigError("mark 'label' needs a 'label' (the frame's class)")
        model = view.agent.model
        capture = view.captures.mark(record, kind, label, model.positive if model is not None else None)
        if capture is None:
            raise ApiError(507, "the capture store did not write: the disk is nearly full")
        return capture

    @api.get("/ui/api/captures")
    def captures() -> dict[str, Any]:
        items = view.captures.list()
        return {"captures": [{k: c.get(k) for k in ("id", "time", "frame", "source", "reason", "mark", "label",
                                                    "margin")} | {"predicted": (c.get("result") or {}).get("label")}
                             for c in reversed(items)], "usage": view.captures.usage()}

    @api.get("/ui/api/captures/{capture_id}.png")
    def capture_image(capture_id: str) -> Response:
        path = view.captures.image_path(capture_id)
        if path is None:
            raise ApiError(404, "no such capture")
        return Response(path.read_bytes(), media_type="image/png")


def default_label(model: Any, kind: Any) -> str | None:
    """The class a mark implies: the normal class for a false reject, the defect class for a missed defect."""
    from edgetl.device.capture import LABEL_RE
    from edgetl.metrics import positive_index, score_classes

    if model is None or kind not in ("false_reject", "missed_defect"):
        return None
    labels = list(model.labels)
    if model.task == "anomaly":
        names = labels if len(labels) == 2 else ["good", "anomaly"]
        hi, lo = score_classes(names, model.positive)
    else:
        hi = positive_index(labels, model.positive)
        if hi is None or len(labels) != 2:
            return None  # several classes: the engineer picks one
        names, lo = labels, 1 - hi
    label = names[hi] if kind == "missed_defect" else names[lo]
    return label if LABEL_RE.match(label) else None  # a class that cannot be a folder name: unlabelled
