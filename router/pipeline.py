"""One request's journey: features -> rules -> budget gate -> backend (with fallbacks) -> ledger.

Protocol-neutral: callers hand in an internal (Anthropic-shaped) request and get back a message
or a stream of internal events. ``settle`` is called exactly once for every call that reached a
backend or was refused, however it ended, so the ledger and the budget never lose a request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .accounting import Admission, RequestRecord, Reservation
from .backends import BackendUnavailable
from .classifier import RouteMatch, user_turn_text
from .config import TargetConfig
from .errors import BudgetExhaustedError, RouterError, UpstreamError, UpstreamStatusError
from .features import Features, extract_features
from .gpu import energy_between
from .internal import CallContext, Message, Request, StreamEvent
from .judge import consult
from .rules import RouteDecision
from .runtime import Runtime
from .turns import turn_key

log = logging.getLogger("aibox_router.pipeline")

@dataclass
class Plan:
    features: Features
    decision: RouteDecision
    chain: list[str]  # the chosen target, then its configured fallbacks
    match: RouteMatch = field(default_factory=RouteMatch)
    reused: bool = False  # the decision of an earlier request of the same user turn


@dataclass
class Outcome:
    """Which target answered, for response headers and callers such as the MCP server."""

    plan: Plan
    target: str = ""
    backend: str = ""
    model: str = ""
    fallback: bool = False
    downgraded: bool = False
    message: Message | None = None
    events: AsyncIterator[StreamEvent] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def decision(self) -> RouteDecision:
        return self.plan.decision

    def headers(self) -> dict[str, str]:
        h = {"x-aibox-target": self.target, "x-aibox-backend": self.backend, "x-aibox-model": self.model,
             "x-aibox-rule": self.plan.decision.rule, "x-aibox-fallback": "true" if self.fallback else "false",
             "x-aibox-route": self.plan.features.route}
        if self.downgraded:
            h["x-aibox-downgraded"] = "true"
        return h


def plan_request(runtime: Runtime, request: Request, *, client: str, protocol: str, body_size: int,
                 override: str | None = None, match: RouteMatch | None = None,
                 decision: RouteDecision | None = None) -> Plan:
    """Features and decision for one request; *match* is the turn's route, *decision* a reused one."""
    cfg = runtime.config
    model = str(request.get("model") or "")
    # Asking for a target by name (e.g. "coder" from an OpenAI client) works like the override header.
    if override is None and model in cfg.targets:
        override = model
    gpu = runtime.gpu.features() if runtime.gpu is not None else dict(cfg.gpu.defaults_when_absent)
    features = extract_features(request, body_size=body_size, client=client, protocol=protocol,
                                aliases=cfg.aliases, override=override, gpu=gpu)
    match = match or RouteMatch()
    features.route, features.route_score = match.route, match.score
    features.route_margin, features.route_source = match.margin, match.source
    reused = decision is not None and override is None
    if not reused:
        decision = runtime.rules.decide(features)
    assert decision is not None
    chain = [decision.target] + [t for t in cfg.targets[decision.target].fallback if t != decision.target]
    return Plan(features, decision, chain, match, reused)


async def plan_turn(runtime: Runtime, request: Request, *, client: str, protocol: str, body_size: int,
                    override: str | None = None) -> Plan:
    """Plan a request, deciding once per user turn (see turns.py): a new turn is classified and
    decided, later requests of the same turn reuse that decision."""
    text = user_turn_text(request)
    model = str(request.get("model") or "")
    key = turn_key(client, model, text)
    forced = override is not None or model in runtime.config.targets
    if not forced:
        hit = runtime.turns.get(key)
        if hit is not None:
            return plan_request(runtime, request, client=client, protocol=protocol, body_size=body_size,
                                match=hit.match, decision=hit.decision)
    match = await runtime.classifier.classify(text)
    if runtime.config.routing.judge is not None:
        match = await consult(runtime, text, match)
    plan = plan_request(runtime, request, client=client, protocol=protocol, body_size=body_size,
                        override=override, match=match)
    if plan.decision.rule != "override":
        runtime.turns.put(key, match, plan.decision)
    return plan


def _prepare(request: Request, target: TargetConfig) -> Request:
    body = {**request, "model": target.model}
    if target.max_output_tokens and int(body.get("max_tokens") or 0) > target.max_output_tokens:
        body["max_tokens"] = target.max_output_tokens
    return body


