"""``edgetl agent serve``: the device agent (FastAPI + uvicorn, no torch)."""

from __future__ import annotations

import click

from edgetl.cli.pull_options import pull_options

MIN_TOKEN_CHARS = 16  # a bearer token is the device's only password: refuse one a person could guess


@click.group("agent")
def agent_group() -> None:
    """Run the device agent."""


@agent_group.command("serve")
@click.option("--state-dir", required=True, type=click.Path(file_okay=False),
              help="Where models, the journal and the pipeline config live (created if missing).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8470, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on; 0 takes a free one (the log line and --port-file say which).")
@click.option("--port-file", type=click.Path(dir_okay=False),
              help="Write the port listened on to this file once the agent has started (for "
                   "'edgetl device wait --port-file').")
@click.option("--token-file", required=True, type=click.Path(dir_okay=False),
              help="File whose first line is the bearer token clients must send.")
@click.option("--trust", "trust", multiple=True, required=True, type=click.Path(dir_okay=False),
              help="Public key (KEY.pub) whose signatures are accepted; repeat for several.")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="TLS private key (PEM).")
@click.option("--max-bundle-mb", default=512, show_default=True, type=click.IntRange(min=1),
              help="Largest bundle accepted (upload and unpacked size), in MiB.")
@click.option("--max-members", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Most members a bundle may hold (checked from the zip directory).")
@click.option("--max-image-mb", default=32.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Largest /v1/predict body, in MiB.")
@click.option("--max-image-mpix", default=40.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Largest image (width x height, in megapixels, read from its header before decoding).")
@click.option("--upload-idle-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds an upload may send nothing before it is dropped (408) and the install slot freed; "
                   "also the window of its minimum rate and the idle limit of any request body.")
@click.option("--data-root", "data_roots", multiple=True, type=click.Path(file_okay=False),
              help="Folder pipeline sources and sinks may use (repeat for several; default: STATE-data beside "
                   "the state dir). The state dir itself is always refused.")
@click.option("--max-connections", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Open connections in all; more are answered 503 and closed.")
@click.option("--max-connections-per-client", default=64, show_default=True, type=click.IntRange(min=1),
              help="Open connections from one client address; more are answered 503 and closed.")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="Seconds a request head may take to arrive in full before the connection is closed.")
@click.option("--max-inflight", default=2, show_default=True, type=click.IntRange(min=1),
              help="Predictions decoding and running at once (sized for an 8 GB device).")
@click.option("--max-queued", default=16, show_default=True, type=click.IntRange(min=0),
              help="Predictions waiting for a slot; more are answered 503 with Retry-After.")
@click.option("--metrics-token/--open-metrics", default=None,
              help="Whether /metrics needs the bearer token [default: yes unless --host is loopback].")
@click.option("--autostart", is_flag=True, help="Start the saved pipeline at boot even if it was stopped.")
@click.option("--insecure-http", is_flag=True, help="Allow a bind beyond loopback without TLS.")
@click.option("--strict-int8", is_flag=True,
              help="Refuse INT8 bundles chosen for CPU features this CPU lacks (default: warn; the reference "
                   "check decides).")
@click.option("--viewer-token-file", type=click.Path(dir_okay=False),
              help="File holding the viewer token: it opens the line's page (/ui) read-only.")
@click.option("--capture-mb", default=256.0, show_default=True, type=click.FloatRange(min=1),
              help="Quota of the capture store (STATE/capture: marked frames and sampled close calls).")
@click.option("--ui-fps", default=10.0, show_default=True, type=click.FloatRange(min=0.1, max=30),
              help="Most live pictures the line's page draws per second, all browsers together.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@pull_options
def serve_cmd(state_dir, host, port, port_file, token_file, trust, tls_cert, tls_key, max_bundle_mb, max_members,
              max_image_mb, max_image_mpix, upload_idle_timeout, data_roots, max_connections,
              max_connections_per_client, header_timeout, max_inflight, max_queued, metrics_token, autostart,
              insecure_http, strict_int8, viewer_token_file, capture_mb, ui_fps, log_level, **pull) -> None:
    """Serve the agent API: install signed bundles, predict, run the camera pipeline.

    \b
      edgetl agent serve --state-dir /var/lib/edgetl --token-file /etc/edgetl/token \\
          --trust /etc/edgetl/release.pub --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
    """
    import logging

    from edgetl.cli.pull_options import pull_settings
    from edgetl.device.limits import MIB, Limits
    from edgetl.device.server import read_token, serve
    from edgetl.device.ui import UiSettings
    from edgetl.errors import ConfigError

    token = read_token(token_file)
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{token_file}: the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}, "
                          f"e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > {token_file}")

    pull_config, status = pull_settings(**pull)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    viewer_token = read_token(viewer_token_file) if viewer_token_file else None
    if viewer_token is not None and len(viewer_token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{viewer_token_file}: the viewer token has {len(viewer_token)} characters; use at "
                          f"least {MIN_TOKEN_CHARS}")
    if viewer_token is not None and viewer_token == token:
        raise ConfigError(f"{viewer_token_file}: the viewer token is the admin token; give it its own")
    ui = UiSettings(viewer_token=viewer_token, capture_bytes=int(capture_mb * MIB), live_fps=ui_fps)
    limits = Limits(members=max_members, image_bytes=int(max_image_mb * MIB),
                    image_pixels=int(max_image_mpix * 1_000_000), upload_idle_s=upload_idle_timeout,
                    data_roots=tuple(data_roots), max_connections=max_connections,
                    max_connections_per_client=max_connections_per_client, header_timeout_s=header_timeout,
                    max_inflight=max_inflight, max_queued=max_queued, metrics_token=metrics_token)
    serve(state_dir=state_dir, host=host, port=port, token_file=token_file, trust=list(trust), tls_cert=tls_cert,
          tls_key=tls_key, max_bundle_mb=max_bundle_mb, autostart=autostart, insecure_http=insecure_http,
          strict_int8=strict_int8, log_level=log_level, limits=limits, ui=ui, pull=pull_config, status=status,
          port_file=port_file)
