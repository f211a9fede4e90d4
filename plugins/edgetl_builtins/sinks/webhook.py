"""``webhook`` sink: POST each result as JSON, with retry and exponential backoff.

A receiver that is down must not stop the line: after ``retries`` the result
is counted as failed (``writer.stats``) and logged, and the pipeline goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from edgetl.api import Frame, Sink, SinkWriter
from edgetl.errors import ConfigError

log = logging.getLogger("edgetl.sinks.webhook")
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class WebhookWriter(SinkWriter):
    """Posts results; ``stats`` counts ``sent``, ``retried`` and ``failed`` posts."""

    def __init__(self, url: str, headers: dict[str, str], retries: int, backoff_s: float,
                 timeout_s: float, verify: bool | str):
        import httpx

        self.url, self.retries, self.backoff_s = url, retries, backoff_s
        self.client = httpx.Client(headers=headers, timeout=timeout_s, verify=verify)
        self.stats = {"sent": 0, "retried": 0, "failed": 0}

    def write(self, result: dict[str, Any], frame: Frame | None = None) -> None:
        import httpx

        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retried"] += 1
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self.client.post(self.url, json=result)
            except httpx.HTTPError as exc:
                reason = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code < 300:
                self.stats["sent"] += 1
                return
            reason = f"HTTP {response.status_code}"
            if response.status_code not in RETRY_STATUS:
                break
        self.stats["failed"] += 1
        log.warning("webhook %s: result dropped after %d attempt(s): %s", self.url, attempt + 1, reason)

    def close(self) -> None:
        self.client.close()


class WebhookSink(Sink):
    name = "webhook"
    description = "POST each result as JSON (options: url, headers, retries=3, backoff_s=0.5, timeout_s=5, ca)"
    requires = ("httpx",)
    extra = "agent"

    def open(self, options: dict[str, Any]) -> SinkWriter:
        url = options.get("url")
        if not url or not str(url).startswith(("http://", "https://")):
            raise ConfigError("sink 'webhook': option 'url' is required and must start with http:// or https://")
        try:
            retries = int(options.get("retries", 3))
            backoff = float(options.get("backoff_s", 0.5))
            timeout = float(options.get("timeout_s", 5.0))
        except (TypeError, ValueError):
            raise ConfigError("sink 'webhook': retries, backoff_s and timeout_s must be numbers") from None
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ConfigError("sink 'webhook': retries and backoff_s must be >= 0, timeout_s > 0")
        headers = {str(k): str(v) for k, v in (options.get("headers") or {}).items()}
        return WebhookWriter(str(url), headers, retries, backoff, timeout, options.get("ca") or True)
