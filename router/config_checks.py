"""Config validation beyond the schema: strict YAML, helpful messages, value checks, warnings.

config.py owns the schema (the typed structures); this module owns what makes a rejection useful
to an operator and the checks that catch configs which would load but then fail at request time:

* duplicate keys in the YAML (PyYAML silently keeps the last one);
* a typo'd key gets "did you mean ...?" with the allowed keys; a bad enum value lists the values;
* numbers that cannot be right (negative budgets and timeouts, port 0), an ``openai`` base URL
  without ``/v1``, a client budget above the daily budget;
* warnings (not errors) for things that depend on the environment the router runs in, such as a
  cloud backend whose ``api_key_env`` is not set where the check runs.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import yaml

from . import rules as rules_mod
from .config import RouterConfig, ServerConfig
from .context import context_problems
from .errors import ConfigError
from .pricing import find_price
from .route_policies import route_problems

# -- strict YAML ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (the last one would silently win)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # an unhashable key: let the normal constructor report it
            continue
        if duplicate:
            first = seen[key].start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first defined on line {first}; the last one would "
                            "silently win): remove one", key_node.start_mark)
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml_strict(text: str) -> Any:
    """``yaml.safe_load`` that rejects duplicate keys."""
    return yaml.load(text, Loader=_StrictLoader)


# -- helpful schema errors -----------------------------------------------------------------------


def _struct_at(root: type, path: str) -> Any:
    """The schema type at a msgspec error path such as ``backends[...].type`` or ``rules[0]``."""
    current: Any = root
    for part in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|\[[^\]]*\]", path):
        current = _unwrap(current)
        if part.startswith("[") or typing.get_origin(current) is dict:  # a list index or a mapping's key
            args = typing.get_args(current)
            current = args[-1] if args else None
        else:
            hints = typing.get_type_hints(current) if isinstance(current, type) else {}
            current = hints.get(part)
        if current is None:
            return None
    return _unwrap(current)


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def explain_schema_error(root: type, message: str) -> str:
    """Add the allowed keys and the nearest match to an unknown-key error, the values to an enum error.

    *message* is msgspec's text with its path already turned into ``key.path: ...``.
    """
    if message.startswith(("Object contains unknown field", "Invalid enum value")):
        message = f"<root>: {message}"  # msgspec names no path for the top level
    m = re.match(r"^(?P<path>[^:]*): Object contains unknown field `(?P<key>[^`]*)`$", message)
    if m:
        path, key = m.group("path"), m.group("key")
        struct = _struct_at(root, "" if path == "<root>" else path)
        if isinstance(struct, type) and issubclass(struct, msgspec.Struct):
            allowed = list(struct.__struct_fields__)
            where = key if path == "<root>" else f"{path}.{key}"
            text = f"{where}: unknown key"
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            if close:
                text += f"; did you mean {close[0]!r}?"
            return f"{text} (allowed keys here: {', '.join(allowed)})"
    m = re.match(r"^(?P<path>[^:]*): Invalid enum value (?P<value>.*)$", message)
    if m:
        tp = _struct_at(root, m.group("path"))
        values = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else ()
        if values:
            return (f"{m.group('path')}: {m.group('value')} is not one of the allowed values: "
                    + ", ".join(repr(v) for v in values))
    return message


# -- value checks --------------------------------------------------------------------------------


def value_problems(cfg: Any) -> list[str]:
    """Values the schema accepts but the router cannot work with. *cfg* is a RouterConfig."""
    problems: list[str] = []
    port = cfg.server.port
    if not 1 <= port <= 65535:
        problems.append(f"server.port: expected a port between 1 and 65535, found {port}")
    if cfg.server.max_body_bytes <= 0:
        problems.append(f"server.max_body_bytes: expected a positive number, found {cfg.server.max_body_bytes}")
    for name, backend in cfg.backends.items():
        for key in ("connect_timeout_s", "read_timeout_s"):
            value = getattr(backend, key)
            if value <= 0:
                problems.append(f"backends.{name}.{key}: expected a number of seconds > 0, found {value}")
        if backend.type == "openai" and not backend.base_url.rstrip("/").endswith("/v1"):
            problems.append(f"backends.{name}.base_url: an openai backend's URL must end in /v1 (the router "
                            f"appends /chat/completions), found {backend.base_url!r}; try "
                            f"{backend.base_url.rstrip('/') + '/v1'!r}")
    daily = cfg.budgets.daily_budget
    for i, client in enumerate(cfg.clients):
        budget = client.daily_budget
        if budget is None:
            continue
        if budget < 0:
            problems.append(f"clients[{i}].daily_budget: client {client.name!r} has a negative budget ({budget})")
        elif budget > daily:
            problems.append(f"clients[{i}].daily_budget: client {client.name!r} may spend ${budget:.2f}, more than "
                            f"budgets.daily_budget ${daily:.2f}; lower it or raise the daily budget")
    for key in ("daily_budget", "alert_threshold", "emergency_cutoff"):
        value = getattr(cfg.budgets, key)
        if value < 0:
            problems.append(f"budgets.{key}: expected an amount >= 0, found {value}")
    if cfg.budgets.reserve_output_tokens_cap <= 0:
        problems.append("budgets.reserve_output_tokens_cap: expected a positive number of tokens, found "
                        f"{cfg.budgets.reserve_output_tokens_cap}")
    if cfg.alerts.retry_attempts < 1:
        problems.append(f"alerts.retry_attempts: expected at least 1, found {cfg.alerts.retry_attempts}")
    if cfg.alerts.retry_backoff_s < 0:
        problems.append(f"alerts.retry_backoff_s: expected a number >= 0, found {cfg.alerts.retry_backoff_s}")
    for name, target in cfg.targets.items():
        if target.max_output_tokens is not None and target.max_output_tokens <= 0:
            problems.append(f"targets.{name}.max_output_tokens: expected a positive number, found "
                            f"{target.max_output_tokens}")
    return problems


# -- warnings ------------------------------------------------------------------------------------


def config_warnings(cfg: Any, env: Mapping[str, str] | None = None) -> list[str]:
    """What is valid but will not work in *env* (default: this process's environment)."""
    env = os.environ if env is None else env
    warnings: list[str] = []
    for name, backend in cfg.backends.items():
        if backend.api_key_env and not env.get(backend.api_key_env):
            effect = ("every call to it falls back to other targets" if backend.is_cloud
                      else "it is called without a key")
            warnings.append(f"backends.{name}.api_key_env: environment variable {backend.api_key_env} is not set "
                            f"here, so {effect} (the router reads it from its own environment, e.g. "
                            "/etc/aibox-router/env)")
        elif backend.type == "anthropic" and not backend.api_key_env:
            warnings.append(f"backends.{name}: an anthropic backend without api_key_env has no API key; every "
                            "call to it falls back to other targets")
    if not cfg.clients:
        warnings.append("clients: none configured, so the router accepts requests without a key")
    return warnings


def raise_problems(source: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"{source}: " + problems[0] if len(problems) == 1
                          else f"{source}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))


# -- cross-checks: references between sections, thresholds, expressions --------------------------


def _server_problems(server: ServerConfig) -> list[str]:
    """Limits that must be positive, the probe token's length, the probe networks' syntax."""
    problems = [f"server.{key}: expected a number > 0, found {getattr(server, key)}"
                for key in ("max_body_bytes", "max_header_bytes", "header_timeout_s", "body_timeout_s",
                            "keep_alive_timeout_s", "max_connections", "max_concurrent_requests")
                if getattr(server, key) <= 0]
    if server.ready_cache_s < 0:
        problems.append(f"server.ready_cache_s: expected a number >= 0, found {server.ready_cache_s}")
    if server.metrics_token is not None and len(server.metrics_token) < 16:
        problems.append("server.metrics_token: shorter than 16 characters")
    for i, net in enumerate(server.open_probes_to):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"server.open_probes_to[{i}]: {net!r} is not an IP address or network "
                            "(e.g. 127.0.0.1, 10.0.0.0/8, ::1)")
    return problems


def cross_check_problems(cfg: RouterConfig) -> list[str]:
    """Checks that span several keys: references between sections, thresholds, expressions."""
    problems: list[str] = value_problems(cfg)
    for name, target in cfg.targets.items():
        if target.backend not in cfg.backends:
            problems.append(f"targets.{name}.backend: unknown backend {target.backend!r}; "
                            f"expected one of {sorted(cfg.backends)}")
        for i, fb in enumerate(target.fallback):
            if fb not in cfg.targets:
                problems.append(f"targets.{name}.fallback[{i}]: unknown target {fb!r}; "
                                f"expected one of {sorted(cfg.targets)}")
        if target.num_ctx is not None and target.num_ctx < 512:
            problems.append(f"targets.{name}.num_ctx: {target.num_ctx} is too small; expected >= 512")
    for name, backend in cfg.backends.items():
        if not re.match(r"^https?://", backend.base_url):
            problems.append(f"backends.{name}.base_url: expected an http:// or https:// URL, "
                            f"found {backend.base_url!r}")
    if cfg.default_target not in cfg.targets:
        problems.append(f"default_target: unknown target {cfg.default_target!r}; "
                        f"expected one of {sorted(cfg.targets)}")
    for glob, aliased in cfg.aliases.items():
        if aliased not in cfg.targets:
            problems.append(f"aliases.{glob}: unknown target {aliased!r}; expected one of {sorted(cfg.targets)}")
    seen_rules: set[str] = set()
    for i, rule in enumerate(cfg.rules):
        if rule.name in seen_rules:
            problems.append(f"rules[{i}].name: duplicate rule name {rule.name!r}")
        seen_rules.add(rule.name)
        if rule.target not in cfg.targets:
            problems.append(f"rules[{i}].target: unknown target {rule.target!r}; "
                            f"expected one of {sorted(cfg.targets)}")
        err = rules_mod.expression_error(rule.when)
        if err:
            problems.append(f"rules[{i}].when: {err}")
        if rule.daily_limit is not None and rule.daily_limit < 0:
            problems.append(f"rules[{i}].daily_limit: expected a number >= 0, found {rule.daily_limit}")
    problems += route_problems(cfg)
    seen_clients: set[str] = set()
    for i, client in enumerate(cfg.clients):
        if client.name in seen_clients:
            problems.append(f"clients[{i}].name: duplicate client name {client.name!r}")
        seen_clients.add(client.name)
        if len(client.key) < 16:
            problems.append(f"clients[{i}].key: client {client.name!r} has a key shorter than 16 characters")
        for j, allowed in enumerate(client.targets or []):
            if allowed not in cfg.targets:
                problems.append(f"clients[{i}].targets[{j}]: unknown target {allowed!r}; "
                                f"expected one of {sorted(cfg.targets)}")
        if client.targets is not None and not client.targets:
            problems.append(f"clients[{i}].targets: empty list: client {client.name!r} could reach no target; "
                            "leave the key out to allow every target")
    problems += _server_problems(cfg.server)
    b = cfg.budgets
    try:
        ZoneInfo(b.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"budgets.timezone: unknown time zone {b.timezone!r}; expected an IANA name "
                        "such as 'Europe/Berlin' or 'UTC'")
    if not (0 <= b.alert_threshold <= b.daily_budget <= b.emergency_cutoff):
        problems.append("budgets: expected 0 <= alert_threshold <= daily_budget <= emergency_cutoff, found "
                        f"{b.alert_threshold} / {b.daily_budget} / {b.emergency_cutoff}")
    # A model that can cost money must have a price: silently billing $0 would defeat the budget.
    prices = cfg.prices or []
    for i, price in enumerate(prices):
        if not price.prefix:
            problems.append(f"prices[{i}].prefix: expected a model-name prefix, found an empty string")
        rates = [price.input, price.output, price.cache_write_5m, price.cache_write_1h, price.cache_read,
                 price.long_input, price.long_output, price.web_search_per_1000, price.fast_multiplier,
                 *price.inference_geo_multipliers.values()]
        if any(r is not None and r < 0 for r in rates):
            problems.append(f"prices[{i}] ({price.prefix}): prices and multipliers must be >= 0")
    for name, target in cfg.targets.items():
        target_backend = cfg.backends.get(target.backend)
        if target_backend is not None and target_backend.is_cloud and find_price(prices, target.model) is None:
            problems.append(f"targets.{name}.model: no entry in prices matches cloud model "
                            f"{target.model!r}; add a prices entry whose prefix matches it")
    problems += context_problems(cfg)
    return problems
