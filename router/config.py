"""The router's configuration: one YAML file, validated into typed, immutable structures.

Every error names the file, the key path (``rules[2].target``), what was found and what was
expected, so an operator can fix a config without reading the code. Secrets never live in the
file: ``${NAME}`` is replaced from the environment, and backend API keys are read from the
variable a backend names in ``api_key_env``.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from .errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class ServerConfig(_Base, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8088
    state_dir: str = "/var/lib/aibox-router"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Upper bound on a request body; Claude Code's requests are ~80-120 KB, images can be more.
    # Refused with 413 from the announced Content-Length, or as soon as a chunked body passes it.
    max_body_bytes: int = 32 * 1024 * 1024
    # Request line plus headers; Claude Code sends about 1 KB. Larger heads get 431.
    max_header_bytes: int = 64 * 1024
    # A request's head must arrive within header_timeout_s of its first byte (or of the connection
    # opening), its body within body_timeout_s of the head: slow-drip clients cannot hold sockets.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    # Idle time a kept-alive connection may wait for its next request (Claude Code reuses them).
    keep_alive_timeout_s: float = 75.0
    # Open connections (idle keep-alive ones included); past it new requests get 503.
    max_connections: int = 1024
    # Requests being served at once (a stream counts until it ends); past it: 503 in the caller's shape.
    max_concurrent_requests: int = 256
    # /ready and /metrics: a client key or this bearer token (Prometheus' authorization.credentials),
    # unless the caller's address is in open_probes_to (addresses or networks, e.g. 127.0.0.0/8).
    metrics_token: str | None = None
    open_probes_to: list[str] = msgspec.field(default_factory=lambda: ["127.0.0.0/8", "::1"])
    # How long a readiness answer is reused: /ready must not probe every backend on every call.
    ready_cache_s: float = 5.0


class ClientConfig(_Base, kw_only=True):
    name: str
    key: str
    daily_budget: float | None = None  # optional per-client cloud budget in USD
    # Targets this client's requests may go to (rules, aliases, the override header, a model name
    # equal to a target name); None: all targets.
    targets: list[str] | None = None


class BackendConfig(_Base, kw_only=True):
    type: Literal["anthropic", "ollama", "openai"]
    base_url: str
    # Name of the environment variable holding this backend's API key (never the key itself).
    api_key_env: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    # Whether spend on this backend counts against the cloud budget.
    cloud: bool | None = None
    # openai backends: pass image URLs on (the server would fetch them: a request forgery risk
    # inside the LAN). Off: only inline base64 images are sent, URL images become a note.
    allow_image_urls: bool = False

    @property
    def is_cloud(self) -> bool:
        return self.type == "anthropic" if self.cloud is None else self.cloud


class TargetConfig(_Base, kw_only=True):
    """A routable destination: a backend plus the model it should run."""

    backend: str
    model: str
    fallback: list[str] = []  # other target names tried in order on connection errors/timeouts/5xx
    num_ctx: int | None = None  # ollama: context window to load the model with
    keep_alive: str | None = None  # ollama: how long the model stays loaded
    max_output_tokens: int | None = None  # cap on max_tokens sent to this target
    # Tokens of input + output the model holds; see context.py for where it comes from when unset.
    context_window: int | None = None
    # A stream from this (local) target running longer than this is ended with an error event.
    stream_time_limit_s: float | None = None


class ContextConfig(_Base, kw_only=True):
    """How requests are checked against targets' context windows (see context.py)."""

    # Kept free in every window besides the estimate: a fixed part plus a fraction of the window.
    safety_margin_tokens: int = 256
    safety_margin_fraction: float = 0.02
    # Output reserved when neither the request (max_tokens) nor the target (max_output_tokens) says.
    default_output_tokens: int = 1024
    # Wall-time limit for streams from local targets without their own stream_time_limit_s.
    stream_time_limit_s: float | None = 600.0


class RuleConfig(_Base, kw_only=True):
    name: str
    when: str  # sandboxed Jinja2 expression over request features, see features.py
    target: str
    daily_limit: int | None = None  # requests per day this rule may send; past it, the next rule matches


