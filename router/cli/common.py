"""Helpers shared by the subcommands: loading the config with a readable error."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import RouterConfig, load_config
from ..errors import ConfigError


def default_config_path() -> str:
    # Shipped as package data beside the code (works for wheels and editable installs alike).
    return str(Path(__file__).resolve().parent.parent / "defaults" / "config.yml")


def load_or_exit(path: str | None) -> RouterConfig:
    try:
        return load_config(path or default_config_path())
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
