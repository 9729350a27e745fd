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
from .backends import BackendCredentialsRejected, BackendUnavailable
from .config import TargetConfig
from .errors import BudgetExhaustedError, RouterError, UpstreamError, UpstreamStatusError
from .features import Features, extract_features
from .gpu import energy_between
from .internal import CallContext, Message, Request, StreamEvent
from .rules import RouteDecision
from .runtime import Runtime

log = logging.getLogger("aibox_router.pipeline")

@dataclass
class Plan:
    features: Features
    decision: RouteDecision
    chain: list[str]  # the chosen target, then its configured fallbacks


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
             "x-aibox-rule": self.plan.decision.rule, "x-aibox-fallback": "true" if self.fallback else "false"}
        if self.downgraded:
            h["x-aibox-downgraded"] = "true"
        return h


def plan_request(runtime: Runtime, request: Request, *, client: str, protocol: str, body_size: int,
                 override: str | None = None) -> Plan:
    cfg = runtime.config
    model = str(request.get("model") or "")
    # Asking for a target by name (e.g. "coder" from an OpenAI client) works like the override header.
    if override is None and model in cfg.targets:
        override = model
    gpu = runtime.gpu.features() if runtime.gpu is not None else dict(cfg.gpu.defaults_when_absent)
    features = extract_features(request, body_size=body_size, client=client, protocol=protocol,
                                aliases=cfg.aliases, override=override, gpu=gpu)
    decision = runtime.rules.decide(features)
    if override is not None and override not in cfg.targets:
        # Not silently: the client asked for something else than what it gets.
        log.warning("client %s named unknown target %r in %s; ignored (known: %s); routed to %s by %s",
                    client, override, cfg.override_header, ", ".join(cfg.targets), decision.target, decision.rule)
    chain = [decision.target] + [t for t in cfg.targets[decision.target].fallback if t != decision.target]
    return Plan(features, decision, chain)


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
            complexity=f.complexity,
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
                           refusals: list[str], failures: list[str], kinds: set[str]) -> RouterError:
    if refusals and not failures:
        # Nothing was sent anywhere: still record the refusal, so reports show what the budget blocked.
        refused = _Call(runtime, plan, plan.chain[0], 0, False, protocol, stream)
        runtime.accounting.rule_started(plan.decision.rule)
        await refused.settle("refused", 400, "; ".join(refusals))
        if "cutoff" in kinds:
            until = "until the budget day rolls over or an operator releases the emergency cutoff"
        elif kinds == {"client_budget"}:
            until = "until the budget day rolls over or an operator raises your client budget"
        else:
            until = "until the budget day rolls over or an operator raises the daily budget"
        return BudgetExhaustedError("The aibox router will not send this request to the cloud: "
                                    + "; ".join(refusals) + f". No local model could take it. Retrying will not "
                                    f"help {until}.")
    rejected = sorted({runtime.config.targets[t].backend for t in plan.chain
                       if (d := runtime.backend_health.down(runtime.config.targets[t].backend)) and d.credentials})
    if rejected:
        # The developer's key is fine (it never leaves the router): say whose fault this is.
        return UpstreamError(
            "The aibox router could not answer: its own API key for backend(s) " + ", ".join(rejected)
            + " was rejected upstream, and no fallback target could answer. This is a router problem for its "
            "operator, not a problem with your key or your request. Details: " + "; ".join(refusals + failures))
    return UpstreamError("The aibox router could not answer: no backend could take this request: "
                         + "; ".join(refusals + failures))


async def _attempts(runtime: Runtime, plan: Plan, request: Request, protocol: str, stream: bool,
                    refusals: list[str], forward_headers: dict[str, str] | None,
                    kinds: set[str]) -> AsyncIterator[_Call]:
    """Yield a call for each target in the chain the budget allows; note refusals in *refusals* and
    their kinds (cutoff, budget, client_budget) in *kinds*."""
    downgraded = False
    for index, target_name in enumerate(plan.chain):
        call = _Call(runtime, plan, target_name, index, downgraded, protocol, stream)
        if call.cloud:
            admission = await _admit(runtime, call, plan, request)
            if not admission.allowed:
                refusals.append(f"{target_name}: {admission.reason}")
                kinds.add(admission.refusal or "budget")
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
    call.runtime.backend_health.call_failed(call.target.backend, e.reason,
                                            credentials=isinstance(e, BackendCredentialsRejected),
                                            alerter=getattr(call.runtime.accounting, "alerts", None))
    await call.settle("error", e.status or 502, e.reason)


async def complete(runtime: Runtime, request: Request, *, client: str, protocol: str,
                   forward_headers: dict[str, str] | None = None, override: str | None = None,
                   body_size: int | None = None, plan: Plan | None = None) -> Outcome:
    """Route and answer a non-streaming request."""
    plan = plan or plan_request(runtime, request, client=client, protocol=protocol,
                                body_size=body_size or len(str(request)), override=override)
    failures: list[str] = []
    refusals: list[str] = []
    kinds: set[str] = set()
    async for call in _attempts(runtime, plan, request, protocol, False, refusals, forward_headers, kinds):
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
        runtime.backend_health.call_succeeded(call.target.backend)
        await call.settle("ok")
        return _noted(call.outcome(plan, message=message), refusals, failures)
    raise await _no_target_error(runtime, plan, protocol, False, refusals, failures, kinds)


async def open_stream(runtime: Runtime, request: Request, *, client: str, protocol: str,
                      forward_headers: dict[str, str] | None = None, override: str | None = None,
                      body_size: int | None = None, plan: Plan | None = None) -> Outcome:
    """Route a streaming request; return once a backend has produced its first event.

    Falling back is only possible before that first event: afterwards the client has seen part of
    an answer. The returned ``Outcome.events`` must be iterated to the end or closed.
    """
    plan = plan or plan_request(runtime, request, client=client, protocol=protocol,
                                body_size=body_size or len(str(request)), override=override)
    failures: list[str] = []
    refusals: list[str] = []
    kinds: set[str] = set()
    async for call in _attempts(runtime, plan, request, protocol, True, refusals, forward_headers, kinds):
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
        runtime.backend_health.call_succeeded(call.target.backend)
        return _noted(call.outcome(plan, events=_relay(call, first, upstream)), refusals, failures)
    raise await _no_target_error(runtime, plan, protocol, True, refusals, failures, kinds)


def _noted(outcome: Outcome, refusals: list[str], failures: list[str]) -> Outcome:
    """Why the answer came from where it did (a downgrade's refusal, a fallback's failure), for the log."""
    outcome.notes.extend(f"refused {r}" for r in refusals)
    outcome.notes.extend(f"failed {f}" for f in failures)
    return outcome


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
        "rules": [{"rule": t.rule, "matched": t.matched, "note": t.note} for t in plan.decision.trace],
        "decision": {"rule": plan.decision.rule, "reason": plan.decision.reason, "target": plan.decision.target},
        "chain": [{"target": name, "backend": cfg.targets[name].backend, "model": cfg.targets[name].model,
                   "cloud": cfg.target_is_cloud(name)} for name in plan.chain],
    }
