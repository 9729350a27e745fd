"""What a request is: the features routing rules are written against.

Every feature is cheap to compute (a 100 KB Claude Code request must cost well under a
millisecond here), so classification is keyword-based over the last user turn, not a model call.

Features available to rule expressions:

========================  ====================================================================
``model``                 the model name the client asked for (``claude-sonnet-4-5``)
``model_class``           ``opus`` / ``sonnet`` / ``haiku`` / ``other`` from that name
``alias``                 target name the ``aliases`` table maps the model to, or ``none``
``input_tokens``          estimated input tokens (about 4 bytes of request JSON per token)
``context_tokens``        input tokens estimated on the high side, as the context check counts
                          them (see context.py)
``fits_local``            the request fits the (known) context window of at least one local target
``max_tokens``            the request's ``max_tokens``
``has_tools``             the request defines tools
``tool_count``            how many tools it defines
``has_thinking``          extended thinking is on (``enabled`` or ``adaptive``)
``stream``                the client asked for a stream
``task``                  ``code_generation``, ``debugging``, ``documentation``, ``explanation``,
                          ``pattern_recognition``, ``planning`` or ``general``
``complexity``            0 (trivial) to 10 (hard), see ``complexity_score``
``route``                 the route policy the user turn belongs to (``routes:``), or ``none``
``route_score``           the route's similarity score, 0 to 1 (0 when routed by keywords)
``route_margin``          its lead over the runner-up route: small means a close call
``route_source``          ``embedding``, ``keyword`` (the fallback) or ``none``; see classifier.py
``client``                the authenticated client's name
``override``              the target named in the override header, or ``none``
``protocol``              ``anthropic`` or ``openai`` (the inbound API)
``gpu_*``                 GPU state (see gpu.py); configured defaults where no GPU can be read
========================  ====================================================================
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from .internal import Request, text_of

TASKS = ("code_generation", "debugging", "documentation", "explanation", "pattern_recognition",
         "planning", "general")

# Ordered: the first task whose patterns score highest wins; ties go to the earlier task.
_TASK_PATTERNS: dict[str, tuple[str, ...]] = {
    "debugging": (r"\bdebug", r"\bbug\b", r"\bfix(es|ing)?\b", r"\berror\b", r"\bexception\b", r"traceback",
                  r"\bfail(s|ed|ing|ure)?\b", r"\bcrash", r"\bbroken\b", r"doesn'?t work", r"\bstack ?trace",
                  r"\bsegfault", r"\bwhy does\b.*\b(fail|break|crash)"),
    "code_generation": (r"\bwrite\b.*\b(function|class|script|code|test|program|module|method)",
                        r"\bimplement", r"\bcreate\b.*\b(function|class|script|endpoint|component|api)",
                        r"\bgenerate\b.*\bcode", r"\badd\b.*\b(function|method|endpoint|feature|test)",
                        r"\brefactor", r"\bcode\b", r"```"),
    "documentation": (r"\bdocument", r"\bdocstring", r"\breadme\b", r"\bcomments?\b", r"\bchangelog",
                      r"\bapi docs?\b", r"\bwrite\b.*\b(docs|guide|tutorial|release notes)"),
    "explanation": (r"\bexplain", r"\bwhat (is|are|does)\b", r"\bhow does\b", r"\bwhy\b", r"\bdescribe",
                    r"\bsummar", r"\bwalk me through", r"\bmeaning of"),
    "pattern_recognition": (r"\bpattern", r"\banomal", r"\bcorrelat", r"\btrend", r"\bacross (the|all|every)\b",
                            r"\bfind (all|every)\b", r"\bsimilar", r"\bcluster",
                            r"\banaly[sz]e\b.*\b(logs?|data|codebase)", r"\bdetect"),
    "planning": (r"\bplan\b", r"\bplanning", r"\bdesign\b", r"\barchitect", r"\broadmap", r"\bstrategy",
                 r"\bmigrat", r"\bsteps? to\b", r"\bbreak (it|this) down", r"\bproposal"),
}


def required_literal(pattern: str) -> str:
    """The plain text at the start of *pattern* (after a leading ``\\b``) that every match contains,
    lower-cased; "" when there is none or the pattern has a top-level ``|``.

    ``literal in text`` rules a pattern out for most texts at memchr speed, before the regex
    engine scans them position by position (47 scans cost about 2 ms on a 4000-character turn).
    """
    depth, i = 0, 0
    while i < len(pattern):  # a top-level alternative need not contain the first branch's text
        c = pattern[i]
        if c == "\\":
            i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return ""
        i += 1
    body = pattern.removeprefix("\\b")
    run = ""
    for c in body:
        if c in ".^$*+?{}[]|()\\":
            if c in "?*{":  # the character before an optional quantifier is not required
                run = run[:-1]
            break
        run += c
    return run.lower()


_COMPILED = {task: [(required_literal(p), re.compile(p, re.IGNORECASE)) for p in pats]
             for task, pats in _TASK_PATTERNS.items()}
_SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.DOTALL)

_HARD_WORDS = re.compile(
    r"\b(architect\w*|distributed|concurren\w*|race condition|deadlock|security|vulnerab\w*|"
    r"optimi[sz]\w*|performance|scal\w*|migrat\w*|across the (codebase|repo\w*)|entire|whole system|"
    r"prove|formal|algorithm\w*|trade-?offs?|root cause)\b",
    re.IGNORECASE,
)


@dataclass
class Features:
    """One request's features, the names rule expressions see (``as_namespace``); each is described
    in the table of this module's docstring."""

    model: str = ""
    model_class: str = "other"
    alias: str = "none"
    input_tokens: int = 0
    max_tokens: int = 0
    has_tools: bool = False
    tool_count: int = 0
    has_thinking: bool = False
    stream: bool = False
    task: str = "general"
    complexity: int = 0
    route: str = "none"
    route_score: float = 0.0
    route_margin: float = 0.0
    route_source: str = "none"
    client: str = "anonymous"
    override: str = "none"
    protocol: str = "anthropic"
    gpu: dict[str, float] = field(default_factory=dict)
    # Set by pipeline.plan_request from the context check (context.py).
    context_tokens: int = 0
    fits_local: bool = True

    def as_namespace(self) -> dict[str, Any]:
        # A shallow copy: dataclasses.asdict deep-copies and cost ~0.1 ms per request.
        ns = dict(self.__dict__)
        ns.update(ns.pop("gpu"))
        return ns


