"""``aibox-router config check FILE``: validate a config before it goes live."""

from __future__ import annotations

import click

from ..config import load_config
from ..errors import ConfigError


@click.group()
def config() -> None:
    """Inspect and validate router configs."""


@config.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the config is valid.")
def check(path: str, quiet: bool) -> None:
    """Validate PATH; exit 1 with an error naming the key path when it is invalid."""
    try:
        cfg = load_config(path)
    except ConfigError as e:
        click.echo(f"config error: {e}", err=True)
        raise SystemExit(1) from None
    from ..context import config_warnings, static_window

    if not quiet:
        click.echo(f"{path}: OK ({len(cfg.backends)} backends, {len(cfg.targets)} targets, "
                   f"{len(cfg.rules)} rules, {len(cfg.clients)} clients; daily budget "
                   f"${cfg.budgets.daily_budget:.2f} in {cfg.budgets.timezone})")
        click.echo("context windows:")
        for name, target in cfg.targets.items():
            window = static_window(cfg, name)
            size = f"{window.tokens} tokens" if window.tokens is not None else "unknown"
            cap = f", output cap {target.max_output_tokens}" if target.max_output_tokens else ""
            where = "cloud" if cfg.target_is_cloud(name) else "local"
            click.echo(f"  {name} ({where}): {size} ({window.source}){cap}")
    for warning in config_warnings(cfg):
        click.echo(f"warning: {warning}", err=True)
