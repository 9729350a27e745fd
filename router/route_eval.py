"""``aibox-router route eval``: how well the route policies place a labelled set of prompts.

Input: JSON Lines, one ``{"prompt": "...", "want": "<route name>" | "local" | "cloud"}`` a line
(``id`` optional). Each prompt is routed exactly as the daemon would route a new user turn (the
semantic classifier, then the rules), optionally inside a captured Claude Code request body so
the classifier sees what production sees. Nothing is sent to a chat backend, nothing is recorded.

Figures:

* agreement: a route label agrees when the turn got that route; ``local`` / ``cloud`` agrees when
  the first target chosen is local / cloud;
* a confusion table and per-route precision and recall (route-labelled prompts);
* cloud recall: of the prompts whose wanted route the rules send to a cloud target (``cloud``
  labels included), the share that went to the cloud; local kept: the same for local;
* local share: of all prompts, the share decided for a local target;
* decision time p50 / p95 for a new turn (embedding call included) and for a reused turn.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from . import pipeline
from .backends import create_backend
from .classifier import RouteClassifier
from .config import RouterConfig
from .errors import ConfigError
from .rules import RuleEngine
from .turns import TurnCache

LOCALITY_LABELS = ("local", "cloud")


@dataclass
class EvalItem:
    prompt: str
    want: str
    id: str = ""


@dataclass
class EvalResult:
    item: EvalItem
    route: str
    source: str
    target: str
    cloud: bool
    want_cloud: bool
    agrees: bool
    score: float
    margin: float
    new_turn_ms: float
    reused_turn_ms: float
    judged: bool = False
    unjudged_route: str = ""  # the classifier's route before the judge, when it was asked
    judge_ms: float | None = None


@dataclass
class EvalReport:
    results: list[EvalResult] = field(default_factory=list)
    routes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rs = self.results
        n = len(rs) or 1
        labelled = [r for r in rs if r.item.want not in LOCALITY_LABELS]
        names = list(self.routes) + sorted({r.route for r in rs} - set(self.routes))
        confusion = {w: {g: 0 for g in names} for w in names}
        for r in labelled:
            confusion.setdefault(r.item.want, {g: 0 for g in names})
            confusion[r.item.want][r.route] = confusion[r.item.want].get(r.route, 0) + 1
        per_route = {}
        for name in names:
            tp = sum(1 for r in labelled if r.item.want == name and r.route == name)
            wanted = sum(1 for r in labelled if r.item.want == name)
            got = sum(1 for r in labelled if r.route == name)
            if wanted or got:
                per_route[name] = {"support": wanted, "precision": _ratio(tp, got),
                                   "recall": _ratio(tp, wanted)}
        want_cloud = [r for r in rs if r.want_cloud]
        want_local = [r for r in rs if not r.want_cloud]
        new = [r.new_turn_ms for r in rs]
        reused = [r.reused_turn_ms for r in rs]
        return {
            "prompts": len(rs),
            "agreement": _ratio(sum(r.agrees for r in rs), len(rs)),
            "locality_agreement": _ratio(sum(r.cloud == r.want_cloud for r in rs), len(rs)),
            "cloud_recall": _ratio(sum(r.cloud for r in want_cloud), len(want_cloud)),
            "local_kept": _ratio(sum(not r.cloud for r in want_local), len(want_local)),
            "local_share": round(sum(not r.cloud for r in rs) / n, 4),
            "keyword_fallbacks": sum(r.source == "keyword" for r in rs),
            "judge_asked": sum(r.judged for r in rs),
            "judge": _judge_summary(rs),
            "per_route": per_route,
            "confusion": confusion,
            "decision_ms": {"new_turn_p50": _pct(new, 50), "new_turn_p95": _pct(new, 95),
                            "reused_turn_p50": _pct(reused, 50), "reused_turn_p95": _pct(reused, 95)},
            "misses": [{"id": r.item.id, "prompt": r.item.prompt, "want": r.item.want, "got": r.route,
                        "target": r.target, "score": round(r.score, 3), "margin": round(r.margin, 3)}
                       for r in rs if not r.agrees],
        }


def _judge_summary(rs: list[EvalResult]) -> dict[str, Any]:
    """On the route-labelled turns the judge was asked about: its agreement against the classifier's."""
    asked = [r for r in rs if r.judged and r.item.want not in LOCALITY_LABELS]
    answered = [r.judge_ms for r in rs if r.judged and r.judge_ms is not None]
    return {"asked": len(asked),
            "agreement_with_judge": _ratio(sum(r.route == r.item.want for r in asked), len(asked)),
            "agreement_without_judge": _ratio(sum(r.unjudged_route == r.item.want for r in asked),
                                              len(asked)),
            "changed": sum(r.route != r.unjudged_route for r in asked),
            "judge_ms_p50": _pct(answered, 50), "judge_ms_p95": _pct(answered, 95)}


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _pct(values: list[float], p: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 4)
    return round(statistics.quantiles(values, n=100, method="inclusive")[p - 1], 4)


