"""``aibox-router serve``: run the gateway."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from . import config_option
from .common import load_or_exit


@click.command()
@config_option
@click.option("--host", default=None, help="Listen address (default: server.host from the config).")
@click.option("--port", type=int, default=None, help="Listen port (default: server.port from the config).")
def serve(config_path: str | None, host: str | None, port: int | None) -> None:
    """Serve the Anthropic- and OpenAI-compatible API. SIGHUP reloads the config file."""
    import uvicorn

    from ..http_guard import HeadLimits, guarded_protocol
    from ..server import create_app, render_for_path

    config = load_or_exit(config_path)
    _check_state_dir(config.server.state_dir, config_path)
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config_path, config)
    server = config.server
    # Connection-level limits are fixed when the server starts; a SIGHUP reload does not change them.
    protocol = guarded_protocol(HeadLimits(max_header_bytes=server.max_header_bytes,
                                           header_timeout_s=server.header_timeout_s), render_for_path)
    uvicorn.run(app, host=host or server.host, port=port or server.port,
                log_level=server.log_level, access_log=False, server_header=False, http=protocol,
                # Claude Code keeps connections open between turns; don't drop idle ones too eagerly.
                timeout_keep_alive=server.keep_alive_timeout_s,  # type: ignore[arg-type]
                limit_concurrency=server.max_connections)


def _check_state_dir(state_dir: str, config_path: str | None) -> None:
    """Fail with the key and the reason, not a traceback, when the ledger's directory is unusable."""
    where = f"{config_path or 'the embedded default config'}: server.state_dir {state_dir}"
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"{where}: cannot create it: {e.strerror}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise click.ClickException(f"{where}: not writable by this user (the ledger lives there)")
