"""One request's journey: features -> rules -> budget gate -> backend (with fallbacks) -> ledger.

Protocol-neutral: callers hand in an internal (Anthropic-shaped) request and get back a message
or a stream of internal events. ``settle`` is called exactly once for every call that reached a
backend or was refused, however it ended, so the ledger and the budget never lose a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgspec

from .accounting import Admission, RequestRecord, Reservation
from .backends import Backend, BackendCredentialsRejected, BackendUnavailable
from .classifier import RouteClassifier, RouteMatch, user_turn_text
from .config import RouterConfig
from .context import ContextVerdict, ContextWindows, Estimator, check_fit, too_long_message
from .cost.bounds import limit_request, needs_exact_count, prompt_token_bound
from .errors import (
    BudgetExhaustedError,
    PromptTooLongError,
    RouterError,
    StreamLimitError,
    UpstreamError,
    UpstreamStatusError,
)
from .features import Features, extract_features
from .gpu import GpuMonitor, energy_between, routing_features
from .internal import CallContext, Message, Request, StreamEvent, Usage
from .judge import consult
from .rules import RouteDecision, RuleEngine, RuleTrace
from .runtime import Runtime
from .targets import capped_max_tokens, prepare_for_target
from .turns import TurnCache, turn_key

log = logging.getLogger("aibox_router.pipeline")

class PlanningRuntime(Protocol):
    """What planning a turn needs of a runtime. The live Runtime has it, and so have the dry ones of
    ``route explain`` and ``route eval``, which plan without sending or recording anything."""

    @property
    def config(self) -> RouterConfig: ...

    @property
    def rules(self) -> RuleEngine: ...

    @property
    def classifier(self) -> RouteClassifier: ...

    @property
    def turns(self) -> TurnCache: ...

    @property
    def gpu(self) -> GpuMonitor | None: ...

    @property
    def backends(self) -> Mapping[str, Backend]: ...


@dataclass
class Plan:
    features: Features
    decision: RouteDecision
    chain: list[str]  # the chosen target, then its configured fallbacks, less those the prompt does not fit
    context: ContextVerdict = field(default_factory=ContextVerdict)  # the window check of each of them
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
    # (asked, sent) when a cloud call's max_tokens was lowered to budgets.reserve_output_tokens_cap
    max_tokens_clamped: tuple[int, int] | None = None
    _call: _Call | None = field(default=None, repr=False)
    _upstream: AsyncIterator[StreamEvent] | None = field(default=None, repr=False)

    @property
    def result(self) -> tuple[str, int]:
        """(ledger status, HTTP status) of the call once it settled; ("open", 200) before that."""
        if self._call is None or not self._call.settled:
            return "open", 200
        return self._call.record.status, self._call.record.http_status

    async def close(self, reason: str = "the answer could not be delivered") -> None:
        """Give up on this answer: close its stream and the upstream's, and settle the call.

        Safe to call more than once and after the stream ended; a stream never iterated (its
        relay never ran, so nothing else would settle it) is settled here as aborted.
        """
        for stream in (self.events, self._upstream):
            closer = getattr(stream, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception as e:  # noqa: BLE001 - closing is best effort; settling is not
                    log.debug("closing a stream of %s: %s", self.target, e)
        if self._call is not None:
            await asyncio.shield(self._call.settle("aborted", 499, reason))

    @property
    def decision(self) -> RouteDecision:
        return self.plan.decision

    def headers(self) -> dict[str, str]:
        h = {"x-aibox-target": self.target, "x-aibox-backend": self.backend, "x-aibox-model": self.model,
             "x-aibox-rule": self.plan.decision.rule, "x-aibox-fallback": "true" if self.fallback else "false",
             "x-aibox-route": self.plan.features.route}
        if self.downgraded:
            h["x-aibox-downgraded"] = "true"
        if self.max_tokens_clamped:
            asked, sent = self.max_tokens_clamped
            # The budget reserves what may be produced; a larger max_tokens was lowered to fit.
            h["x-aibox-max-tokens-clamped"] = f"{asked}->{sent}"
        skipped = self.plan.context.header()
        if skipped:
            h["x-aibox-skipped"] = skipped
        return h


def plan_request(runtime: PlanningRuntime, request: Request, *, client: str, protocol: str, body_size: int,
                 override: str | None = None, match: RouteMatch | None = None,
                 decision: RouteDecision | None = None) -> Plan:
    """Features and decision for one request; *match* is the turn's route, *decision* a reused one."""
    cfg = runtime.config
    model = str(request.get("model") or "")
    # Asking for a target by name (e.g. "coder" from an OpenAI client) works like the override header.
    if override is None and model in cfg.targets:
        override = model
    gpu = routing_features(runtime.gpu, cfg.gpu)
    features = extract_features(request, body_size=body_size, client=client, protocol=protocol,
                                aliases=cfg.aliases, override=override, gpu=gpu)
    windows: ContextWindows = getattr(runtime, "windows", None) or ContextWindows(cfg)
    estimator = Estimator(request)
    fits = {name: check_fit(cfg, windows, estimator, request, name) for name in cfg.targets}
    features.context_tokens = estimator.input_tokens("")
    # Only known windows count: a target whose window is unknown is not checked, nor promised.
    features.fits_local = any(fit.fits for name, fit in fits.items()
                              if fit.window.tokens is not None and not cfg.target_is_cloud(name))
    match = match or RouteMatch()
    features.route, features.route_score = match.route, match.score
    features.route_margin, features.route_source = match.margin, match.source
    reused = decision is not None and override is None
    if not reused:
        decision = runtime.rules.decide(features)
    assert decision is not None
    if override is not None and override not in cfg.targets:
        # Not silently: the client asked for something else than what it gets.
        log.warning("client %s named unknown target %r in %s; ignored (known: %s); routed to %s by %s",
                    client, override, cfg.override_header, ", ".join(cfg.targets), decision.target, decision.rule)
    allowed = cfg.client_targets(client)
    full_chain = [decision.target] + [t for t in cfg.targets[decision.target].fallback
                                      if t != decision.target and (allowed is None or t in allowed)]
    verdict = ContextVerdict({name: fits[name] for name in full_chain})
    backends = getattr(runtime, "backends", None) if getattr(runtime, "discover_windows", True) else None
    shared = reused  # a reused decision is the turn's cached one: note this request's skips on a copy
    for name in full_chain:
        fit = fits[name]
        if backends is not None and fit.window.tokens is None:
            windows.refresh_later(name, backends)
        if not fit.fits:  # shown with the rules in route explain
            if shared:
                decision, shared = dataclasses.replace(decision, trace=list(decision.trace)), False
            decision.trace.append(RuleTrace(f"context:{name}", False, f"target {name} skipped: {fit.note()}"))
    chain = [name for name in full_chain if fits[name].fits]
    return Plan(features, decision, chain, verdict, match, reused)


