"""Loading the router config: read the file, YAML strictly, ``${ENV}`` references, the schema
(config.py), the embedded price table, then the cross-checks (config_checks.py).

config.py is the schema alone; whatever reads a config file goes through ``load_config`` here.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import yaml

from .config import BackendConfig, PriceConfig, RouterConfig, TargetConfig
from .config_checks import cross_check_problems, explain_schema_error, load_yaml_strict, raise_problems
from .errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate_env(value: Any, env: dict[str, str], path: str = "") -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set "
                              f"(referenced as ${{{name}}}); set it or use ${{{name}:-default}}")

        return _ENV_REF.sub(repl, value)
    if isinstance(value, dict):
        return {k: interpolate_env(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate_env(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _msgspec_path_to_dotted(msg: str) -> str:
    # msgspec says "... - at `$.rules[0].target`"; show "rules[0].target: ..." instead.
    m = re.search(r" - at `\$\.?([^`]*)`$", msg)
    if not m:
        return msg
    return f"{m.group(1) or '<root>'}: {msg[: m.start()]}"


_NAMED_SECTIONS: dict[str, type] = {"backends": BackendConfig, "targets": TargetConfig}


def _locate(data: dict[str, Any], msg: str) -> str:
    """msgspec reports entries of name->struct mappings as ``targets[...]``; find the entry's name."""
    section = msg.split(" - at `$.", 1)[-1].split("[...]", 1)[0]
    struct = _NAMED_SECTIONS.get(section)
    if "[...]" in msg and struct is not None and isinstance(data.get(section), dict):
        for name, entry in data[section].items():
            try:
                msgspec.convert(entry, struct, strict=False)
            except msgspec.ValidationError as inner:
                text = str(inner)
                if " - at `$" not in text:
                    return f"{section}.{name}: {text}"
                return _msgspec_path_to_dotted(text.replace("`$", f"`$.{section}.{name}", 1))
    return _msgspec_path_to_dotted(msg)


def parse_config(data: Any, source: str = "<config>", env: dict[str, str] | None = None) -> RouterConfig:
    """Validate an already-parsed YAML tree; raise ConfigError naming *source* and the key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, found {type(data).__name__}")
    try:
        data = interpolate_env(data, dict(os.environ) if env is None else env)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    budgets = data.get("budgets", {})
    if isinstance(budgets, dict):  # anything else is refused by the schema below, naming the key
        data = {**data, "budgets": {**embedded_budgets(), **budgets}}
    try:
        cfg = msgspec.convert(data, RouterConfig, strict=False)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{source}: {explain_schema_error(RouterConfig, _locate(data, str(e)))}") from None
    cfg = msgspec.structs.replace(cfg, prices=merge_prices(embedded_prices(), cfg.prices or []))
    raise_problems(source, cross_check_problems(cfg))
    return cfg


# Shipped as package data beside the code (works for wheels and editable installs alike).
DEFAULT_CONFIG_PATH = Path(__file__).parent / "defaults" / "config.yml"


def default_config_path() -> str:
    return str(DEFAULT_CONFIG_PATH.resolve())


@functools.cache
def _shipped_config() -> dict[str, Any]:
    """``defaults/config.yml`` parsed once: the embedded prices and budget defaults both come from it
    (never mutated; callers copy what they hand out)."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {}


@functools.cache
def embedded_prices() -> tuple[PriceConfig, ...]:
    """The price table shipped with the router: the ``prices`` of ``defaults/config.yml``, its one home."""
    try:
        return tuple(msgspec.convert(_shipped_config()["prices"], list[PriceConfig], strict=False))
    except (KeyError, TypeError, msgspec.ValidationError) as e:  # a packaging bug, not an operator's
        raise ConfigError(f"{DEFAULT_CONFIG_PATH}: prices: the embedded price table is invalid: {e}") from None


def embedded_budgets() -> dict[str, Any]:
    """The budget defaults shipped with the router: the ``budgets`` of ``defaults/config.yml``, their
    one home. A config's ``budgets`` keys are laid over them."""
    budgets = _shipped_config().get("budgets")
    if not isinstance(budgets, dict):  # a packaging bug, not an operator's
        raise ConfigError(f"{DEFAULT_CONFIG_PATH}: budgets: the shipped budget defaults are missing")
    return dict(budgets)


def merge_prices(base: Sequence[PriceConfig], overrides: Sequence[PriceConfig]) -> list[PriceConfig]:
    """The embedded table with a config's ``prices`` laid over it.

    An entry whose ``prefix`` equals an embedded one replaces that entry whole; any other entry is
    added. Lookups then take the longest matching prefix over the merged table, so an added
    ``claude-sonnet-4`` does not shadow the embedded, more specific ``claude-sonnet-4-6``.
    """
    merged = {p.prefix: p for p in base}
    merged.update({p.prefix: p for p in overrides})
    return list(merged.values())


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> RouterConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
    try:
        data = load_yaml_strict(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{p}: the file is empty (or only comments); expected the router config mapping "
                          "(see router/defaults/config.yml)")
    return parse_config(data, str(p), env)
