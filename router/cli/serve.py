"""``aibox-router serve``: run the gateway."""

from __future__ import annotations

import logging

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

    from ..server import create_app

    config = load_or_exit(config_path)
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config_path, config)
    uvicorn.run(app, host=host or config.server.host, port=port or config.server.port,
                log_level=config.server.log_level, access_log=False, server_header=False,
                # Claude Code keeps connections open between turns; don't drop idle ones too eagerly.
                timeout_keep_alive=75)
