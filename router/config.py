"""The router's configuration: one YAML file, validated into typed, immutable structures.

Every error names the file, the key path (``rules[2].target``), what was found and what was
expected, so an operator can fix a config without reading the code. Secrets never live in the
file: ``${NAME}`` is replaced from the environment, and backend API keys are read from the
variable a backend names in ``api_key_env``.
"""

from __future__ import annotations

from typing import Literal

import msgspec


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    pass


class ServerConfig(_Base, kw_only=True, frozen=True):
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


class ClientConfig(_Base, kw_only=True, frozen=True):
    name: str
    key: str
    daily_budget: float | None = None  # optional per-client cloud budget in USD
    # Targets this client's requests may go to (rules, aliases, the override header, a model name
    # equal to a target name); None: all targets.
    targets: list[str] | None = None


class BackendConfig(_Base, kw_only=True, frozen=True):
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


class TargetConfig(_Base, kw_only=True, frozen=True):
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


class ContextConfig(_Base, kw_only=True, frozen=True):
    """How requests are checked against targets' context windows (see context.py)."""

    # Kept free in every window besides the estimate: a fixed part plus a fraction of the window.
    safety_margin_tokens: int = 256
    safety_margin_fraction: float = 0.02
    # Output reserved when neither the request (max_tokens) nor the target (max_output_tokens) says.
    default_output_tokens: int = 1024
    # Wall-time limit for streams from local targets without their own stream_time_limit_s.
    stream_time_limit_s: float | None = 600.0


class RuleConfig(_Base, kw_only=True, frozen=True):
    name: str
    when: str  # sandboxed Jinja2 expression over request features, see features.py
    target: str
    daily_limit: int | None = None  # requests per day this rule may send; past it, the next rule matches


class RouteConfig(_Base, kw_only=True, frozen=True):
    """A route policy in plain words: what kind of work it is, shown by example prompts."""

    name: str
    description: str  # one line; shown by route explain and given to the judge
    examples: list[str]  # 10 to 30 prompts of this kind, written for this team
    target: str | None = None  # shorthand for a rule `route == "<name>"` placed after all rules
    # Keyword tasks (features.TASKS) that stand for this route when no embedding backend answers.
    keyword_tasks: list[str] = []


class EmbeddingsConfig(_Base, kw_only=True, frozen=True):
    backend: str  # a backend of type ollama (/api/embed) or openai (/v1/embeddings)
    model: str = "all-minilm"
    # A new turn waits at most this long for its embedding, then falls back to keyword routing.
    timeout_ms: int = 300


class JudgeConfig(_Base, kw_only=True, frozen=True):
    """An LLM judge for close calls (off unless set): a local chat model names the route."""

    target: str  # a local target, e.g. one running qwen2.5:1.5b or Arch-Router-1.5B
    margin_below: float = 0.05  # asked only when the two best routes are closer than this
    candidates: int = 3  # the best routes it chooses among
    timeout_ms: int = 1500  # past this the classifier's route stands


class RoutingConfig(_Base, kw_only=True, frozen=True):
    """How the semantic route classifier runs; see docs/routing.md."""

    embeddings: EmbeddingsConfig | None = None
    judge: JudgeConfig | None = None
    # Weight of the examples' words (TF-IDF) added to the embedding score; 0 routes by embedding alone.
    lexical_weight: float = 0.8
    # A route's description counts as this many of its examples (in its centroid and its words).
    description_weight: int = 3
    turn_cache_size: int = 4096  # user turns whose decision is remembered (the tool loop reuses it)
    turn_ttl_s: float = 3600.0  # a turn's decision is forgotten after this long


class PriceConfig(_Base, kw_only=True, frozen=True):
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


class BudgetConfig(_Base, kw_only=True, frozen=True):
    # No defaults here: a config's `budgets` is laid over the shipped ones (embedded_budgets), so the
    # numbers have one home, router/defaults/config.yml, which the Ansible role reads too.
    timezone: str
    daily_budget: float
    alert_threshold: float
    emergency_cutoff: float
    # The most output tokens one cloud call may produce: a larger max_tokens is lowered to this
    # before the call goes out (header x-aibox-max-tokens-clamped), and the full (lowered)
    # max_tokens is reserved, so the reservation is a true bound. See docs/cost-control.md.
    reserve_output_tokens_cap: int


class EmailAlertConfig(_Base, kw_only=True, frozen=True):
    host: str
    sender: str
    recipients: list[str]
    port: int = 587
    starttls: bool = True
    username: str | None = None
    password_env: str | None = None  # environment variable holding the SMTP password


class WebhookAlertConfig(_Base, kw_only=True, frozen=True):
    url: str
    headers: dict[str, str] = {}


class AlertsConfig(_Base, kw_only=True, frozen=True):
    email: EmailAlertConfig | None = None
    webhook: WebhookAlertConfig | None = None
    retry_attempts: int = 5
    retry_backoff_s: float = 2.0


class GpuConfig(_Base, kw_only=True, frozen=True):
    enabled: bool = True
    # Values GPU routing features take when no GPU can be read (CI, CPU-only boxes).
    defaults_when_absent: dict[str, float] = msgspec.field(
        default_factory=lambda: {"gpu_memory_used_fraction": 0.0, "gpu_utilization": 0.0})
    electricity_usd_per_kwh: float = 0.0


class RouterConfig(_Base, kw_only=True, frozen=True):
    server: ServerConfig = ServerConfig()
    clients: list[ClientConfig] = []
    backends: dict[str, BackendConfig]
    targets: dict[str, TargetConfig]
    aliases: dict[str, str] = {}  # requested-model glob -> target name
    rules: list[RuleConfig] = []
    routes: list[RouteConfig] = []
    routing: RoutingConfig = RoutingConfig()
    default_target: str
    budgets: BudgetConfig  # parse_config fills in the shipped budgets (embedded_budgets)
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
