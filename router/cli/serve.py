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

    from ..server import create_app

    config = load_or_exit(config_path)
    _check_state_dir(config.server.state_dir, config_path)
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(config_path, config)
    uvicorn.run(app, host=host or config.server.host, port=port or config.server.port,
                log_level=config.server.log_level, access_log=False, server_header=False,
                # Claude Code keeps connections open between turns; don't drop idle ones too eagerly.
                timeout_keep_alive=75)


def _check_state_dir(state_dir: str, config_path: str | None) -> None:
    """Fail with the key and the reason, not a traceback, when the ledger's directory is unusable."""
    where = f"{config_path or 'the embedded default config'}: server.state_dir {state_dir}"
    try:
        Path(state_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise click.ClickException(f"{where}: cannot create it: {e.strerror}") from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise click.ClickException(f"{where}: not writable by this user (the ledger lives there)")
