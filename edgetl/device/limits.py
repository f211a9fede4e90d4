"""Every bound the agent puts on what a client sends: one place, one table in docs/deploy.md.

An input the agent reads is bounded *before* it costs memory: request bodies by
their Content-Length and again while they stream, bundles by their zip
directory before a member is read, images by their header before they are
decoded. The defaults are sized for an 8 GB Jetson serving one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024

# Metrics label values are bounded: any other method is counted as "other", any path no route
# matches as "unmatched", so a client cannot grow /metrics by inventing names.
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True)
class Limits:
    """The agent's input limits (flags of ``edgetl agent serve`` in brackets).

    Attributes:
        bundle_bytes: largest bundle upload [--max-bundle-mb].
        unpacked_bytes: largest total uncompressed size of a bundle's members, checked from the
            zip directory and again while streaming [--max-bundle-mb, the same figure].
        members: most members a bundle may hold [--max-members].
        json_bytes: largest JSON request body (threshold, pipeline) [fixed].
        image_bytes: largest ``/v1/predict`` body [--max-image-mb].
        image_pixels: largest width x height an image may declare in its header [--max-image-mpix].
        upload_idle_s: an upload that sends nothing for this long is dropped (408) [--upload-idle-timeout].
        upload_min_rate: after its first ``upload_idle_s``, an upload averaging fewer bytes per second
            is dropped (408), so a trickle cannot hold the install slot [fixed].
        data_roots: the only folders pipeline sources and sinks may touch [--data-root; default the state dir].
    """

    bundle_bytes: int = 512 * MIB
    unpacked_bytes: int = 512 * MIB
    members: int = 10_000
    json_bytes: int = 64 * 1024
    image_bytes: int = 32 * MIB
    image_pixels: int = 40_000_000
    upload_idle_s: float = 30.0
    upload_min_rate: int = 16 * 1024
    data_roots: tuple[str, ...] = field(default_factory=tuple)

    def body_limit(self, method: str, path: str) -> tuple[int, str]:
        """The body cap for one request and the flag that sets it."""
        if method == "PUT" and path == "/v1/model":
            return self.bundle_bytes, "--max-bundle-mb"
        if method == "POST" and path == "/v1/predict":
            return self.image_bytes, "--max-image-mb"
        return self.json_bytes, "the JSON body limit"
