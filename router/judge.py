"""The optional LLM judge for close calls, the way Arch-Router routes: a small local chat model reads
the route descriptions and the user's words and names the route.

Off unless ``routing.judge`` is set. It is asked only when the classifier's margin between the two
best routes is below ``routing.judge.margin_below``, only about the ``candidates`` best routes, and
only on a local target (the config check refuses a cloud one: a judge must not cost money). An
answer that names no candidate, an error or no answer within ``timeout_ms`` keeps the classifier's
route; ``route explain`` and the match's ``judge`` field say which happened.

The answer is constrained to the candidates' names: the request carries a JSON schema whose one
property is an enum of them (``output_format``, which the OpenAI-compatible backend sends as
``response_format`` and the Ollama backend as ``format``), so llama.cpp, vLLM and Ollama can only
produce ``{"route": "<a candidate>"}``. A server that ignores the schema may still answer in free
text; the first candidate named in it then counts.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

from .classifier import RouteMatch
from .config import RouterConfig
from .internal import CallContext, text_of
from .targets import prepare_for_target

_SYSTEM = ("You route developer requests. Read the routes and the request, then answer with the name of "
           'the one route that fits the request best, as JSON: {"route": "<route name>"}.')

# The answer is one short JSON object ({"route": "cross_codebase"} is about 10 tokens): a small cap
# bounds the call's latency without cutting a valid answer.
MAX_ANSWER_TOKENS = 24


def answer_schema(names: list[str]) -> dict[str, Any]:
    """The JSON schema that only an object naming one of *names* satisfies."""
    return {"type": "object", "properties": {"route": {"type": "string", "enum": list(names)}},
            "required": ["route"], "additionalProperties": False}


def judge_request(config: RouterConfig, model: str, names: list[str], text: str) -> dict[str, Any]:
    """The Messages request to the judge, with its answer constrained to *names*."""
    return {"model": model, "max_tokens": MAX_ANSWER_TOKENS, "temperature": 0, "system": _SYSTEM,
            "messages": [{"role": "user", "content": judge_prompt(config, names, text)}],
            "output_format": {"type": "json_schema", "schema": answer_schema(names)}}


def judge_prompt(config: RouterConfig, names: list[str], text: str) -> str:
    descriptions = {r.name: r.description for r in config.routes}
    routes = "\n".join(f"- {name}: {descriptions[name]}" for name in names)
    return f"Routes:\n{routes}\n\nRequest:\n{text}\n\nRoute name:"


def pick_route(answer: str, names: list[str]) -> str | None:
    """The candidate the answer names: the ``route`` of a JSON answer that follows the schema, else
    (a server that ignored it) the first candidate named in the text (whole words, any case), or None."""
    try:
        decoded = json.loads(answer)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("route") in names:
        return str(decoded["route"])
    found: list[tuple[int, str]] = []
    lowered = answer.lower()
    for name in names:
        m = re.search(rf"(?<![a-z0-9_]){re.escape(name)}(?![a-z0-9_])", lowered)
        if m:
            found.append((m.start(), name))
    return min(found)[1] if found else None


async def consult(runtime: Any, text: str, match: RouteMatch) -> RouteMatch:
    """Ask the judge when *match* is a close call; return the (possibly changed) match."""
    settings = runtime.config.routing.judge
    if settings is None or match.source != "embedding" or match.margin >= settings.margin_below:
        return match
    names = list(match.scores)[: settings.candidates]
    target = runtime.config.targets[settings.target]
    backend = runtime.backends[target.backend]
    request = prepare_for_target(judge_request(runtime.config, target.model, names, text), target)
    match.unjudged_route = match.route
    started = time.perf_counter()
    try:
        message = await asyncio.wait_for(backend.complete(request, target, CallContext()),
                                         settings.timeout_ms / 1000)
    except TimeoutError:
        match.judge_ms = (time.perf_counter() - started) * 1000
        match.judge = (f"asked {settings.target}: no answer within {settings.timeout_ms} ms; "
                       f"kept {match.route}")
        return match
    except Exception as e:  # noqa: BLE001 - the judge is advice; the classifier's route stands
        match.judge_ms = (time.perf_counter() - started) * 1000
        match.judge = f"asked {settings.target}: failed ({type(e).__name__}: {e}); kept {match.route}"
        return match
    elapsed = match.judge_ms = (time.perf_counter() - started) * 1000
    answer = text_of(message.get("content")).strip()
    chosen = pick_route(answer, names)
    if chosen is None:
        match.judge = (f"asked {settings.target} ({elapsed:.0f} ms): answer {answer[:40]!r} names no "
                       f"candidate; kept {match.route}")
        return match
    was = match.route
    match.judge = f"asked {settings.target} ({elapsed:.0f} ms) among {', '.join(names)}: chose {chosen}" + (
        f" over {was}" if chosen != was else "")
    match.route, match.score = chosen, match.scores.get(chosen, match.score)
    return match
