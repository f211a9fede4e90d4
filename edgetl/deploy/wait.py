"""``edgetl device wait``: until an agent answers, instead of ``sleep 5`` in a script.

An agent started in the background (``edgetl agent serve … &``) listens a few
seconds later, or never (a taken port, a bad key). Polling its open
``/v1/health`` says when; with the token, an authorised ``/v1/info`` also says
that the agent answering is the one the token belongs to, not another one
left running on that port. With ``--port-file`` the port comes from the file
``agent serve --port 0 --port-file F`` writes, re-read at every try, so a file
left from an earlier run is simply replaced.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from edgetl.errors import DeployError

POLL_S = 0.2


def with_port(url: str, port_file: str | Path | None) -> str | None:
    """``url`` with the port from ``port_file`` (None while the file is missing or not yet a port)."""
    if port_file is None:
        return url.rstrip("/")
    try:
        port = int(Path(port_file).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    import httpx

    return str(httpx.URL(url).copy_with(port=port)).rstrip("/")


def wait_ready(url: str, *, port_file: str | Path | None = None, token_file: str | Path | None = None,
               ca: str | Path | None = None, timeout_s: float = 60.0,
               log: Callable[[str], None] = lambda message: None) -> str:
    """Poll until the agent answers (and accepts the token); returns its URL.

    Raises:
        DeployError: nothing answered within ``timeout_s`` (the last reason named), or an agent
            answered that refuses the token (at once: waiting will not change it).
    """
    from edgetl.deploy.client import DeviceClient
    from edgetl.device.server import read_token

    token = read_token(str(token_file)) if token_file else ""
    start, last = time.monotonic(), "no answer yet"
    while True:
        target = with_port(url, port_file)
        if target is None:
            last = f"{port_file}: no port written yet (is `edgetl agent serve --port-file {port_file}` running?)"
        else:
            with DeviceClient(target, token, ca=ca, timeout_s=5.0) as client:
                try:
                    health = client.health()
                    if token_file:
                        client.info()  # 401: another agent, or the wrong token: say so now
                    log(f"{target}: ready ({health.get('status')}) after {time.monotonic() - start:.1f} s")
                    return target
                except DeployError as exc:
                    if "does not accept this token" in str(exc) or "not an edgetl agent" in str(exc):
                        raise
                    last = str(exc)
        if time.monotonic() - start > timeout_s:
            raise DeployError(f"no agent ready after {timeout_s:g} s: {last}")
        time.sleep(POLL_S)
