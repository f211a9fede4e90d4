"""A small client for one agent: every call names the device in its errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgetl.errors import DeployError

POLL_S = 0.2  # the longest wait between two status polls
POLL_FIRST_S = 0.02  # the first: short installs end in a fraction of a second


class DeviceClient:
    """Talks to one agent at ``url`` with a bearer token.

    Args:
        url: ``https://host:8470`` (or ``http://`` for loopback/trusted networks).
        token: the bearer token.
        ca: a CA bundle (PEM) for agents with their own CA; None uses the system's.
        timeout_s: per-request timeout in seconds (an upload streams without a total limit).
        name: how the device is called in messages (defaults to the URL).
    """

    def __init__(self, url: str, token: str, ca: str | Path | None = None, timeout_s: float = 30.0,
                 name: str | None = None):
        import httpx

        self.url, self.name = url.rstrip("/"), name or url
        if not self.url.startswith(("http://", "https://")):
            example = f"https://{self.url}" + ("" if ":" in self.url else ":8470")
            raise DeployError(f"{url}: a device URL starts with https:// (or http:// on a trusted network), "
                              f"e.g. {example}")
        if ca is not None and not Path(ca).is_file():
            raise DeployError(f"--ca {ca}: file not found")
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"},
                                  verify=str(ca) if ca else True, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "DeviceClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, method: str, path: str, expect: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise DeployError(f"{self.name}: {method} {path} timed out") from None
        except httpx.ConnectError as exc:
            hint = ""
            if "refused" in str(exc).lower():
                url = httpx.URL(self.url)
                hint = (f"; is `edgetl agent serve` running on {url.host} port "
                        f"{url.port or (443 if url.scheme == 'https' else 80)}?")
            raise DeployError(f"{self.name}: cannot connect ({_reason(exc)}){hint}") from None
        except httpx.HTTPError as exc:
            raise DeployError(f"{self.name}: {method} {path} failed ({type(exc).__name__}: {exc})") from None
        if response.status_code in expect:
            return response.json() if response.headers.get("content-type", "").startswith("application/json") \
                else response.text
        try:
            message = response.json().get("error") or response.text
        except (ValueError, AttributeError):
            message = response.text[:200]
        if response.status_code == 401 and message == response.text[:200]:  # no {"error": …}: not our agent
            raise DeployError(f"{self.name}: HTTP 401 from a server that is not an edgetl agent: check the URL")
        if response.status_code == 401:
            raise DeployError(f"{self.name}: an edgetl agent answers there but does not accept this token: it is "
                              "not the agent the token belongs to (another agent on that port? start yours with "
                              "--port 0 --port-file F), or --token-file / the fleet's token is not its token")
        err = DeployError(f"{self.name}: {message} (HTTP {response.status_code})")
        err.status_code = response.status_code
        raise err

    # -- the API -------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/v1/health")

    def info(self) -> dict[str, Any]:
        return self._request("GET", "/v1/info")

    def set_threshold(self, value: float) -> dict[str, Any]:
        """``PATCH /v1/model/threshold``: the current model's operating threshold (the next install resets it)."""
        return self._request("PATCH", "/v1/model/threshold", json={"threshold": value})

    def rollback(self) -> dict[str, Any]:
        return self._request("POST", "/v1/model/rollback")

    def install_status(self, install_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/model/install/{install_id}")

    def upload(self, bundle: str | Path, allow_downgrade: bool = False) -> str:
        """Stream the bundle file to ``PUT /v1/model``; return the install id.

        ``allow_downgrade``: install even if the device serves a newer ``bundle_version``.
        """
        bundle = Path(bundle)
        size = bundle.stat().st_size

        def chunks():
            with bundle.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        params = {"allow_downgrade": "true"} if allow_downgrade else None
        doc = self._request("PUT", "/v1/model", expect=(202,), content=chunks(), params=params,
                            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
        return doc["install_id"]

    def wait_install(self, install_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
                     timeout_s: float = 3600.0) -> dict[str, Any]:
        """Poll the install until it is ``installed`` or ``failed``; return the final status."""
        deadline = time.monotonic() + timeout_s
        last = None
        wait = POLL_FIRST_S
        while True:
            status = self.install_status(install_id)
            key = (status["stage"], round(status["progress"], 2), status.get("detail"))
            if on_progress is not None and key != last:
                on_progress(status)
                last = key
            if status["status"] in ("installed", "failed"):
                return status
            if time.monotonic() > deadline:
                raise DeployError(f"{self.name}: install {install_id} still at '{status['stage']}' after "
                                  f"{timeout_s:.0f} s")
            time.sleep(wait)
            wait = min(POLL_S, wait * 1.5)


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]
