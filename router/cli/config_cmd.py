"""``aibox-router config check [-c FILE | FILE]``: validate a config before it goes live."""

from __future__ import annotations

import click

from ..config_checks import config_warnings
from ..config_load import load_config
from ..context import config_warnings as context_warnings
from ..context import static_window
from ..errors import ConfigError
from . import config_option
from .common import default_config_path


@click.group()
def config() -> None:
    """Inspect and validate router configs."""


@config.command("check")
@config_option
@click.argument("path", type=click.Path(dir_okay=False), required=False)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing when the config is valid (warnings still go to "
                                                   "stderr).")
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. an unset api_key_env) as errors: exit 2.")
def check(config_path: str | None, path: str | None, quiet: bool, strict: bool) -> None:
    """Validate a config (PATH, else -c / $AIBOX_ROUTER_CONFIG, else the embedded default).

    Exits 1 with an error naming the file and the key path when it is invalid. Warnings (things
    that depend on the environment the router runs in) go to stderr and do not fail the check
    unless --strict is given.
    """
    if path and config_path and path != config_path:
        raise click.UsageError(f"two configs given: PATH {path} and -c/$AIBOX_ROUTER_CONFIG {config_path}; "
                               "pass one")
    path = path or config_path or default_config_path()
    try:
        cfg = load_config(path)
    except ConfigError as e:
        click.echo(f"config error: {e}", err=True)
        raise SystemExit(1) from None
    warnings = config_warnings(cfg) + context_warnings(cfg)
    for warning in warnings:
        click.echo(f"warning: {path}: {warning}", err=True)
    if not quiet:
        click.echo(f"{path}: OK ({len(cfg.backends)} backends, {len(cfg.targets)} targets, "
                   f"{len(cfg.rules)} rules, {len(cfg.clients)} clients; daily budget "
                   f"${cfg.budgets.daily_budget:.2f} in {cfg.budgets.timezone})"
                   + (f"; {len(warnings)} warning(s)" if warnings else ""))
        click.echo("context windows:")
        for name, target in cfg.targets.items():
            window = static_window(cfg, name)
            size = f"{window.tokens} tokens" if window.tokens is not None else "unknown"
            cap = f", output cap {target.max_output_tokens}" if target.max_output_tokens else ""
            where = "cloud" if cfg.target_is_cloud(name) else "local"
            click.echo(f"  {name} ({where}): {size} ({window.source}){cap}")
    if strict and warnings:
        raise SystemExit(2)
