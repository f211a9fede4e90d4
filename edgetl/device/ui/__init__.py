"""The line's own page, served by the agent at ``/ui`` (docs/deploy.md, "The line's page").

Plain HTML, CSS and JavaScript shipped in the wheel (``edgetl/device/ui/static``):
no CDN, no build step, nothing a device must compile; any browser on the line's
network (a Jetson's, a tablet) opens it. :func:`attach` is the one hook
:func:`edgetl.device.app.create_app` calls: it adds the pipeline observer
(:class:`edgetl.device.live.LiveFeed`), the capture store
(:class:`edgetl.device.capture.CaptureStore`), the page's routes, the capture
API for ``edgetl collect`` and the session gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgetl.device.capture import MIB, CaptureStore
from edgetl.device.live import LiveFeed


@dataclass(frozen=True)
class UiSettings:
    """The page's settings (``edgetl agent serve`` flags in brackets).

    Attributes:
        viewer_token: the token that opens a read-only session [--viewer-token-file]; None: admins only.
        capture_bytes: the capture store's quota [--capture-mb].
        capture_min_free_bytes: the store never writes when the disk would keep less free [fixed, 512 MiB].
        capture_margin: a frame this close to flipping is a close call, sampled into the store [fixed].
        capture_every_s: at most one close call sampled per this many seconds [fixed].
        live_fps: the most live pictures drawn per second, all browsers together [--ui-fps].
        live_width: width of the live picture, pixels [fixed].
        rejects: rejected frames kept for the gallery [fixed].
    """

    viewer_token: str | None = None
    capture_bytes: int = 256 * MIB
    capture_min_free_bytes: int = 512 * MIB
    capture_margin: float = 0.05
    capture_every_s: float = 10.0
    live_fps: float = 10.0
    live_width: int = 640
    rejects: int = 12


class LineView:
    """What the page's routes need: the agent, the live feed and the capture store."""

    def __init__(self, agent: Any, settings: UiSettings):
        self.agent, self.settings = agent, settings
        self.feed = LiveFeed(rejects=settings.rejects, render_width=settings.live_width,
                             max_render_fps=settings.live_fps)
        self.captures = CaptureStore(agent.state.root / "capture", max_bytes=settings.capture_bytes,
                                     min_free_bytes=settings.capture_min_free_bytes,
                                     margin=settings.capture_margin, sample_every_s=settings.capture_every_s)
        self.feed.listeners.append(self._sample)
        self._cards: dict[str, dict[str, Any]] = {}

    def _sample(self, record: Any) -> None:
        model = self.agent.model
        self.captures.sample(record, model.positive if model is not None else None)

    def observe(self, result: dict[str, Any], frame: Any, pipeline: Any = None) -> None:
        model = self.agent.model
        self.feed.positive = model.positive if model is not None else None
        self.feed(result, frame, pipeline)


def attach(app: Any, agent: Any, admin_token: str, settings: UiSettings | None = None) -> LineView | None:
    """Serve the page from ``app`` for ``agent``; call before the app's own ASGI layers are added.

    Returns the :class:`LineView` (None for the schema-only stand-in agent, which has no state dir).
    """
    from edgetl.device.routes import captures
    from edgetl.device.ui import routes
    from edgetl.device.ui.auth import SessionGate, Sessions

    settings = settings or UiSettings()
    if getattr(agent, "state", None) is None:  # openapi_document(): routes only
        app.include_router(captures.router(None))
        return None
    view = LineView(agent, settings)
    agent.frame_observers.append(view.observe)
    sessions = Sessions(admin_token, settings.viewer_token)
    app.include_router(routes.router(view, sessions))
    app.include_router(captures.router(view.captures))
    app.add_middleware(SessionGate, sessions=sessions)
    return view