class RouteConfig(_Base, kw_only=True):
    """A route policy in plain words: what kind of work it is, shown by example prompts."""

    name: str
    description: str  # one line; shown by route explain and given to the judge
    examples: list[str]  # 10 to 30 prompts of this kind, written for this team
    target: str | None = None  # shorthand for a rule `route == "<name>"` placed after all rules
    # Keyword tasks (features.TASKS) that stand for this route when no embedding backend answers.
    keyword_tasks: list[str] = []


class EmbeddingsConfig(_Base, kw_only=True):
    backend: str  # a backend of type ollama (/api/embed) or openai (/v1/embeddings)
    model: str = "all-minilm"
    # A new turn waits at most this long for its embedding, then falls back to keyword routing.
    timeout_ms: int = 300


class JudgeConfig(_Base, kw_only=True):
    """An LLM judge for close calls (off unless set): a local chat model names the route."""

    target: str  # a local target, e.g. one running qwen2.5:1.5b or Arch-Router-1.5B
    margin_below: float = 0.05  # asked only when the two best routes are closer than this
    candidates: int = 3  # the best routes it chooses among
    timeout_ms: int = 1500  # past this the classifier's route stands


class RoutingConfig(_Base, kw_only=True):
    """How the semantic route classifier runs; see docs/routing.md."""

    embeddings: EmbeddingsConfig | None = None
    judge: JudgeConfig | None = None
    # Weight of the examples' words (TF-IDF) added to the embedding score; 0 routes by embedding alone.
    lexical_weight: float = 0.4
    turn_cache_size: int = 4096  # user turns whose decision is remembered (the tool loop reuses it)
    turn_ttl_s: float = 3600.0  # a turn's decision is forgotten after this long


class PriceConfig(_Base, kw_only=True):
    """USD per million tokens for models whose name starts with ``prefix`` (see pricing.py)."""

    prefix: str
    input: float
    output: float
    cache_write_5m: float | None = None  # defaults to 1.25 x input
    cache_write_1h: float | None = None  # defaults to 2 x input
    cache_read: float | None = None  # defaults to 0.1 x input
    # Long-context tier: above this many input tokens (input + cache writes + cache reads) the whole
    # request is billed at the long rates; cache rates scale by long_input / input.
    long_context_threshold: int | None = None
    long_input: float | None = None
    long_output: float | None = None
    # USD per 1,000 web searches (usage.server_tool_use.web_search_requests).
    web_search_per_1000: float = 10.0
    # Fast mode (request "speed": "fast") multiplies every token rate by this; None: no published
    # price, and the router refuses fast-mode requests for the model rather than guess.
    fast_multiplier: float | None = None
    # Data residency (request "inference_geo") multiplies every token rate; "global" is always 1.
    # A geo missing here has no known price, and the router refuses such requests.
    inference_geo_multipliers: dict[str, float] = {}


class BudgetConfig(_Base, kw_only=True):
    timezone: str = "UTC"
    daily_budget: float = 10.00
    alert_threshold: float = 8.00
    emergency_cutoff: float = 12.00
    # The most output tokens one cloud call may produce: a larger max_tokens is lowered to this
    # before the call goes out (header x-aibox-max-tokens-clamped), and the full (lowered)
    # max_tokens is reserved, so the reservation is a true bound. See docs/cost-control.md.
    reserve_output_tokens_cap: int = 32000


class EmailAlertConfig(_Base, kw_only=True):
    host: str
    sender: str
    recipients: list[str]
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password_env: str | None = None  # environment variable holding the SMTP password


class WebhookAlertConfig(_Base, kw_only=True):
    url: str
    headers: dict[str, str] = {}


class AlertsConfig(_Base, kw_only=True):
    email: EmailAlertConfig | None = None
    webhook: WebhookAlertConfig | None = None
    retry_attempts: int = 5
    retry_backoff_s: float = 2.0


class GpuConfig(_Base, kw_only=True):
    enabled: bool = True
    # Values GPU routing features take when no GPU can be read (CI, CPU-only boxes).
    defaults_when_absent: dict[str, float] = msgspec.field(
        default_factory=lambda: {"gpu_memory_used_fraction": 0.0, "gpu_utilization": 0.0})
    electricity_usd_per_kwh: float = 0.0


