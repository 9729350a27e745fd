"""Context windows: how many tokens each target holds, how many a request needs, and whether it fits.

A local model given a prompt longer than its window does not fail: Ollama keeps the last
``num_ctx`` tokens, so the system prompt and the tool definitions are the first to go, and the
model answers a question nobody asked. The router therefore checks, before it sends anything,
that *estimated input + output reserve + safety margin* fits the target's window, and moves
along the fallback chain when it does not (see ``pipeline.plan_request``).

Where a target's window comes from, first match wins:

* ``targets.<name>.context_window`` in the config;
* Ollama targets: ``num_ctx`` (the router sends it with every request); without it Ollama loads
  the model with its own default, so the router assumes the smallest default Ollama has shipped;
* OpenAI-compatible targets: read from the server at start-up (llama.cpp's ``GET /props``,
  vLLM's ``max_model_len`` in ``GET /v1/models``), see :func:`discover`;
* cloud targets: the model's published window (:data:`PUBLISHED_WINDOWS`).

The estimate (:func:`estimate_input_tokens`) errs high on purpose, see its docstring and
docs/context-windows.md for the measured error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .internal import Request

if TYPE_CHECKING:
    from .backends import Backend
    from .config import RouterConfig

log = logging.getLogger("aibox_router.context")

# Published context windows of cloud models, by model-name prefix (first match wins). All current
# Claude models take 200K tokens of input+output; the 1M window of some Sonnet models is a beta
# the client must ask for, so the router does not assume it (set context_window to use it).
PUBLISHED_WINDOWS: tuple[tuple[str, int], ...] = (("claude-", 200_000),)

# Ollama without num_ctx loads a model with its server-wide default (OLLAMA_CONTEXT_LENGTH):
# 2048 tokens in older releases, 4096 in newer ones. Assume the smaller; config check warns.
OLLAMA_ASSUMED_DEFAULT = 2048

# How long start-up waits for a server to say its window.
DISCOVERY_TIMEOUT_S = 3.0
# A server that could not be asked at start-up is asked again at most this often.
REDISCOVER_AFTER_S = 60.0


# ---------------------------------------------------------------------------------------------
# The estimate
#
# Tokens are estimated from byte classes of the prompt text the model will see, each counted at C
# speed (bytes.translate): letters and digits, punctuation, spaces, newlines and non-ASCII bytes.
# A byte-level BPE tokenizer never makes more tokens than bytes, and makes roughly one token per
# word, per punctuation run and per indentation run; the weights below are an upper fit of that
# against SmolLM2's tokenizer (a 49K-entry vocabulary: smaller vocabularies than those of the
# current local model families make *more* tokens, so an estimate that holds for it holds for
# Qwen2.5 (151K), Llama 3 (128K), Gemma (256K) and DeepSeek (128K) too). Calibration and the
# error distribution: benchmarks/token_estimate.py, docs/context-windows.md.

_ASCII = bytes(range(128))
_LETTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_DIGITS = b"0123456789"
_SPACE = b" \t"


@dataclass(frozen=True)
class TokenWeights:
    """Tokens per byte of each class, plus fixed costs per message, per tool and per image."""

    family: str
    letters: float
    digits: float
    punct: float
    space: float
    newline: float
    non_ascii: float
    per_message: int  # chat-template tokens around each message (role markers, separators)
    per_image: int  # local backends see an image as this many tokens (or not at all)


# The calibrated weights (benchmarks/token_estimate.py --calibrate prints them).
DEFAULT_WEIGHTS = TokenWeights(family="byte-level BPE", letters=0.43, digits=1.0, punct=0.64, space=0.055,
                               newline=1.0, non_ascii=1.0, per_message=8, per_image=1600)

# SentencePiece vocabularies of 32K entries (Llama 2, Mistral 7B up to v0.3, Mixtral) split
# code and non-English text finer than byte-level BPE does.
_SENTENCEPIECE_32K = TokenWeights(family="SentencePiece 32K", letters=0.38, digits=1.0, punct=0.85, space=0.055,
                                  newline=1.0, non_ascii=1.0, per_message=8, per_image=1600)

# Qwen2, Qwen2.5 and Qwen3 share one 151K-entry BPE vocabulary (the aibox's default local models).
_QWEN2 = TokenWeights(family="Qwen2 BPE", letters=0.31, digits=1.0, punct=0.57, space=0.055, newline=1.0,
                      non_ascii=1.0, per_message=8, per_image=1600)

# Mistral's Tekken vocabulary (131K entries): Nemo, Small 3, Codestral, Devstral, Ministral, ...
_TEKKEN = TokenWeights(family="Tekken", letters=0.35, digits=1.0, punct=0.57, space=0.055, newline=1.0,
                       non_ascii=1.0, per_message=8, per_image=1600)

_FAMILY_BY_MODEL: tuple[tuple[str, TokenWeights], ...] = (
    ("qwen", _QWEN2),
    *((name, _TEKKEN) for name in ("mistral-nemo", "mistral-small", "mistral-large", "mistral-medium", "codestral",
                                   "devstral", "ministral", "magistral", "pixtral")),
    ("mistral:7b", _SENTENCEPIECE_32K), ("mistral-7b", _SENTENCEPIECE_32K), ("mixtral", _SENTENCEPIECE_32K),
    ("llama2", _SENTENCEPIECE_32K), ("llama-2", _SENTENCEPIECE_32K), ("codellama", _SENTENCEPIECE_32K),
)


def weights_for(model: str) -> TokenWeights:
    m = model.lower()
    for prefix, weights in _FAMILY_BY_MODEL:
        if m.startswith(prefix):
            return weights
    return DEFAULT_WEIGHTS


_ENCODE = msgspec.json.Encoder()


@dataclass
class PromptParts:
    """What a prompt is made of, as the estimator counts it."""

    text: bytes = b""
    messages: int = 0
    images: int = 0


def prompt_parts(request: Request) -> PromptParts:
    """The text a backend's model will read: system, message texts, tool calls and results, tool
    definitions (as JSON, which is how chat templates render them)."""
    pieces: list[str] = []
    binary: list[bytes] = []
    images = 0
    system = request.get("system")
    messages = request.get("messages") or []
    _collect(system, pieces, binary)
    count = len(messages) + (1 if system else 0)
    for message in messages:
        if isinstance(message, dict):
            images += _collect(message.get("content"), pieces, binary)
    tools = request.get("tools")
    if tools:
        binary.append(_ENCODE.encode(tools))
    text = "\n".join(pieces).encode("utf-8", "surrogatepass") + b"\n".join(binary)
    return PromptParts(text=text, messages=count, images=images)


def _collect(content: Any, pieces: list[str], binary: list[bytes]) -> int:
    """Add the text of *content* (a string or content blocks); return how many images it holds."""
    if isinstance(content, str):
        pieces.append(content)
        return 0
    images = 0
    if not isinstance(content, list):
        return 0
    for block in content:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text":
            pieces.append(str(block.get("text") or ""))
        elif btype == "image" or btype == "document":
            images += 1
        elif btype == "tool_use":
            pieces.append(str(block.get("name") or ""))
            binary.append(_ENCODE.encode(block.get("input") or {}))
        elif btype == "tool_result":
            images += _collect(block.get("content"), pieces, binary)
        elif btype == "thinking":
            pieces.append(str(block.get("thinking") or ""))
        else:  # server tool blocks and anything newer: count their JSON, never less than they are
            binary.append(_ENCODE.encode(block))
    return images


@dataclass(frozen=True)
class ByteClasses:
    letters: int
    digits: int
    punct: int
    space: int
    newline: int
    non_ascii: int

    @classmethod
    def of(cls, data: bytes) -> ByteClasses:
        # Each class is deleted in turn from what the previous pass left: letters first (most of a
        # prompt), so the later passes run over a fraction of the bytes. A 78 KB Claude Code prompt
        # costs about 0.15 ms here.
        no_letters = data.translate(None, _LETTERS)
        no_digits = no_letters.translate(None, _DIGITS)
        rest = no_digits.translate(None, _SPACE)  # punctuation, newlines and non-ASCII bytes
        newline = rest.count(b"\n") + rest.count(b"\r")
        non_ascii = 0 if rest.isascii() else len(rest.translate(None, _ASCII))
        return cls(letters=len(data) - len(no_letters), digits=len(no_letters) - len(no_digits),
                   punct=len(rest) - newline - non_ascii, space=len(no_digits) - len(rest), newline=newline,
                   non_ascii=non_ascii)

    @property
    def total(self) -> int:
        return self.letters + self.digits + self.punct + self.space + self.newline + self.non_ascii


def tokens_from(classes: ByteClasses, parts: PromptParts, weights: TokenWeights) -> int:
    w = weights
    text = (classes.letters * w.letters + classes.digits * w.digits + classes.punct * w.punct
            + classes.space * w.space + classes.newline * w.newline + classes.non_ascii * w.non_ascii)
    total_bytes = classes.total
    # A byte-level tokenizer never makes more tokens than there are bytes.
    text = min(text, total_bytes)
    return int(text + 0.999) + parts.messages * w.per_message + parts.images * w.per_image


def estimate_input_tokens(request: Request, model: str = "") -> int:
    """Input tokens the prompt will take on *model*, erring high (never more than 5% low on the
    measured set; on typical Claude Code requests 10-30% high)."""
    parts = prompt_parts(request)
    return tokens_from(ByteClasses.of(parts.text), parts, weights_for(model))


class Estimator:
    """One request's estimates: the prompt is walked and counted once, each family priced from that."""

    def __init__(self, request: Request):
        self.parts = prompt_parts(request)
        self.classes = ByteClasses.of(self.parts.text)
        self._by_family: dict[str, int] = {}

    def input_tokens(self, model: str) -> int:
        weights = weights_for(model)
        tokens = self._by_family.get(weights.family)
        if tokens is None:
            tokens = self._by_family[weights.family] = tokens_from(self.classes, self.parts, weights)
        return tokens


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass(frozen=True)
class Window:
    tokens: int | None  # None: unknown
    source: str  # where the number comes from, for config check and route explain
    # The server refuses an over-long prompt with an error instead of truncating it (the Anthropic
    # API): the router then skips the target only when the prompt is certainly too long.
    enforced_upstream: bool = False


