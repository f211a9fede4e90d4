"""Run the agent under uvicorn: bind checks, TLS, the token file, graceful stop."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.errors import ConfigError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from edgetl.device.limits import Limits
    from edgetl.device.pull import PullConfig
    from edgetl.device.ui import UiSettings

log = logging.getLogger("edgetl.agent")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(path: str | Path) -> str:
    """The token on the file's first line, whitespace stripped; a missing or empty file is an error."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise ConfigError(f"{path}: the token file is empty (expected the token on its first line)")
    return token


def check_bind(host: str, tls: bool, insecure_http: bool) -> None:
    """Refuse a bind beyond loopback without TLS, unless --insecure-http says the user means it."""
    if not is_loopback(host) and not tls and not insecure_http:
        raise UsageError(f"refusing to listen on {host} without TLS: give --tls-cert and --tls-key, "
                         "or --insecure-http if the network is trusted")


def write_port_file(path: Path, port: int) -> None:
    """The port, written to a temporary file and renamed: a reader never sees half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{port}\n", encoding="utf-8")
    os.replace(tmp, path)


def bind_socket(host: str, port: int):
    """Bind the listening socket *before* the agent starts, so a taken port is one clear error
    (not "agent ready" followed by an exit)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another agent "
                          "running there? choose another --port") from None
    sock.set_inheritable(True)
    return sock


def guarded_http(limits: "Limits") -> type:
    """uvicorn's HTTP protocol under the connection guard (:mod:`edgetl.device.connections`): caps,
    header and body timeouts, a file-descriptor limit raised to fit, accept errors logged once."""
    from edgetl.device.connections import GuardSettings, guarded_protocol, quiet_accept_errors, raise_fd_limit

    fds = raise_fd_limit(limits.max_connections + 256)  # + model files, sinks, cameras, the journal
    max_connections = min(limits.max_connections, max(16, fds - 256))
    if max_connections < limits.max_connections:
        log.warning("only %d file descriptors (LimitNOFILE): at most %d connections instead of %d", fds,
                    max_connections, limits.max_connections)
    quiet_accept_errors()
    return guarded_protocol(GuardSettings(max_connections=max_connections,
                                          max_per_client=limits.max_connections_per_client,
                                          header_timeout_s=limits.header_timeout_s,
                                          # after the upload route's own 408, so that one says why
                                          body_idle_s=2 * limits.upload_idle_s))


def serve(state_dir: str, host: str, port: int, token_file: str, trust: list[str], tls_cert: str | None,
          tls_key: str | None, max_bundle_mb: float, autostart: bool, insecure_http: bool,
          strict_int8: bool = False, log_level: str = "info", limits: "Limits | None" = None,
          ui: "UiSettings | None" = None, pull: "PullConfig | None" = None, status: dict | None = None,
          port_file: str | None = None) -> None:
    """Start the agent and serve until interrupted (SIGINT/SIGTERM); with ``pull``, poll a registry
    tag for bundles (:mod:`edgetl.device.pull`) and publish the status to ``status``'s broker.

    ``port`` 0 takes a free port; ``port_file`` receives the port listened on (written whole, once
    the agent has started), for ``edgetl device wait --port-file``.
    """
    from dataclasses import replace

    import uvicorn

    from edgetl.device.agent import Agent
    from edgetl.device.app import create_app
    from edgetl.device.limits import Limits

    if bool(tls_cert) != bool(tls_key):
        raise UsageError("--tls-cert and --tls-key go together")
    for name, value in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if value and not Path(value).is_file():
            raise ConfigError(f"{name} {value}: file not found")
    check_bind(host, bool(tls_cert), insecure_http)
    token = read_token(token_file)
    sock = bind_socket(host, port)
    limits = limits or Limits()
    if limits.metrics_token is None:  # /metrics shows the line's counts: open only on loopback by default
        limits = replace(limits, metrics_token=not is_loopback(host))
    port = sock.getsockname()[1]  # the one the OS gave for --port 0
    agent = Agent(state_dir, trust, max_bundle_mb=max_bundle_mb, autostart=autostart, strict_int8=strict_int8,
                  limits=limits)
    started = agent.startup()
    app = create_app(agent, token, ui)
    config = uvicorn.Config(app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
                            log_level=log_level, access_log=False, server_header=False,
                            timeout_keep_alive=30,  # clients and load balancers keep connections longer than 5 s
                            http=guarded_http(agent.limits))
    if port_file:
        write_port_file(Path(port_file), port)
    log.info("agent ready on %s:%d: model %s%s", host, port, started["model"] or "none",
             f" (degraded: {agent.degraded})" if agent.degraded else "")
    puller = None
    if pull is not None:
        from edgetl.device.pull import start_pull

        puller = start_pull(agent, pull, status)
        log.info("pulling %s every %g s", pull.ref, pull.interval)
    try:
        uvicorn.Server(config).run(sockets=[sock])  # the app's lifespan stops the pipeline on SIGTERM/SIGINT
    finally:
        if puller is not None:
            puller.stop()
