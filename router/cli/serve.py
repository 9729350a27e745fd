"""``aibox-router serve``: run the gateway."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import click
import uvicorn

from ..config_checks import config_warnings
from ..http_guard import HeadLimits, guarded_protocol
from ..server import create_app, render_for_path
from . import config_option
from .common import load_or_exit


@click.command()
@config_option
@click.option("--host", default=None, help="Listen address (default: server.host from the config).")
@click.option("--port", type=int, default=None, help="Listen port (default: server.port from the config).")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Serve the Anthropic- and OpenAI-compatible API. SIGHUP reloads the config file."""
    config = load_or_exit(config_path)
    _check_state_dir(config.server.state_dir, config_path)
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("aibox_router.serve")
    for warning in config_warnings(config):
        log.warning("config: %s", warning)
    host, port = host or config.server.host, port or config.server.port
    # Bind before the app starts: a port in use must fail at once, not after "ready" was logged.
    sock = _bind(host, port)
    app = create_app(config_path, config)
    limits = config.server
    # Connection-level limits are fixed when the server starts; a SIGHUP reload does not change them.
    protocol = guarded_protocol(HeadLimits(max_header_bytes=limits.max_header_bytes,
                                           header_timeout_s=limits.header_timeout_s), render_for_path)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, log_level=limits.log_level, access_log=False, server_header=False,
        http=protocol,
        # Claude Code keeps connections open between turns; don't drop idle ones too eagerly.
        timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]
        limit_concurrency=limits.max_connections))
    server.run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise click.ClickException(f"cannot listen on {host}:{port}: {e.strerror} (server.host / server.port, "
                                   "or --host / --port; is another router already running?)") from None
    sock.set_inheritable(True)
    return sock


def _check_state_dir(state_dir: str, config_path: str | None) -> None:
    """Fail with the key and the reason, not a traceback, when the ledger's directory is unusable."""
    where = f"{config_path or 'the embedded default config'}: server.state_dir {state_dir}"
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"{where}: cannot create it: {e.strerror}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise click.ClickException(f"{where}: not writable by this user (the ledger lives there)")
