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
from .config import TargetConfig
from .context import ContextVerdict, ContextWindows, Estimator, check_fit, too_long_message
from .errors import (
    BudgetExhaustedError,
    PromptTooLongError,
    RouterError,
    StreamLimitError,
    UpstreamError,
    UpstreamStatusError,
)
from .features import Features, extract_features
from .gpu import energy_between
from .internal import CallContext, Message, Request, StreamEvent
from .rules import RouteDecision, RuleTrace
from .runtime import Runtime

log = logging.getLogger("aibox_router.pipeline")

@dataclass
class Plan:
    features: Features
    decision: RouteDecision
    chain: list[str]  # the chosen target, then its configured fallbacks, less those the prompt does not fit
    context: ContextVerdict = field(default_factory=ContextVerdict)  # the window check of each of them


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
        skipped = self.plan.context.header()
        if skipped:
            h["x-aibox-skipped"] = skipped
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
    windows: ContextWindows = getattr(runtime, "windows", None) or ContextWindows(cfg)
    estimator = Estimator(request)
    fits = {name: check_fit(cfg, windows, estimator, request, name) for name in cfg.targets}
    features.context_tokens = estimator.input_tokens("")
    # Only known windows count: a target whose window is unknown is not checked, nor promised.
    features.fits_local = any(fit.fits for name, fit in fits.items()
                              if fit.window.tokens is not None and not cfg.target_is_cloud(name))
    decision = runtime.rules.decide(features)
    full_chain = [decision.target] + [t for t in cfg.targets[decision.target].fallback if t != decision.target]
    verdict = ContextVerdict({name: fits[name] for name in full_chain})
    backends = getattr(runtime, "backends", None)
    for name in full_chain:
        fit = fits[name]
        if backends is not None and fit.window.tokens is None:
            windows.refresh_later(name, backends)
        if not fit.fits:  # shown with the rules in route explain
            decision.trace.append(RuleTrace(f"context:{name}", False, f"target {name} skipped: {fit.note()}"))
    chain = [name for name in full_chain if fits[name].fits]
    return Plan(features, decision, chain, verdict)


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
            # A target reached because the chosen one was skipped (its window too small) is a fallback too.
            cloud=self.cloud, fallback=index > 0 or target_name != plan.decision.target, downgraded=downgraded,
            task=f.task,
            complexity=f.complexity, skipped=plan.context.header(),
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
    err = await _no_target_error_of(runtime, plan, protocol, stream, refusals, failures)
    if plan.context.skipped:
        err.headers["x-aibox-skipped"] = plan.context.header()
    return err


async def _no_target_error_of(runtime: Runtime, plan: Plan, protocol: str, stream: bool,
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
    plan = plan or plan_request(runtime, request, client=client, protocol=protocol,
                                body_size=body_size or len(str(request)), override=override)
    if not plan.chain:
        raise await _too_long_error(runtime, plan, protocol, False)
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
    plan = plan or plan_request(runtime, request, client=client, protocol=protocol,
                                body_size=body_size or len(str(request)), override=override)
    if not plan.chain:
        raise await _too_long_error(runtime, plan, protocol, True)
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
        return call.outcome(plan, events=_relay(call, first, upstream, _stream_limits(runtime, call, request)))
    raise await _no_target_error(runtime, plan, protocol, True, refusals, failures)


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
    asked = request.get("max_tokens")
    caps = [v for v in (asked if isinstance(asked, int) else None, target.max_output_tokens) if v]
    time_limit = target.stream_time_limit_s or runtime.config.context.stream_time_limit_s
    return StreamLimits(output_tokens=min(caps) if caps else None,
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
        "context": [{"target": name, "fits": fit.fits, "window": fit.window.tokens, "source": fit.window.source,
                     "input_tokens": fit.input_tokens, "output_tokens": fit.output_tokens,
                     "margin_tokens": fit.margin_tokens, "note": fit.note()}
                    for name, fit in plan.context.fits.items()],
        "skipped": plan.context.header(),
    }
