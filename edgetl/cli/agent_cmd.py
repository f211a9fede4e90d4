"""``edgetl agent serve``: the device agent (FastAPI + uvicorn, no torch)."""

from __future__ import annotations

import click

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
              help="Seconds an upload may send nothing before it is dropped (408) and the install slot freed.")
@click.option("--data-root", "data_roots", multiple=True, type=click.Path(file_okay=False),
              help="Folder pipeline sources and sinks may use (repeat for several; default: the state dir).")
@click.option("--autostart", is_flag=True, help="Start the saved pipeline at boot even if it was stopped.")
@click.option("--insecure-http", is_flag=True, help="Allow a bind beyond loopback without TLS.")
@click.option("--strict-int8", is_flag=True,
              help="Refuse INT8 bundles chosen for CPU features this CPU lacks (default: warn; the reference "
                   "check decides).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
def serve_cmd(state_dir, host, port, port_file, token_file, trust, tls_cert, tls_key, max_bundle_mb, max_members,
              max_image_mb, max_image_mpix, upload_idle_timeout, data_roots, autostart, insecure_http,
              strict_int8, log_level) -> None:
    """Serve the agent API: install signed bundles, predict, run the camera pipeline.

    \b
      edgetl agent serve --state-dir /var/lib/edgetl --token-file /etc/edgetl/token \\
          --trust /etc/edgetl/release.pub --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem
    """
    import logging

    from edgetl.device.limits import MIB, Limits
    from edgetl.device.server import read_token, serve
    from edgetl.errors import ConfigError

    token = read_token(token_file)
    if len(token) < MIN_TOKEN_CHARS:
        raise ConfigError(f"{token_file}: the token has {len(token)} characters; use at least {MIN_TOKEN_CHARS}, "
                          f"e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > {token_file}")

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    limits = Limits(members=max_members, image_bytes=int(max_image_mb * MIB),
                    image_pixels=int(max_image_mpix * 1_000_000), upload_idle_s=upload_idle_timeout,
                    data_roots=tuple(data_roots))
    serve(state_dir=state_dir, host=host, port=port, token_file=token_file, trust=list(trust), tls_cert=tls_cert,
          tls_key=tls_key, max_bundle_mb=max_bundle_mb, autostart=autostart, insecure_http=insecure_http,
          strict_int8=strict_int8, log_level=log_level, limits=limits, port_file=port_file)