async def plan_turn(runtime: PlanningRuntime, request: Request, *, client: str, protocol: str, body_size: int,
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
    if not forced and override is None:  # a client's own choice of target is not the turn's decision
        runtime.turns.put(key, match, plan.decision)
    return plan


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
        self.body: Request = {}  # what goes to the backend (set by _attempts)
        self.max_tokens_clamped: tuple[int, int] | None = None
        self.started = time.perf_counter()
        self.first_token: float | None = None
        self.output_bytes = 0  # UTF-8 bytes of the output the client was sent (text, tool input, thinking)
        self.thinking_seen = False
        self.stream_started = False  # message_start arrived: the API is working (and billing) on it
        self.final_usage_seen = False  # a message_delta (or whole message) brought the final counts
        self._energy0 = None if self.cloud or runtime.gpu is None else runtime.gpu.energy_joules()
        f = plan.features
        self.record = RequestRecord(
            ts=time.time(), client=f.client, rule=plan.decision.rule, target=target_name,
            backend=self.target.backend, model=self.target.model, protocol=protocol, stream=stream,
            # A target reached because the chosen one was skipped (its window too small) is a fallback too.
            cloud=self.cloud, fallback=index > 0 or target_name != plan.decision.target, downgraded=downgraded,
            task=f.task, complexity=f.complexity, requested_model=f.model, skipped=plan.context.header(),
            route=f.route, route_source=f.route_source,
        )
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    def outcome(self, plan: Plan, *, message: Message | None = None,
                events: AsyncIterator[StreamEvent] | None = None,
                upstream: AsyncIterator[StreamEvent] | None = None) -> Outcome:
        """The answer this call gave: a whole message, or the events of a stream."""
        return Outcome(plan, self.target_name, self.target.backend, self.target.model,
                       fallback=self.record.fallback, downgraded=self.record.downgraded,
                       message=message, events=events, max_tokens_clamped=self.max_tokens_clamped,
                       _call=self, _upstream=upstream)

    def observe(self, event: StreamEvent) -> None:
        etype = event.get("type")
        if etype == "content_block_delta":
            if self.first_token is None:
                self.first_token = time.perf_counter()
            delta = event.get("delta") or {}
            text = delta.get("text") or delta.get("partial_json") or delta.get("thinking") or ""
            self.output_bytes += len(text.encode("utf-8", "replace"))
        elif etype == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") in ("thinking", "redacted_thinking"):
                self.thinking_seen = True
        elif etype == "message_start":
            self.stream_started = True
        elif etype == "message_delta":
            self.final_usage_seen = True

    async def settle(self, status: str, http_status: int = 200, error: str = "") -> None:
        if self._settled:
            return
        self._settled = True
        rec = self.record
        rec.usage = self.ctx.usage
        rec.status, rec.http_status, rec.error = status, http_status, error[:500]
        try:
            self._complete_record(status)
        except Exception:  # the record is only less complete: settling (and releasing) must still happen
            log.exception("could not complete the record of a %s call to %s", status, self.target_name)
        try:
            await self.runtime.accounting.settle(self.reservation, rec)
        except Exception:  # the answer was served; a ledger failure is logged loudly, not turned into a 500
            log.exception("ledger: could not settle a %s call to %s", status, self.target_name)

    def _complete_record(self, status: str) -> None:
        """Timing, energy, and the usage estimate of a call that ended without its final counts."""
        rec = self.record
        # Refused, 4xx, 5xx and unreachable calls are not billed; a call abandoned while the backend
        # may be working on it is, and so is a cloud stream that failed after the API began it.
        if not self.final_usage_seen and (
                status == "aborted" or (self.cloud and status == "error" and self.stream_started)):
            estimate_unreported_usage(rec.usage, self.body, self.output_bytes, self.thinking_seen)
        now = time.perf_counter()
        rec.latency_ms = (now - self.started) * 1000
        rec.ttft_ms = (self.first_token - self.started) * 1000 if self.first_token else None
        if self._energy0 is not None and self.runtime.gpu is not None:
            # None when the counter is unreadable or went backwards (driver reload): unknown, not 0 J.
            rec.energy_j = energy_between(self._energy0, self.runtime.gpu.energy_joules())


# Bytes of output per token when the router must estimate (English prose is ~4, code ~3.5, CJK
# ~3 bytes per token): rounding towards more tokens.
ESTIMATE_BYTES_PER_TOKEN = 3


def estimate_unreported_usage(usage: Usage, body: Request, output_bytes: int, thinking_seen: bool) -> None:
    """A cloud call that ended without its final usage (client abort, connection lost, an error
    event, shutdown): estimate what Anthropic bills for it, and flag the usage as estimated.

    Output: what the client was sent, at ESTIMATE_BYTES_PER_TOKEN; when a thinking block was under
    way, the thinking budget (``thinking.budget_tokens``, else max_tokens), since thinking that is
    summarised or not displayed is billed in full but never seen. The prompt, when not even
    ``message_start`` reported it: the bytes of the request at the same rate.
    """
    output = -(-output_bytes // ESTIMATE_BYTES_PER_TOKEN)
    if thinking_seen:
        thinking: dict[str, Any] = body["thinking"] if isinstance(body.get("thinking"), dict) else {}
        budget = thinking.get("budget_tokens")
        max_tokens: int = body["max_tokens"] if isinstance(body.get("max_tokens"), int) else 0
        output = max(output, min(budget, max_tokens) if isinstance(budget, int) and max_tokens else max_tokens)
    if output > usage.output_tokens:
        usage.output_tokens = output
        usage.estimated = True
    if usage.prompt_tokens == 0 and body:
        usage.input_tokens = -(-len(msgspec.json.encode(body)) // ESTIMATE_BYTES_PER_TOKEN)
        usage.estimated = True


async def _admit(runtime: Runtime, call: _Call, plan: Plan) -> Admission:
    """Reserve the call's worst case; the prompt bound counts exactly where bytes cannot bound it."""
    exact: int | None = None
    if needs_exact_count(call.body):
        try:
            exact = await call.backend.count_tokens(call.body, CallContext(forward_headers=call.ctx.forward_headers))
        except (BackendUnavailable, RouterError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "message", None) or str(e)
            return Admission(allowed=False, refusal="unbounded",
                             reason=f"the request's documents or media by reference cannot be bounded from its "
                                    f"bytes and counting its tokens failed: {reason}")
        if exact is None:
            return Admission(allowed=False, refusal="unbounded",
                             reason="the request's documents or media by reference cannot be bounded from its "
                                    "bytes, and the backend cannot count tokens")
    return await runtime.accounting.admit(target=call.target_name, model=call.target.model,
                                          client=plan.features.client, request=call.body,
                                          input_tokens=prompt_token_bound(call.body, exact))


async def _no_target_error(runtime: Runtime, plan: Plan, protocol: str, stream: bool,
                           refusals: list[str], failures: list[str], kinds: set[str]) -> RouterError:
    err = await _no_target_error_of(runtime, plan, protocol, stream, refusals, failures, kinds)
    if plan.context.skipped:
        err.headers["x-aibox-skipped"] = plan.context.header()
    return err


async def _no_target_error_of(runtime: Runtime, plan: Plan, protocol: str, stream: bool,
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
        elif kinds & {"budget", "client_budget"}:
            until = "until the budget day rolls over or an operator raises the daily budget"
        else:  # e.g. a request whose cost cannot be bounded: the same request is refused again
            until = None
        return BudgetExhaustedError("The aibox router will not send this request to the cloud: "
                                    + "; ".join(refusals) + ". No local model could take it. "
                                    + (f"Retrying will not help {until}." if until
                                       else "Retrying the same request will not help."))
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


async def _too_long_error(runtime: Runtime, plan: Plan, protocol: str, stream: bool) -> PromptTooLongError:
    """No target in the chain holds the prompt: refuse before any backend is called, and record it."""
    tokens, maximum, detail = too_long_message(plan.context)
    err = PromptTooLongError(tokens, maximum, detail, headers={"x-aibox-skipped": plan.context.header(),
                                                               "x-aibox-rule": plan.decision.rule})
    first = next(iter(plan.context.fits))
    refused = _Call(runtime, plan, first, 0, False, protocol, stream)
    runtime.accounting.rule_started(plan.decision.rule)  # settle ends this count, as for every call
    await refused.settle("refused", 400, f"{err.message} (estimated); {detail}")
    log.info("refused an over-long prompt before any backend: %s", detail)
    return err


async def _attempts(runtime: Runtime, plan: Plan, request: Request, protocol: str, stream: bool,
                    refusals: list[str], forward_headers: dict[str, str] | None,
                    kinds: set[str]) -> AsyncIterator[_Call]:
    """Yield a call for each target in the chain the budget allows; note refusals in *refusals* and
    their kinds (cutoff, budget, client_budget) in *kinds*."""
    downgraded = False
    for index, target_name in enumerate(plan.chain):
        call = _Call(runtime, plan, target_name, index, downgraded, protocol, stream)
        call.body = prepare_for_target(request, call.target)
        call.ctx.forward_headers = dict(forward_headers or {})
        if call.cloud:
            call.body, clamped_from = limit_request(call.body, runtime.config.budgets.reserve_output_tokens_cap)
            if clamped_from is not None:
                call.max_tokens_clamped = (clamped_from, call.body["max_tokens"])
            # Billed at the request's modes unless the usage reports otherwise.
            call.ctx.usage.speed = call.body.get("speed") if isinstance(call.body.get("speed"), str) else None
            geo = call.body.get("inference_geo")
            call.ctx.usage.inference_geo = geo if isinstance(geo, str) else None
            admission = await _admit(runtime, call, plan)
            if not admission.allowed:
                refusals.append(f"{target_name}: {admission.reason}")
                kinds.add(admission.refusal or "budget")
                downgraded = True
                continue
            call.reservation = admission.reservation
        # Counted from now, so concurrent requests cannot all slip under a rule's daily_limit.
        runtime.accounting.rule_started(plan.decision.rule)
        yield call


async def _pass_over(call: _Call, e: BackendUnavailable, failures: list[str]) -> None:
    """A target that could not answer: note why for the final error, and settle its call."""
    failures.append(f"{call.target_name}: {e.reason}")
    log.warning("target %s unavailable (%s); trying the next in the chain", call.target_name, e.reason)
    call.runtime.backend_health.call_failed(call.target.backend, e.reason,
                                            credentials=isinstance(e, BackendCredentialsRejected),
                                            alerter=getattr(call.runtime.accounting, "alerts", None))
    await call.settle("error", e.status or 502, e.reason)


@dataclass
class _PassedOver:
    """Why targets of the chain did not answer: for the log, and for the error when none did."""

    failures: list[str] = field(default_factory=list)  # tried, and could not answer
    refusals: list[str] = field(default_factory=list)  # skipped by the budget
    kinds: set[str] = field(default_factory=set)  # kinds of refusal: cutoff, budget, client_budget


async def _plan_with_a_target(runtime: Runtime, request: Request, plan: Plan | None, *, client: str,
                              protocol: str, body_size: int | None, override: str | None, stream: bool) -> Plan:
    """The turn's plan (*plan* when the caller made it already); a prompt no target can hold is
    refused here with PromptTooLongError, before any backend is called."""
    plan = plan or await plan_turn(runtime, request, client=client, protocol=protocol,
                                   body_size=body_size or len(str(request)), override=override)
    if not plan.chain:
        raise await _too_long_error(runtime, plan, protocol, stream)
    return plan


async def complete(runtime: Runtime, request: Request, *, client: str, protocol: str,
                   forward_headers: dict[str, str] | None = None, override: str | None = None,
                   body_size: int | None = None, plan: Plan | None = None) -> Outcome:
    """Route and answer a non-streaming request."""
    plan = await _plan_with_a_target(runtime, request, plan, client=client, protocol=protocol,
                                     body_size=body_size, override=override, stream=False)
    passed = _PassedOver()
    async for call in _attempts(runtime, plan, request, protocol, False, passed.refusals, forward_headers,
                                passed.kinds):
        try:
            message = await call.backend.complete(call.body, call.target, call.ctx)
        except BackendUnavailable as e:
            await _pass_over(call, e, passed.failures)
            continue
        except UpstreamStatusError as e:
            await call.settle("error", e.status, e.message)
            raise
        except BaseException as e:
            await asyncio.shield(call.settle("aborted" if isinstance(e, asyncio.CancelledError) else "error",
                                             499 if isinstance(e, asyncio.CancelledError) else 500, repr(e)))
            raise
        try:
            call.ctx.usage.update_from(message.get("usage"))
            call.final_usage_seen = True
            call.first_token = call.first_token or time.perf_counter()
            runtime.backend_health.call_succeeded(call.target.backend)
        finally:  # the upstream answered: settle it as answered whatever the book-keeping did
            await asyncio.shield(call.settle("ok"))
        return _noted(call.outcome(plan, message=message), passed.refusals, passed.failures)
    raise await _no_target_error(runtime, plan, protocol, False, passed.refusals, passed.failures, passed.kinds)


async def open_stream(runtime: Runtime, request: Request, *, client: str, protocol: str,
                      forward_headers: dict[str, str] | None = None, override: str | None = None,
                      body_size: int | None = None, plan: Plan | None = None) -> Outcome:
    """Route a streaming request; return once a backend has produced its first event.

    Falling back is only possible before that first event: afterwards the client has seen part of
    an answer. The returned ``Outcome.events`` must be iterated to the end or closed.
    """
    plan = await _plan_with_a_target(runtime, request, plan, client=client, protocol=protocol,
                                     body_size=body_size, override=override, stream=True)
    passed = _PassedOver()
    async for call in _attempts(runtime, plan, request, protocol, True, passed.refusals, forward_headers,
                                passed.kinds):
        upstream: AsyncIterator[StreamEvent] | None = None
        try:
            upstream = call.backend.stream(call.body, call.target, call.ctx)
            first = await upstream.__anext__()
        except BackendUnavailable as e:
            await _pass_over(call, e, passed.failures)
            continue
        except StopAsyncIteration:
            passed.failures.append(f"{call.target_name}: empty stream")
            await call.settle("error", 502, "empty stream")
            continue
        except UpstreamStatusError as e:
            await call.settle("error", e.status, e.message)
            raise
        except BaseException as e:
            await asyncio.shield(call.settle("error", 500, repr(e)))
            raise
        try:
            runtime.backend_health.call_succeeded(call.target.backend)
            events = _relay(call, first, upstream, _stream_limits(runtime, call, request))
        except BaseException as e:  # nothing will iterate the stream: close it and settle here
            await _close_quietly(upstream, call)
            await asyncio.shield(call.settle("error", 500, repr(e)))
            raise
        return _noted(call.outcome(plan, events=events, upstream=upstream), passed.refusals, passed.failures)
    raise await _no_target_error(runtime, plan, protocol, True, passed.refusals, passed.failures, passed.kinds)


def _noted(outcome: Outcome, refusals: list[str], failures: list[str]) -> Outcome:
    """Why the answer came from where it did (a downgrade's refusal, a fallback's failure), for the log."""
    outcome.notes.extend(f"refused {r}" for r in refusals)
    outcome.notes.extend(f"failed {f}" for f in failures)
    return outcome


@dataclass
class StreamLimits:
    """When the router ends a local stream itself: past its output cap, or past its wall time.

    A second line of defence behind the context check: a local server that ignores max_tokens, or
    a model that has lost the thread, must not stream noise until the client gives up."""

    output_tokens: int | None = None
    deadline: float | None = None  # time.perf_counter() value
    time_limit_s: float | None = None


# Stream chunks of local servers carry about one token each; this much past the cap is surely over it.
_OUTPUT_CAP_SLACK = 16


def _stream_limits(runtime: Runtime, call: _Call, request: Request) -> StreamLimits:
    if call.cloud:  # the cloud enforces max_tokens itself
        return StreamLimits()
    target = call.target
    time_limit = target.stream_time_limit_s or runtime.config.context.stream_time_limit_s
    return StreamLimits(output_tokens=capped_max_tokens(request.get("max_tokens"), target.max_output_tokens),
                        deadline=call.started + time_limit if time_limit else None, time_limit_s=time_limit)


async def _next_event(upstream: AsyncIterator[StreamEvent], limits: StreamLimits) -> StreamEvent:
    if limits.deadline is None:
        return await upstream.__anext__()
    remaining = limits.deadline - time.perf_counter()
    if remaining <= 0:
        raise TimeoutError
    async with asyncio.timeout(remaining):  # a timer handle, not a task per event as wait_for makes
        return await upstream.__anext__()


async def _relay(call: _Call, first: StreamEvent, upstream: AsyncIterator[StreamEvent],
                 limits: StreamLimits | None = None) -> AsyncIterator[StreamEvent]:
    """Pass events through, noting time to first token; settle however the stream ends.

    A local stream past its output cap or wall time is ended with an error event (StreamLimitError,
    rendered by the server in the client's protocol) and ledgered as ``error``."""
    limits = limits or StreamLimits()
    status, http_status, error = "aborted", 499, "client closed the stream"
    deltas = 0
    try:
        call.observe(first)
        yield first
        while True:
            try:
                event = await _next_event(upstream, limits)
            except StopAsyncIteration:
                break
            except TimeoutError:
                status, http_status = "error", 504
                error = (f"target {call.target_name} streamed for longer than its limit of "
                         f"{limits.time_limit_s:g} s; the router ended the stream")
                raise StreamLimitError(error) from None
            call.observe(event)
            if event.get("type") == "content_block_delta":
                deltas += 1
                if limits.output_tokens is not None and deltas > limits.output_tokens + _OUTPUT_CAP_SLACK:
                    status, http_status = "error", 502
                    error = (f"target {call.target_name} kept streaming past its output cap of "
                             f"{limits.output_tokens} tokens; the router ended the stream")
                    raise StreamLimitError(error)
            if event.get("type") == "error":
                status, http_status = "error", 502
                error = str((event.get("error") or {}).get("message", "upstream error event"))
            yield event
        if status != "error":
            status, http_status, error = "ok", 200, ""
    except StreamLimitError:
        log.warning("%s", error)
        raise
    except BackendUnavailable as e:  # upstream died mid-stream
        status, http_status, error = "error", 502, e.reason
        raise
    finally:
        await _close_quietly(upstream, call)
        await asyncio.shield(call.settle(status, http_status, error))


async def _close_quietly(upstream: AsyncIterator[StreamEvent] | None, call: _Call) -> None:
    closer = getattr(upstream, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception as e:  # noqa: BLE001 - the stream is over either way; settle must still run
            log.debug("closing the upstream stream of %s: %s", call.target_name, e)


def explain(plan: Plan, runtime: PlanningRuntime) -> dict[str, Any]:
    """What ``route explain`` prints: the features, each rule's verdict, and the chosen chain."""
    cfg = runtime.config
    return {
        "features": plan.features.as_namespace(),
        "route": {**plan.match.as_dict(), "reused_turn_decision": plan.reused},
        "rules": [{"rule": t.rule, "matched": t.matched, "note": t.note} for t in plan.decision.trace],
        "decision": {"rule": plan.decision.rule, "reason": plan.decision.reason, "target": plan.decision.target},
        "chain": [{"target": name, "backend": cfg.targets[name].backend, "model": cfg.targets[name].model,
                   "cloud": cfg.target_is_cloud(name)} for name in plan.chain],
        "context": [{"target": name, "fits": fit.fits, "window": fit.window.tokens, "source": fit.window.source,
                     "input_tokens": fit.input_tokens, "output_tokens": fit.output_tokens,
                     "margin_tokens": fit.margin_tokens, "note": fit.note()}
                    for name, fit in plan.context.fits.items()],
        "skipped": plan.context.header(),
    }