def model_class(model: str) -> str:
    m = model.lower()
    for cls in ("opus", "sonnet", "haiku"):
        if cls in m:
            return cls
    return "other"


def resolve_alias(model: str, aliases: dict[str, str]) -> str | None:
    """Target of the first alias glob (in config order) matching the requested model name."""
    pattern = alias_pattern(model, aliases)
    return aliases[pattern] if pattern is not None else None


def alias_pattern(model: str, aliases: dict[str, str]) -> str | None:
    """The first alias glob (in config order) matching the requested model name."""
    for pattern in aliases:
        if fnmatch.fnmatchcase(model, pattern):
            return pattern
    return None


def last_user_text(request: Request) -> str:
    """Text of the last user turn that has any (tool-result-only turns are skipped)."""
    for message in reversed(request.get("messages") or []):
        if message.get("role") == "user":
            text = text_of(message.get("content"))
            if text.strip():
                return text
    return ""


def classify_task(text: str) -> str:
    # Claude Code prepends long <system-reminder> blocks; they say nothing about the task.
    if "<system-reminder>" in text:
        text = _SYSTEM_REMINDER.sub(" ", text)
    text = text[:4000]
    lowered = text.lower()
    best, best_score = "general", 0
    for task, patterns in _COMPILED.items():
        score = sum(1 for literal, p in patterns if literal in lowered and p.search(text))
        if score > best_score:
            best, best_score = task, score
    return best


def complexity_score(text: str, input_tokens: int, tool_count: int, has_thinking: bool, task: str) -> int:
    """0-10: how much a request would benefit from the strongest model.

    Long context, hard-problem vocabulary, explicit thinking and planning/pattern work push it up;
    short questions stay low. Deliberately simple so operators can predict it (see ``route explain``).
    """
    score = 0.0
    score += min(len(_HARD_WORDS.findall(text)), 4) * 1.0
    if input_tokens > 50_000:
        score += 2
    elif input_tokens > 15_000:
        score += 1
    words = len(text.split())
    if words > 400:
        score += 2
    elif words > 120:
        score += 1
    if has_thinking:
        score += 2
    if task in ("planning", "pattern_recognition"):
        score += 1
    if tool_count > 30:
        score += 1
    return int(max(0, min(10, round(score))))


def extract_features(request: Request, *, body_size: int, client: str, protocol: str,
                     aliases: dict[str, str], override: str | None = None,
                     gpu: dict[str, float] | None = None) -> Features:
    model = str(request.get("model") or "")
    tools = request.get("tools") or []
    thinking = request.get("thinking")
    has_thinking = isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")
    text = last_user_text(request)
    task = classify_task(text)
    input_tokens = max(1, body_size // 4)
    return Features(
        model=model,
        model_class=model_class(model),
        alias=resolve_alias(model, aliases) or "none",
        input_tokens=input_tokens,
        max_tokens=int(request.get("max_tokens") or 0),
        has_tools=bool(tools),
        tool_count=len(tools),
        has_thinking=has_thinking,
        stream=bool(request.get("stream")),
        task=task,
        complexity=complexity_score(text, input_tokens, len(tools), has_thinking, task),
        client=client,
        override=override or "none",
        protocol=protocol,
        gpu=dict(gpu or {}),
    )
