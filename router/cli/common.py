"""Helpers shared by the subcommands: loading the config with a readable error."""

from __future__ import annotations

import click

from ..config import RouterConfig
from ..config_load import default_config_path, load_config
from ..errors import ConfigError

__all__ = ["default_config_path", "load_or_exit"]


def load_or_exit(path: str | None) -> RouterConfig:
    try:
        return load_config(path or default_config_path())
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