class RouterConfig(_Base, kw_only=True):
    server: ServerConfig = ServerConfig()
    clients: list[ClientConfig] = []
    backends: dict[str, BackendConfig]
    targets: dict[str, TargetConfig]
    aliases: dict[str, str] = {}  # requested-model glob -> target name
    rules: list[RuleConfig] = []
    routes: list[RouteConfig] = []
    routing: RoutingConfig = RoutingConfig()
    default_target: str
    budgets: BudgetConfig = BudgetConfig()
    # Omitted: the embedded table (router/defaults/config.yml). Given: merged over it by prefix
    # (see merge_prices); parse_config stores the merged table here.
    prices: list[PriceConfig] | None = None
    alerts: AlertsConfig = AlertsConfig()
    gpu: GpuConfig = GpuConfig()
    context: ContextConfig = ContextConfig()
    # Header a client may send to force a target by name (cloud targets still obey budgets).
    override_header: str = "x-aibox-target"

    def target_is_cloud(self, target_name: str) -> bool:
        return self.backends[self.targets[target_name].backend].is_cloud

    def client_targets(self, client: str) -> frozenset[str] | None:
        """The targets *client* may be routed to, or None when it may use every target."""
        for c in self.clients:
            if c.name == client:
                return frozenset(c.targets) if c.targets is not None else None
        return None


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
    try:
        cfg = msgspec.convert(data, RouterConfig, strict=False)
    except msgspec.ValidationError as e:
        from .config_checks import explain_schema_error

        raise ConfigError(f"{source}: {explain_schema_error(RouterConfig, _locate(data, str(e)))}") from None
    cfg = msgspec.structs.replace(cfg, prices=merge_prices(embedded_prices(), cfg.prices or []))
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems) if len(problems) == 1
                          else f"{source}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))
    return cfg


DEFAULT_CONFIG_PATH = Path(__file__).parent / "defaults" / "config.yml"


@functools.cache
def embedded_prices() -> tuple[PriceConfig, ...]:
    """The price table shipped with the router: the ``prices`` of ``defaults/config.yml``, its one home."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text(encoding="utf-8"))
    try:
        return tuple(msgspec.convert(data["prices"], list[PriceConfig], strict=False))
    except (KeyError, TypeError, msgspec.ValidationError) as e:  # a packaging bug, not an operator's
        raise ConfigError(f"{DEFAULT_CONFIG_PATH}: prices: the embedded price table is invalid: {e}") from None


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
    from .config_checks import load_yaml_strict

    try:
        data = load_yaml_strict(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if data is None:
        raise ConfigError(f"{p}: the file is empty (or only comments); expected the router config mapping "
                          "(see router/defaults/config.yml)")
    return parse_config(data, str(p), env)


def _server_problems(server: ServerConfig) -> list[str]:
    """Limits that must be positive, the probe token's length, the probe networks' syntax."""
    import ipaddress

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


def _cross_check(cfg: RouterConfig) -> list[str]:
    """Checks that span several keys: references between sections, thresholds, expressions."""
    from . import rules as rules_mod  # local import: rules imports config types
    from .config_checks import value_problems
    from .context import context_problems
    from .pricing import find_price
    from .route_policies import route_problems

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
    for glob, target in cfg.aliases.items():
        if target not in cfg.targets:
            problems.append(f"aliases.{glob}: unknown target {target!r}; expected one of {sorted(cfg.targets)}")
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
        for j, target in enumerate(client.targets or []):
            if target not in cfg.targets:
                problems.append(f"clients[{i}].targets[{j}]: unknown target {target!r}; "
                                f"expected one of {sorted(cfg.targets)}")
        if client.targets is not None and not client.targets:
            problems.append(f"clients[{i}].targets: empty list: client {client.name!r} could reach no target; "
                            "leave the key out to allow every target")
    problems += _server_problems(cfg.server)
    b = cfg.budgets
    try:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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
        backend = cfg.backends.get(target.backend)
        if backend is not None and backend.is_cloud and find_price(prices, target.model) is None:
            problems.append(f"targets.{name}.model: no entry in prices matches cloud model "
                            f"{target.model!r}; add a prices entry whose prefix matches it")
    problems += context_problems(cfg)
    return problems
