"""``aibox-router``: the daemon and the operator commands.

Subcommands are imported only when invoked, so ``aibox-router budget show`` does not pay for
loading the HTTP server, matplotlib or the MCP SDK.
"""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute" (relative to aibox_router.cli)
COMMANDS: dict[str, str] = {
    "serve": "serve:serve",
    "config": "config_cmd:config",
    "route": "route:route",
    "report": "cost_cmds:report",
    "cutoff": "cost_cmds:cutoff",
    "budget": "cost_cmds:budget",
    "status": "status:status",
    "bench": "model_bench:bench",
    "mcp": "mcp_cmd:mcp",
    "doctor": "doctor:doctor",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module_name, attr = spec.split(":")
        module = importlib.import_module(f"{__name__}.{module_name}")
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aibox-router")
def main() -> None:
    """Route Anthropic/OpenAI API calls between local models and the cloud, within a budget."""


config_option = click.option(
    "--config", "-c", "config_path", envvar="AIBOX_ROUTER_CONFIG", type=click.Path(dir_okay=False),
    default=None, show_envvar=True,
    help="Router config file (default: the embedded default config).",
)