def load_items(path: str | Path) -> list[EvalItem]:
    items: list[EvalItem] = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}:{number}: not a JSON object: {e}") from None
        if not (isinstance(data, dict) and isinstance(data.get("prompt"), str)
                and isinstance(data.get("want"), str)):
            raise ConfigError(f"{path}:{number}: expected {{\"prompt\": str, \"want\": str}}")
        items.append(EvalItem(data["prompt"], data["want"], str(data.get("id") or number)))
    return items


def check_labels(items: list[EvalItem], config: RouterConfig, source: str) -> None:
    known = {r.name for r in config.routes} | set(LOCALITY_LABELS)
    unknown = sorted({i.want for i in items} - known)
    if unknown:
        raise ConfigError(f"{source}: labels {unknown} are neither a route of the config nor local/cloud; "
                          f"expected one of {sorted(known)}")


def plain_request(prompt: str, model: str = "claude-opus-4-8") -> dict[str, Any]:
    return {"model": model, "max_tokens": 4096, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}


def wrap_in(template: dict[str, Any]) -> Any:
    """A function putting a prompt where the user's words are in a captured request body."""
    messages = template.get("messages") or []
    for index in range(len(messages) - 1, -1, -1):
        content = messages[index].get("content")
        if messages[index].get("role") == "user" and isinstance(content, list):
            blocks = [j for j, b in enumerate(content) if b.get("type") == "text"
                      and not str(b.get("text", "")).lstrip().startswith("<system-reminder>")]
            if blocks:
                m_index, b_index = index, blocks[-1]
                break
    else:
        raise ConfigError("the wrapping body has no user text block to put prompts in")

    def wrap(prompt: str) -> dict[str, Any]:
        body = copy.copy(template)
        body["messages"] = list(template["messages"][: m_index + 1])
        message = dict(body["messages"][m_index])
        content = list(message["content"])
        content[b_index] = {**content[b_index], "text": prompt}
        message["content"] = content
        body["messages"][m_index] = message
        return body

    return wrap


class _EvalRuntime:
    """What planning needs: the config, rules (daily limits read as unused), classifier, turns."""

    def __init__(self, config: RouterConfig, classifier: RouteClassifier):
        self.config = config
        self.rules = RuleEngine(config, lambda rule: 0)
        self.classifier = classifier
        self.turns = TurnCache(config.routing.turn_cache_size, config.routing.turn_ttl_s)
        self.gpu = None
        # Only the judge (a local model) is ever asked, and only when one is configured.
        self.backends = _judge_backends(config)

    async def aclose(self) -> None:
        for backend in self.backends.values():
            await backend.aclose()


def _judge_backends(config: RouterConfig) -> dict[str, Any]:
    if config.routing.judge is None:
        return {}
    name = config.targets[config.routing.judge.target].backend
    return {name: create_backend(name, config.backends[name])}


async def run_eval(config: RouterConfig, items: list[EvalItem], *, wrap: Any = None,
                   classifier: RouteClassifier | None = None, client: str = "eval") -> EvalReport:
    """Route every item as a new turn; examples that cannot be embedded leave the keyword fallback,
    which the report counts (``keyword_fallbacks``)."""
    owned = classifier is None
    classifier = classifier or RouteClassifier(config, cache_dir=config.server.state_dir,
                                               cache_read_only=True)
    await classifier.prepare()
    runtime = _EvalRuntime(config, classifier)
    report = EvalReport(routes=[r.name for r in config.routes])
    try:
        await _route_all(runtime, config, items, wrap, client, report)
    finally:
        await runtime.aclose()
        if owned:
            await classifier.aclose()
    return report


