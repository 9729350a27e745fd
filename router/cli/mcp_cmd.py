"""``aibox-router mcp``: the MCP server exposing the local models to Claude Code."""

from __future__ import annotations

import asyncio
import logging
import sys

import click

from . import config_option
from .common import load_or_exit


@click.command()
@config_option
@click.option("--transport", type=click.Choice(["stdio", "http"]), default="stdio", show_default=True,
              help="stdio for `claude mcp add`; http serves streamable HTTP at http://HOST:PORT/mcp "
                   "without keys (the router's own /mcp checks client keys).")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP transport: address to bind.")
@click.option("--port", default=8089, show_default=True, type=click.IntRange(1, 65535),
              help="HTTP transport: port.")
def mcp(config_path: str | None, transport: str, host: str, port: int) -> None:
    """Serve the MCP tools ask_local, list_local_models and usage_report on the aibox itself.

    From a developer machine use the running router's /mcp instead (client key required):

    \b
    Register with Claude Code:
      on the aibox:  claude mcp add aibox-local -- aibox-router mcp -c /etc/aibox-router/config.yml
      elsewhere:     claude mcp add --transport http aibox http://AIBOX:8088/mcp \\
                       --header "Authorization: Bearer KEY"
    """
    config = load_or_exit(config_path)
    # stdout carries the protocol on stdio: every log line goes to stderr.
    logging.basicConfig(stream=sys.stderr, level=getattr(logging, config.server.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ..mcp_server import serve  # the MCP SDK (slow to import): loaded only when mcp runs

    try:
        asyncio.run(serve(config, "stdio" if transport == "stdio" else "http", host, port))
    except KeyboardInterrupt:
        pass
