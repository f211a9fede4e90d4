"""timm's hub download without a minute of retries when the machine has no network.

``timm.create_model(NAME, pretrained=True)`` fetches the weights from the
Hugging Face hub, or reads them from its cache. Offline, huggingface_hub
retries the connection with back-off for about a minute before it gives up, and
only then looks in the cache. So before a download this module opens one TCP
connection to the hub (or to the HTTPS proxy that would carry the request),
bounded by :data:`PROBE_TIMEOUT_S` including the name lookup; when that fails
the weights are read from the cache alone (huggingface_hub's offline mode for
that one call), and when they are not there the error says so at once, with
how to get them. ``HF_HUB_OFFLINE``/``EDGETL_OFFLINE`` skip the probe.
"""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


def offline_by_setting() -> bool:
    return any(os.environ.get(v, "") not in ("", "0", "false") for v in ("HF_HUB_OFFLINE", "EDGETL_OFFLINE"))


def hub_address() -> tuple[str, int]:
    """(host, port) a download connects to first: the HTTPS proxy if one applies, else the hub (``HF_ENDPOINT``)."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    proxy = urllib.request.getproxies().get(endpoint.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return target.hostname or host, target.port or (443 if target.scheme == "https" else 80)
    return host, endpoint.port or (443 if endpoint.scheme != "http" else 80)


def reachable(address: tuple[str, int], timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether one TCP connection to ``address`` opens within ``timeout`` s, name lookup included.

    The lookup runs in a daemon thread: ``socket.create_connection``'s timeout
    does not bound ``getaddrinfo``, which can wait on an absent DNS server.
    """
    answer: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=probe, name="edgetl-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


@contextmanager
def _cache_only():
    """huggingface_hub's offline mode for the calls inside (it reads the flag per request)."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def create_pretrained(name: str, arch: str, create: Callable[[], Any]) -> Any:
    """``create()`` (timm's ``create_model(…, pretrained=True)``) from the cache when the hub is out of reach.

    Raises an ``EdgetlError`` of one line when the weights are neither cached
    nor downloadable; ``name`` is the backbone's (``timm:resnet18``).
    """
    from edgetl.errors import EdgetlError

    how = (f"download them once where there is internet (python -c \"import timm; timm.create_model('{arch}', "
           f"pretrained=True)\") and copy the cache ({_cache_dir()}) here, or set backbone.weights: PATH "
           "or pretrained: false")
    if offline_by_setting():
        why = "downloads are off (HF_HUB_OFFLINE/EDGETL_OFFLINE)"
    else:
        address = hub_address()
        if reachable(address):
            try:
                return create()
            except Exception as exc:
                raise EdgetlError(f"backbone {name}: could not fetch pretrained weights from timm's hub "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  "offline, give backbone.weights: PATH") from None
        why = f"no network: {address[0]}:{address[1]} cannot be reached (one connection, {PROBE_TIMEOUT_S:g} s limit)"
    try:
        with _cache_only():
            return create()
    except OSError:  # huggingface_hub's LocalEntryNotFoundError: not in the cache
        raise EdgetlError(f"backbone {name}: its pretrained weights are not in the local cache and {why}; "
                          f"{how}") from None
