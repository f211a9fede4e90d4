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
        upload_min_rate: an upload averaging fewer bytes per second is dropped (408), so a trickle
            cannot hold the install slot [fixed].
            The average is over a sliding window of ``upload_idle_s``: every such window of an upload
            must bring ``upload_min_rate * upload_idle_s`` bytes, not only the average since it began.
        upload_ceiling_rate: an upload may take at most ``2 x upload_idle_s + bundle_bytes /
            upload_ceiling_rate`` in all (:attr:`upload_max_s`; 572 s for 512 MiB), whatever its rate [fixed].
        data_roots: the only folders pipeline sources and sinks may touch [--data-root; default the
            folder ``STATE-data`` beside the state dir]; the state dir is refused even inside one.
        max_connections: open connections in all [--max-connections].
        max_connections_per_client: open connections from one client address [--max-connections-per-client].
        header_timeout_s: a request head must arrive in full within this many seconds [--header-timeout].
        max_inflight: decodes + inferences of ``/v1/predict`` running at once [--max-inflight].
        max_queued: predictions waiting for one of those slots; more answer 503 + Retry-After [--max-queued].
        jpeg_max_scans: most scans (SOS markers) a JPEG may hold: a progressive JPEG has about 10 [fixed].
        metrics_token: ``/metrics`` needs the bearer token [--metrics-token/--open-metrics; None (the
            default): yes when the agent listens beyond loopback, no on loopback].
    """

    bundle_bytes: int = 512 * MIB
    unpacked_bytes: int = 512 * MIB
    members: int = 10_000
    json_bytes: int = 64 * 1024
    image_bytes: int = 32 * MIB
    image_pixels: int = 40_000_000
    upload_idle_s: float = 30.0
    upload_min_rate: int = 16 * 1024
    upload_ceiling_rate: int = 1 * MIB
    data_roots: tuple[str, ...] = field(default_factory=tuple)
    max_connections: int = 1024
    max_connections_per_client: int = 64
    header_timeout_s: float = 10.0
    max_inflight: int = 2
    max_queued: int = 16
    jpeg_max_scans: int = 32
    metrics_token: bool | None = None

    @property
    def upload_max_s(self) -> float:
        """The ceiling on one upload's total time, from the bundle size cap."""
        return 2 * self.upload_idle_s + self.bundle_bytes / self.upload_ceiling_rate

    def body_limit(self, method: str, path: str) -> tuple[int, str]:
        """The body cap for one request and the flag that sets it."""
        if method == "PUT" and path == "/v1/model":
            return self.bundle_bytes, "--max-bundle-mb"
        if method == "POST" and path == "/v1/predict":
            return self.image_bytes, "--max-image-mb"
        return self.json_bytes, "the JSON body limit"
