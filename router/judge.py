"""The optional LLM judge for close calls, the way Arch-Router routes: a small local chat model reads
the route descriptions and the user's words and names the route.

Off unless ``routing.judge`` is set. It is asked only when the classifier's margin between the two
best routes is below ``routing.judge.margin_below``, only about the ``candidates`` best routes, and
only on a local target (the config check refuses a cloud one: a judge must not cost money). An
answer that names no candidate, an error or no answer within ``timeout_ms`` keeps the classifier's
route; ``route explain`` and the match's ``judge`` field say which happened.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from .classifier import RouteMatch
from .config import RouterConfig
from .internal import CallContext, text_of

_SYSTEM = ("You route developer requests. Read the routes and the request, then answer with the name of "
           "the one route that fits the request best. Answer with the route name only.")


def judge_prompt(config: RouterConfig, names: list[str], text: str) -> str:
    descriptions = {r.name: r.description for r in config.routes}
    routes = "\n".join(f"- {name}: {descriptions[name]}" for name in names)
    return f"Routes:\n{routes}\n\nRequest:\n{text}\n\nRoute name:"


def pick_route(answer: str, names: list[str]) -> str | None:
    """The candidate the answer names first (whole words, any case), or None."""
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
    request = {"model": target.model, "max_tokens": 16, "temperature": 0, "system": _SYSTEM,
               "messages": [{"role": "user", "content": judge_prompt(runtime.config, names, text)}]}
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