class _Call:
    """Book-keeping for one attempt on one target: timing, energy, and the ledger record."""

    def __init__(self, runtime: Runtime, plan: Plan, target_name: str, index: int, downgraded: bool,
                 protocol: str, stream: bool):
        cfg = runtime.config
        self.runtime = runtime
        self.target_name = target_name
        self.target = cfg.targets[target_name]
        self.backend = runtime.backends[self.target.backend]
        self.cloud = cfg.backends[self.target.backend].is_cloud
        self.ctx = CallContext()
        self.reservation: Reservation | None = None
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.output_chars = 0
        self._energy0 = None if self.cloud or runtime.gpu is None else runtime.gpu.energy_joules()
        f = plan.features
        self.record = RequestRecord(
            ts=time.time(), client=f.client, rule=plan.decision.rule, target=target_name,
            backend=self.target.backend, model=self.target.model, protocol=protocol, stream=stream,
            cloud=self.cloud, fallback=index > 0, downgraded=downgraded, task=f.task,
            complexity=f.complexity, route=f.route, route_source=f.route_source,
        )
        self._settled = False

    def outcome(self, plan: Plan, *, message: Message | None = None,
                events: AsyncIterator[StreamEvent] | None = None) -> Outcome:
        """The answer this call gave: a whole message, or the events of a stream."""
        return Outcome(plan, self.target_name, self.target.backend, self.target.model,
                       fallback=self.record.fallback, downgraded=self.record.downgraded,
                       message=message, events=events)

    def observe(self, event: StreamEvent) -> None:
        if event.get("type") == "content_block_delta":
            if self.first_token is None:
                self.first_token = time.perf_counter()
            delta = event.get("delta") or {}
            self.output_chars += len(delta.get("text") or delta.get("partial_json") or delta.get("thinking") or "")

    async def settle(self, status: str, http_status: int = 200, error: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        rec = self.record
        rec.usage = self.ctx.usage
        if status == "aborted" and rec.usage.output_tokens < self.output_chars // 4:
            # The stream ended before the final usage event: count what the client received.
            rec.usage.output_tokens = self.output_chars // 4
            rec.usage.estimated = True
        now = time.perf_counter()
        rec.latency_ms = (now - self.started) * 1000
        rec.ttft_ms = (self.first_token - self.started) * 1000 if self.first_token else None
        rec.status, rec.http_status, rec.error = status, http_status, error[:500]
        if self._energy0 is not None and self.runtime.gpu is not None:
            # None when the counter is unreadable or went backwards (driver reload): unknown, not 0 J.
            rec.energy_j = energy_between(self._energy0, self.runtime.gpu.energy_joules())
        try:
            await self.runtime.accounting.settle(self.reservation, rec)
        except Exception:  # the answer was served; a ledger failure is logged loudly, not turned into a 500
            log.exception("ledger: could not settle a %s call to %s", status, self.target_name)


async def _admit(runtime: Runtime, call: _Call, plan: Plan, request: Request) -> Admission:
    return await runtime.accounting.admit(target=call.target_name, model=call.target.model,
                                          client=plan.features.client, request=request,
                                          input_tokens=plan.features.input_tokens)


async def _no_target_error(runtime: Runtime, plan: Plan, protocol: str, stream: bool,
                           refusals: list[str], failures: list[str]) -> RouterError:
    if refusals and not failures:
        # Nothing was sent anywhere: still record the refusal, so reports show what the budget blocked.
        refused = _Call(runtime, plan, plan.chain[0], 0, False, protocol, stream)
        runtime.accounting.rule_started(plan.decision.rule)
        await refused.settle("refused", 400, "; ".join(refusals))
        return BudgetExhaustedError("The aibox router will not send this request to the cloud: "
                                    + "; ".join(refusals) + ". No local model could take it. Retrying will not "
                                    "help until the budget day rolls over or an operator releases the cutoff.")
    return UpstreamError("No backend could answer: " + "; ".join(refusals + failures))


async def _attempts(runtime: Runtime, plan: Plan, request: Request, protocol: str, stream: bool,
                    refusals: list[str], forward_headers: dict[str, str] | None) -> AsyncIterator[_Call]:
    """Yield a call for each target in the chain the budget allows; note refusals in *refusals*."""
    downgraded = False
    for index, target_name in enumerate(plan.chain):
        call = _Call(runtime, plan, target_name, index, downgraded, protocol, stream)
        if call.cloud:
            admission = await _admit(runtime, call, plan, request)
            if not admission.allowed:
                refusals.append(f"{target_name}: {admission.reason}")
                downgraded = True
                continue
            call.reservation = admission.reservation
        # Counted from now, so concurrent requests cannot all slip under a rule's daily_limit.
        runtime.accounting.rule_started(plan.decision.rule)
        call.ctx.forward_headers = dict(forward_headers or {})
        yield call


async def _pass_over(call: _Call, e: BackendUnavailable, failures: list[str]) -> None:
    """A target that could not answer: note why for the final error, and settle its call."""
    failures.append(f"{call.target_name}: {e.reason}")
    log.warning("target %s unavailable (%s); trying the next in the chain", call.target_name, e.reason)
    await call.settle("error", e.status or 502, e.reason)


async def complete(runtime: Runtime, request: Request, *, client: str, protocol: str,
                   forward_headers: dict[str, str] | None = None, override: str | None = None,
                   body_size: int | None = None, plan: Plan | None = None) -> Outcome:
    """Route and answer a non-streaming request."""
    plan = plan or await plan_turn(runtime, request, client=client, protocol=protocol,
                                   body_size=body_size or len(str(request)), override=override)
    failures: list[str] = []
    refusals: list[str] = []
    async for call in _attempts(runtime, plan, request, protocol, False, refusals, forward_headers):
        try:
            message = await call.backend.complete(_prepare(request, call.target), call.target, call.ctx)
        except BackendUnavailable as e:
            await _pass_over(call, e, failures)
            continue
        except UpstreamStatusError as e:
            await call.settle("error", e.status, e.message)
            raise
        except BaseException as e:
            await asyncio.shield(call.settle("aborted" if isinstance(e, asyncio.CancelledError) else "error",
                                             499 if isinstance(e, asyncio.CancelledError) else 500, repr(e)))
            raise
        call.ctx.usage.update_from(message.get("usage"))
        call.first_token = call.first_token or time.perf_counter()
        await call.settle("ok")
        return call.outcome(plan, message=message)
    raise await _no_target_error(runtime, plan, protocol, False, refusals, failures)


async def open_stream(runtime: Runtime, request: Request, *, client: str, protocol: str,
                      forward_headers: dict[str, str] | None = None, override: str | None = None,
                      body_size: int | None = None, plan: Plan | None = None) -> Outcome:
    """Route a streaming request; return once a backend has produced its first event.

    Falling back is only possible before that first event: afterwards the client has seen part of
    an answer. The returned ``Outcome.events`` must be iterated to the end or closed.
    """
    plan = plan or await plan_turn(runtime, request, client=client, protocol=protocol,
                                   body_size=body_size or len(str(request)), override=override)
    failures: list[str] = []
    refusals: list[str] = []
    async for call in _attempts(runtime, plan, request, protocol, True, refusals, forward_headers):
        upstream = call.backend.stream(_prepare(request, call.target), call.target, call.ctx)
        try:
            first = await upstream.__anext__()
        except BackendUnavailable as e:
            await _pass_over(call, e, failures)
            continue
        except StopAsyncIteration:
            failures.append(f"{call.target_name}: empty stream")
            await call.settle("error", 502, "empty stream")
            continue
        except UpstreamStatusError as e:
            await call.settle("error", e.status, e.message)
            raise
        except BaseException as e:
            await asyncio.shield(call.settle("error", 500, repr(e)))
            raise
        return call.outcome(plan, events=_relay(call, first, upstream))
    raise await _no_target_error(runtime, plan, protocol, True, refusals, failures)


async def _relay(call: _Call, first: StreamEvent, upstream: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """Pass events through, noting time to first token; settle however the stream ends."""
    status, http_status, error = "aborted", 499, "client closed the stream"
    try:
        call.observe(first)
        yield first
        async for event in upstream:
            call.observe(event)
            if event.get("type") == "error":
                status, http_status = "error", 502
                error = str((event.get("error") or {}).get("message", "upstream error event"))
            yield event
        if status != "error":
            status, http_status, error = "ok", 200, ""
    except BackendUnavailable as e:  # upstream died mid-stream
        status, http_status, error = "error", 502, e.reason
        raise
    finally:
        closer = getattr(upstream, "aclose", None)
        if closer is not None:
            try:
                await closer()
            except Exception as e:  # noqa: BLE001 - the stream is over either way; settle must still run
                log.debug("closing the upstream stream of %s: %s", call.target_name, e)
        await asyncio.shield(call.settle(status, http_status, error))


def explain(plan: Plan, runtime: Runtime) -> dict[str, Any]:
    """What ``route explain`` prints: the features, each rule's verdict, and the chosen chain."""
    cfg = runtime.config
    return {
        "features": plan.features.as_namespace(),
        "route": {**plan.match.as_dict(), "reused_turn_decision": plan.reused},
        "rules": [{"rule": t.rule, "matched": t.matched, "note": t.note} for t in plan.decision.trace],
        "decision": {"rule": plan.decision.rule, "reason": plan.decision.reason, "target": plan.decision.target},
        "chain": [{"target": name, "backend": cfg.targets[name].backend, "model": cfg.targets[name].model,
                   "cloud": cfg.target_is_cloud(name)} for name in plan.chain],
    }