def static_window(cfg: RouterConfig, target_name: str) -> Window:
    """The window the config alone determines (no server asked)."""
    target = cfg.targets[target_name]
    backend = cfg.backends[target.backend]
    enforced = backend.type == "anthropic"
    if target.context_window is not None:
        return Window(target.context_window, f"targets.{target_name}.context_window", enforced)
    if backend.type == "ollama":
        if target.num_ctx is not None:
            return Window(target.num_ctx, f"targets.{target_name}.num_ctx")
        return Window(OLLAMA_ASSUMED_DEFAULT, "assumed: Ollama's default context (no num_ctx set)")
    if backend.type == "anthropic" or backend.is_cloud:
        for prefix, tokens in PUBLISHED_WINDOWS:
            if target.model.startswith(prefix):
                return Window(tokens, f"published window of {prefix}* models", enforced)
        return Window(None, "unknown: no published window for this model; set context_window", enforced)
    return Window(None, "unknown: set context_window, or let the router read it from the server")


def is_local(cfg: RouterConfig, target_name: str) -> bool:
    return not cfg.target_is_cloud(target_name)


def config_warnings(cfg: RouterConfig) -> list[str]:
    """What ``config check`` says about windows that are missing or assumed."""
    warnings = []
    for name, target in cfg.targets.items():
        if cfg.target_is_cloud(name):
            continue
        window = static_window(cfg, name)
        backend = cfg.backends[target.backend]
        if window.tokens is None:
            warnings.append(f"targets.{name}: local target has no context window; the router reads it from "
                            f"the server at start-up if the server says (llama.cpp /props, vLLM /v1/models), "
                            f"otherwise prompts of any length are sent to it. Set targets.{name}.context_window.")
        elif backend.type == "ollama" and target.num_ctx is None and target.context_window is None:
            warnings.append(f"targets.{name}: Ollama target without num_ctx: Ollama loads the model with its "
                            f"default context and truncates longer prompts; the router assumes "
                            f"{OLLAMA_ASSUMED_DEFAULT} tokens. Set targets.{name}.num_ctx.")
        if target.max_output_tokens is None:
            warnings.append(f"targets.{name}: no max_output_tokens: the whole max_tokens a client asks for "
                            f"(Claude Code: 32000) is reserved in the window; set max_output_tokens to what "
                            f"this model should write at most.")
    return warnings