async def _route_all(runtime: _EvalRuntime, config: RouterConfig, items: list[EvalItem], wrap: Any,
                     client: str, report: EvalReport) -> None:
    for item in items:
        request = wrap(item.prompt) if wrap else plain_request(item.prompt)
        body_size = len(json.dumps(request)) if wrap else len(item.prompt) + 100
        started = time.perf_counter()
        plan = await pipeline.plan_turn(cast(Any, runtime), request, client=client, protocol="anthropic",
                                        body_size=body_size)
        new_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        await pipeline.plan_turn(cast(Any, runtime), request, client=client, protocol="anthropic",
                                 body_size=body_size)
        reused_ms = (time.perf_counter() - started) * 1000
        route = plan.features.route
        cloud = config.target_is_cloud(plan.decision.target)
        want_cloud = _wanted_cloud(runtime, plan, item.want)
        agrees = (cloud == want_cloud) if item.want in LOCALITY_LABELS else route == item.want
        report.results.append(EvalResult(item, route, plan.features.route_source, plan.decision.target, cloud,
                                         want_cloud, agrees, plan.features.route_score,
                                         plan.features.route_margin, new_ms, reused_ms,
                                         plan.match.judge != "not asked", plan.match.unjudged_route,
                                         plan.match.judge_ms))


def _wanted_cloud(runtime: _EvalRuntime, plan: Any, want: str) -> bool:
    """Would the rules send this request to the cloud had it got the wanted route?"""
    if want in LOCALITY_LABELS:
        return want == "cloud"
    features = copy.copy(plan.features)
    features.route, features.route_source = want, "embedding"
    return runtime.config.target_is_cloud(runtime.rules.decide(features).target)


def format_report(summary: dict[str, Any], show_misses: int = 20) -> str:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v * 100:.1f}%"

    lines = [(f"prompts: {summary['prompts']}   agreement: {pct(summary['agreement'])}   "
             f"local/cloud agreement: {pct(summary['locality_agreement'])}"),
             (f"cloud recall (Claude-reserved kept for Claude): {pct(summary['cloud_recall'])}   "
             f"local-first kept local: {pct(summary['local_kept'])}   "
             f"local share: {pct(summary['local_share'])}"),
             f"keyword fallbacks: {summary['keyword_fallbacks']}   judge asked: {summary['judge_asked']}"]
    j = summary["judge"]
    if j["asked"]:
        lines.append(f"judge, on the {j['asked']} route-labelled close calls it was asked about: agreement "
                     f"{pct(j['agreement_with_judge'])} with it, "
                     f"{pct(j['agreement_without_judge'])} without; "
                     f"changed {j['changed']}; {j['judge_ms_p50']} ms p50, {j['judge_ms_p95']} ms p95")
    d = summary["decision_ms"]
    lines.append(f"decision time: new turn p50 {d['new_turn_p50']} ms, p95 {d['new_turn_p95']} ms; "
                 f"reused turn p50 {d['reused_turn_p50']} ms, p95 {d['reused_turn_p95']} ms")
    lines.append("")
    lines.append(f"{'route':<16} {'support':>7} {'precision':>9} {'recall':>7}")
    for name, s in summary["per_route"].items():
        lines.append(f"{name:<16} {s['support']:>7} {pct(s['precision']):>9} {pct(s['recall']):>7}")
    names = [n for n in summary["confusion"] if any(summary["confusion"][n].values())
             or any(row.get(n) for row in summary["confusion"].values())]
    if names:
        lines.append("")
        lines.append("confusion (rows: wanted, columns: got)")
        short = {n: n[:6] for n in names}
        lines.append(" " * 16 + " ".join(f"{short[n]:>6}" for n in names))
        for want in names:
            row = summary["confusion"].get(want, {})
            lines.append(f"{want:<16}" + " ".join(f"{row.get(g, 0) or '.':>6}" for g in names))
    misses = summary["misses"]
    if misses and show_misses:
        lines.append("")
        lines.append(f"disagreements ({len(misses)}, first {min(show_misses, len(misses))}):")
        for m in misses[:show_misses]:
            lines.append(f"  [{m['id']}] want {m['want']}, got {m['got']} -> {m['target']} "
                         f"(score {m['score']}, margin {m['margin']}): {m['prompt'][:90]}")
    return "\n".join(lines)
