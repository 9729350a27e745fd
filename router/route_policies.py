"""Checks on the ``routes:`` and ``routing:`` sections that span several keys.

Kept apart from config.py so the route policy rules live next to the code that uses them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .features import TASKS

if TYPE_CHECKING:
    from .config import RouterConfig

MIN_EXAMPLES = 10
MAX_EXAMPLES = 30
_ROUTE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Values the route feature takes besides route names.
RESERVED_ROUTE_NAMES = ("none",)


def route_problems(cfg: RouterConfig) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for i, route in enumerate(cfg.routes):
        where = f"routes[{i}]"
        if not _ROUTE_NAME.match(route.name) or route.name in RESERVED_ROUTE_NAMES:
            problems.append(f"{where}.name: {route.name!r} is not a usable route name; expected lower-case "
                            "letters, digits and _ starting with a letter (and not 'none')")
        if route.name in seen:
            problems.append(f"{where}.name: duplicate route name {route.name!r}")
        seen.add(route.name)
        if not route.description.strip() or "\n" in route.description.strip():
            problems.append(f"{where}.description: expected one line saying what work this route is")
        examples = [e for e in route.examples if e.strip()]
        if not MIN_EXAMPLES <= len(examples) <= MAX_EXAMPLES:
            problems.append(f"{where}.examples: route {route.name!r} has {len(examples)} example prompts; "
                            f"expected {MIN_EXAMPLES} to {MAX_EXAMPLES} prompts of this kind of work")
        if route.target is not None and route.target not in cfg.targets:
            problems.append(f"{where}.target: unknown target {route.target!r}; "
                            f"expected one of {sorted(cfg.targets)}")
        for j, task in enumerate(route.keyword_tasks):
            if task not in TASKS:
                problems.append(f"{where}.keyword_tasks[{j}]: unknown task {task!r}; "
                                f"expected one of {list(TASKS)}")
    shared: dict[str, str] = {}
    for route in cfg.routes:
        for example in route.examples:
            if example in shared and shared[example] != route.name:
                problems.append(f"routes: the example {example[:60]!r} is given for both {shared[example]!r} "
                                f"and {route.name!r}; an example must show one route")
            shared[example] = route.name
    emb = cfg.routing.embeddings
    if emb is not None:
        backend = cfg.backends.get(emb.backend)
        if backend is None:
            problems.append(f"routing.embeddings.backend: unknown backend {emb.backend!r}; "
                            f"expected one of {sorted(cfg.backends)}")
        elif backend.type not in ("ollama", "openai"):
            problems.append(f"routing.embeddings.backend: backend {emb.backend!r} is of type "
                            f"{backend.type!r}, which serves no embeddings; expected an ollama or openai "
                            "backend")
        if not 10 <= emb.timeout_ms <= 60_000:
            problems.append(f"routing.embeddings.timeout_ms: expected 10 to 60000, found {emb.timeout_ms}")
    judge = cfg.routing.judge
    if judge is not None:
        if judge.target not in cfg.targets:
            problems.append(f"routing.judge.target: unknown target {judge.target!r}; "
                            f"expected one of {sorted(cfg.targets)}")
        elif cfg.targets[judge.target].backend in cfg.backends and cfg.target_is_cloud(judge.target):
            problems.append(f"routing.judge.target: {judge.target!r} is a cloud target; the judge must be "
                            "a local model (it is asked on every close call)")
        if judge.candidates < 2:
            problems.append(f"routing.judge.candidates: expected >= 2, found {judge.candidates}")
        if not 10 <= judge.timeout_ms <= 60_000:
            problems.append(f"routing.judge.timeout_ms: expected 10 to 60000, found {judge.timeout_ms}")
    if not 0 <= cfg.routing.lexical_weight <= 2:
        problems.append("routing.lexical_weight: expected 0 to 2 (0: the embedding alone), "
                        f"found {cfg.routing.lexical_weight}")
    if not 0 <= cfg.routing.description_weight <= 10:
        problems.append("routing.description_weight: expected 0 to 10 (how many examples a route's description "
                        f"counts as; 0: not at all), found {cfg.routing.description_weight}")
    if cfg.routing.turn_cache_size < 0:
        problems.append(f"routing.turn_cache_size: expected >= 0, found {cfg.routing.turn_cache_size}")
    return problems