def context_problems(cfg: RouterConfig) -> list[str]:
    """Config errors about windows and limits (called from config_checks.cross_check_problems)."""
    problems = []
    for name, target in cfg.targets.items():
        if target.context_window is not None and target.context_window < 512:
            problems.append(f"targets.{name}.context_window: {target.context_window} is too small; "
                            "expected >= 512")
        if target.max_output_tokens is not None and target.max_output_tokens < 1:
            problems.append(f"targets.{name}.max_output_tokens: expected >= 1, found {target.max_output_tokens}")
        if target.stream_time_limit_s is not None and target.stream_time_limit_s <= 0:
            problems.append(f"targets.{name}.stream_time_limit_s: expected a number of seconds > 0, "
                            f"found {target.stream_time_limit_s}")
        window = target.context_window or target.num_ctx
        if window and target.max_output_tokens and target.max_output_tokens >= window:
            problems.append(f"targets.{name}.max_output_tokens: {target.max_output_tokens} leaves no room for "
                            f"input in a {window}-token window")
    c = cfg.context
    if c.safety_margin_tokens < 0:
        problems.append(f"context.safety_margin_tokens: expected >= 0, found {c.safety_margin_tokens}")
    if not 0 <= c.safety_margin_fraction < 0.5:
        problems.append(f"context.safety_margin_fraction: expected 0 <= fraction < 0.5, "
                        f"found {c.safety_margin_fraction}")
    if c.default_output_tokens < 1:
        problems.append(f"context.default_output_tokens: expected >= 1, found {c.default_output_tokens}")
    if c.stream_time_limit_s is not None and c.stream_time_limit_s <= 0:
        problems.append(f"context.stream_time_limit_s: expected a number of seconds > 0, "
                        f"found {c.stream_time_limit_s}")
    return problems


