"""The router's configuration: one YAML file, validated into typed, immutable structures.

Every error names the file, the key path (``rules[2].target``), what was found and what was
expected, so an operator can fix a config without reading the code. Secrets never live in the
file: ``${NAME}`` is replaced from the environment, and backend API keys are read from the
variable a backend names in ``api_key_env``.
"""

from __future__ import annotations

import os
import re
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
    max_body_bytes: int = 32 * 1024 * 1024


class ClientConfig(_Base, kw_only=True):
    name: str
    key: str
    daily_budget: float | None = None  # optional per-client cloud budget in USD


class BackendConfig(_Base, kw_only=True):
    type: Literal["anthropic", "ollama", "openai"]
    base_url: str
    # Name of the environment variable holding this backend's API key (never the key itself).
    api_key_env: str | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    # Whether spend on this backend counts against the cloud budget.
    cloud: bool | None = None

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
    margin_below: float = 0.03  # asked only when the two best routes are closer than this
    candidates: int = 3  # the best routes it chooses among
    timeout_ms: int = 1500  # past this the classifier's route stands


class RoutingConfig(_Base, kw_only=True):
    """How the semantic route classifier runs; see docs/routing.md."""

    embeddings: EmbeddingsConfig | None = None
    judge: JudgeConfig | None = None
    turn_cache_size: int = 4096  # user turns whose decision is remembered (the tool loop reuses it)
    turn_ttl_s: float = 3600.0  # a turn's decision is forgotten after this long


class PriceConfig(_Base, kw_only=True):
    """USD per million tokens for models whose name starts with ``prefix``."""

    prefix: str
    input: float
    output: float
    cache_write_5m: float | None = None  # defaults to 1.25 x input
    cache_write_1h: float | None = None  # defaults to 2 x input
    cache_read: float | None = None  # defaults to 0.1 x input
    # Long-context tier: above this many input tokens the whole request is billed at the long rates.
    long_context_threshold: int | None = None
    long_input: float | None = None
    long_output: float | None = None


class BudgetConfig(_Base, kw_only=True):
    timezone: str = "UTC"
    daily_budget: float = 10.00
    alert_threshold: float = 8.00
    emergency_cutoff: float = 12.00
    # Worst-case output reserved for a cloud request whose max_tokens is larger than this.
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
    prices: list[PriceConfig] = []
    alerts: AlertsConfig = AlertsConfig()
    gpu: GpuConfig = GpuConfig()
    # Header a client may send to force a target by name (cloud targets still obey budgets).
    override_header: str = "x-aibox-target"

    def target_is_cloud(self, target_name: str) -> bool:
        return self.backends[self.targets[target_name].backend].is_cloud


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
        raise ConfigError(f"{source}: {_locate(data, str(e))}") from None
    problems = _cross_check(cfg)
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems) if len(problems) == 1
                          else f"{source}: {len(problems)} problems:\n  - " + "\n  - ".join(problems))
    return cfg


def load_config(path: str | os.PathLike[str], env: dict[str, str] | None = None) -> RouterConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_config(data, str(p), env)


def _cross_check(cfg: RouterConfig) -> list[str]:
    """Checks that span several keys: references between sections, thresholds, expressions."""
    from . import rules as rules_mod  # local import: rules imports config types
    from .pricing import find_price
    from .route_policies import route_problems

    problems: list[str] = []
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
    for name, target in cfg.targets.items():
        backend = cfg.backends.get(target.backend)
        if backend is not None and backend.is_cloud and find_price(cfg.prices, target.model) is None:
            problems.append(f"targets.{name}.model: no entry in prices matches cloud model "
                            f"{target.model!r}; add a prices entry whose prefix matches it")
    return problems