class ContextWindows:
    """Each target's window: the config's, completed by what servers say at start-up."""

    def __init__(self, cfg: RouterConfig):
        self.cfg = cfg
        self._windows = {name: static_window(cfg, name) for name in cfg.targets}
        self._asked: dict[str, float] = {}  # target -> when its server was last asked
        self._pending: set[asyncio.Task[None]] = set()

    def window(self, target_name: str) -> Window:
        return self._windows[target_name]

    def discoverable(self, target_name: str) -> bool:
        window = self._windows[target_name]
        backend = self.cfg.backends[self.cfg.targets[target_name].backend]
        return window.tokens is None and backend.type == "openai" and not backend.is_cloud

    async def discover(self, backends: dict[str, Backend]) -> None:
        """Ask each OpenAI-compatible server whose targets have no configured window."""
        names = [n for n in self.cfg.targets if self.discoverable(n)]
        await asyncio.gather(*(self._discover_one(n, backends) for n in names))

    async def _discover_one(self, target_name: str, backends: dict[str, Backend]) -> None:
        self._asked[target_name] = time.monotonic()
        target = self.cfg.targets[target_name]
        backend = backends.get(target.backend)
        if backend is None:
            return
        try:
            found = await asyncio.wait_for(read_server_window(backend, target.model), DISCOVERY_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a server that cannot say leaves the window unknown
            log.warning("target %s: could not read the context window from %s (%s: %s); prompts are not "
                        "checked against it until it answers. Set targets.%s.context_window.",
                        target_name, backend.base_url, type(e).__name__, e, target_name)
            return
        if found is None:
            log.warning("target %s: %s does not say its context window; prompts are not checked against "
                        "it. Set targets.%s.context_window.", target_name, backend.base_url, target_name)
            return
        tokens, source = found
        self._windows[target_name] = Window(tokens, source)
        log.info("target %s: context window %d tokens (%s)", target_name, tokens, source)

    def refresh_later(self, target_name: str, backends: dict[str, Backend]) -> None:
        """Ask again in the background, at most every REDISCOVER_AFTER_S, while the window is unknown."""
        if not self.discoverable(target_name):
            return
        if time.monotonic() - self._asked.get(target_name, 0.0) < REDISCOVER_AFTER_S:
            return
        self._asked[target_name] = time.monotonic()
        try:
            task = asyncio.get_running_loop().create_task(self._discover_one(target_name, backends))
        except RuntimeError:  # no event loop (route explain): nothing to refresh
            return
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def read_server_window(backend: Backend, model: str) -> tuple[int, str] | None:
    """The context window an OpenAI-compatible server reports for *model*, or None.

    llama.cpp's server: ``GET /props`` (beside ``/v1``) has ``default_generation_settings.n_ctx``,
    the context of one slot (the whole ``--ctx-size`` divided among ``--parallel`` slots), which is
    what one request gets. vLLM: ``GET /v1/models`` lists ``max_model_len`` for each model.
    """
    root = backend.base_url.removesuffix("/v1")  # /props sits beside /v1, not under it
    try:
        response, body = await _get_absolute(backend, root + "/props")
        if response.status == 200:
            data = msgspec.json.decode(body)
            n_ctx = _int((data.get("default_generation_settings") or {}).get("n_ctx")) or _int(data.get("n_ctx"))
            if n_ctx:
                return n_ctx, "read from the server: llama.cpp GET /props n_ctx"
    except (msgspec.DecodeError, AttributeError):
        pass
    data, _ = await backend.request_json("GET", "/models", headers=_auth(backend))
    entries = [m for m in (data.get("data") or []) if isinstance(m, dict)] if isinstance(data, dict) else []
    for entry in sorted(entries, key=lambda m: m.get("id") != model):  # the target's model first
        n = _int(entry.get("max_model_len"))
        if n:
            return n, "read from the server: vLLM GET /v1/models max_model_len"
    return None


async def _get_absolute(backend: Backend, url: str) -> tuple[Any, bytes]:
    async with backend.session.get(url, headers=_auth(backend), timeout=backend.timeout,
                                   allow_redirects=False) as response:
        return response, await response.read()


def _auth(backend: Backend) -> dict[str, str]:
    key = backend.api_key()
    return {"authorization": f"Bearer {key}"} if key else {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


# ---------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class Fit:
    """Whether one request fits one target's window, and the numbers behind the verdict."""

    target: str
    window: Window
    input_tokens: int
    output_tokens: int
    margin_tokens: int
    fits: bool

    @property
    def needed(self) -> int:
        return self.input_tokens + self.output_tokens + self.margin_tokens

    def note(self) -> str:
        w = self.window
        if w.tokens is None:
            return f"window unknown ({w.source}); not checked"
        verdict = "fits" if self.fits else "does not fit"
        text = (f"{verdict}: ~{self.input_tokens} input + {self.output_tokens} output + {self.margin_tokens} "
                f"margin = {self.needed} {'<=' if self.needed <= w.tokens else '>'} window {w.tokens} ({w.source})")
        if w.enforced_upstream and self.needed > w.tokens and self.fits:
            text += "; sent anyway: this server checks the exact count itself and never truncates"
        return text


def output_reserve(request: Request, max_output_tokens: int | None, default: int) -> int:
    """Output tokens to keep free: the request's max_tokens, capped by the target's output cap."""
    asked = request.get("max_tokens")
    asked = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None
    if asked is not None and max_output_tokens is not None:
        return min(asked, max_output_tokens)
    return asked or max_output_tokens or default


def check_fit(cfg: RouterConfig, windows: ContextWindows, estimator: Estimator, request: Request,
              target_name: str) -> Fit:
    target = cfg.targets[target_name]
    window = windows.window(target_name)
    input_tokens = estimator.input_tokens(target.model)
    output = output_reserve(request, target.max_output_tokens, cfg.context.default_output_tokens)
    if window.tokens is None:
        return Fit(target_name, window, input_tokens, output, 0, True)
    margin = cfg.context.safety_margin_tokens + int(window.tokens * cfg.context.safety_margin_fraction)
    fits = input_tokens + output + margin <= window.tokens
    if not fits and window.enforced_upstream:
        # The cloud counts exactly and answers an over-long prompt with its own error: refuse here
        # only what is too long even at a fifth fewer tokens than estimated, so an estimate that
        # errs high never stops a conversation the cloud would have taken.
        fits = int(input_tokens * 0.8) + output <= window.tokens
    return Fit(target_name, window, input_tokens, output, margin, fits)


@dataclass
class ContextVerdict:
    """The context check of one request over its chain."""

    fits: dict[str, Fit] = field(default_factory=dict)

    @property
    def skipped(self) -> list[str]:
        return [name for name, fit in self.fits.items() if not fit.fits]

    def header(self) -> str:
        """``x-aibox-skipped``: ``coder=context,general=context``."""
        return ",".join(f"{name}=context" for name in self.skipped)


def too_long_message(verdict: ContextVerdict) -> tuple[int, int, str]:
    """(estimated tokens, maximum, detail) for the error a client gets when nothing fits."""
    largest = max(verdict.fits.values(), key=lambda f: f.window.tokens or 0)
    maximum = max(0, (largest.window.tokens or 0) - largest.output_tokens - largest.margin_tokens)
    detail = "; ".join(f"{f.target}: {f.note()}" for f in verdict.fits.values())
    return largest.input_tokens, maximum, detail
