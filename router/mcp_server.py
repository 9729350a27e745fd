"""An MCP server that lets Claude Code hand sub-tasks to the local models deliberately.

Tools:

``ask_local(task_type, prompt, max_tokens=1024)``
    Answers with the local target the routing rules pick for that task type. Never the cloud: if
    the rules pick a cloud target, the first local target in its fallback list answers, else the
    default target if it is local, else the first local target. The call goes through the normal
    pipeline (fallbacks among local targets, ledger record with protocol ``mcp``).
``list_local_models()``
    Local targets with their backend's health, the models Ollama has loaded, and benchmark
    figures from ``<state_dir>/model_performance.json`` (written by ``aibox-router bench``).
``usage_report()``
    Today's usage from the ledger: spend against the budget, cutoff, requests by target, and the
    calling client's own requests and spend.

Two ways to reach them:

* Over the network, from any developer machine: the router serves them at ``/mcp`` on its own
  listener, authenticated with a client key (router/mcp_http.py)::

      claude mcp add --transport http aibox http://AIBOX:8088/mcp --header "Authorization: Bearer KEY"

* On the aibox itself, over stdio, as the ledger's owner (client name ``mcp``)::

      claude mcp add aibox-local -- aibox-router mcp -c /etc/aibox-router/config.yml

Over HTTP a call is ledgered under the calling client's name and kept within its ``targets``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from .config import RouterConfig
from .cost.budget_view import budget_view, money
from .errors import RouterError
from .features import TASKS, extract_features
from .gpu import routing_features
from .internal import text_of
from .rules import RouteDecision

PERFORMANCE_FILE = "model_performance.json"
MCP_CLIENT = "mcp"
MCP_PROTOCOL = "mcp"
_REQUEST_MODEL = "aibox-mcp"  # the model name rules see for MCP calls (no alias matches it)

INSTRUCTIONS = (
    "Tools of the aibox router: ask_local sends a self-contained sub-task (code generation, debugging, "
    "documentation, explanation, ...) to a local model at no API cost; list_local_models shows which "
    "local models are up and how they benchmarked; usage_report shows today's spend and budget."
)


class RuntimeSource(Protocol):
    """Where the tools get the router runtime from, held for the length of one tool call."""

    def use(self) -> contextlib.AbstractAsyncContextManager[Any]: ...


# Who is calling a tool, from the tool call's context: "mcp" over stdio (whoever runs the command
# owns the box's ledger); over HTTP, the client whose key authenticated the request (router/mcp_http.py).
ClientOf = Callable[[Any], str]


def stdio_client(ctx: Any) -> str:
    return MCP_CLIENT


class RuntimeHolder:
    """Opens the router runtime on first use, inside the server's event loop, and closes it at exit.

    The stdio server's source: a process of its own, with its own runtime and no reloads.
    """

    def __init__(self, config: RouterConfig):
        self.config = config
        self._runtime: Any = None
        self._lock = asyncio.Lock()

    async def get(self) -> Any:
        async with self._lock:
            if self._runtime is None:
                # The daemon's machinery (runtime, pipeline) loads at the first tool call, so the
                # stdio server answers `initialize` without it.
                from .runtime import Runtime

                self._runtime = Runtime.open(self.config)
            return self._runtime

    @contextlib.asynccontextmanager
    async def use(self) -> AsyncIterator[Any]:
        yield await self.get()

    async def aclose(self) -> None:
        if self._runtime is not None:
            runtime, self._runtime = self._runtime, None
            await runtime.aclose()


def is_local(config: RouterConfig, target: str) -> bool:
    return not config.target_is_cloud(target)


def local_chain(config: RouterConfig, decision: RouteDecision,
                allowed: frozenset[str] | None = None) -> tuple[list[str], str]:
    """The local targets to try for a decision, first choice first, and why that one.

    *allowed* is the calling client's ``targets`` list (None: every target); the rules already
    kept the decision within it, and the local targets taken instead of a cloud one stay within it too.
    """

    def usable(target: str) -> bool:
        return is_local(config, target) and (allowed is None or target in allowed)

    chosen = decision.target
    if usable(chosen):
        why = f"rules chose {chosen!r} ({decision.reason})"
    else:
        fallbacks = [t for t in config.targets[chosen].fallback if usable(t)]
        if fallbacks:
            chosen = fallbacks[0]
            why = f"rules chose cloud target {decision.target!r}; its first local fallback"
        elif usable(config.default_target):
            chosen = config.default_target
            why = f"rules chose cloud target {decision.target!r}; the default target"
        else:
            local = [t for t in config.targets if usable(t)]
            if not local:
                if allowed is not None and any(is_local(config, t) for t in config.targets):
                    raise ToolError(f"your client key may use only the targets {', '.join(sorted(allowed))}, "
                                    "none of them local; ask_local cannot answer (the router's operator "
                                    "sets clients[].targets)")
                raise ToolError("this router has no local target configured; ask_local cannot answer")
            chosen, why = local[0], f"rules chose cloud target {decision.target!r}; the first local target"
    chain = [chosen] + [t for t in config.targets[chosen].fallback if t != chosen and usable(t)]
    return chain, why


def plan_local(runtime: Any, request: dict[str, Any], task_type: str, client: str = MCP_CLIENT) -> Any:
    """A pipeline Plan for *request* whose task is *task_type* and whose chain has only local targets
    that *client* may use."""
    from .pipeline import Plan  # the pipeline loads at the first tool call (see RuntimeHolder.get)

    cfg: RouterConfig = runtime.config
    gpu = routing_features(runtime.gpu, cfg.gpu)
    features = extract_features(request, body_size=len(json.dumps(request)), client=client,
                                protocol=MCP_PROTOCOL, aliases=cfg.aliases, gpu=gpu)
    features.task = task_type
    # The caller named the kind of work: its route is the one that keyword task stands for.
    features.route, features.route_source = runtime.classifier.route_for_task(task_type), "keyword"
    decision = runtime.rules.decide(features)
    chain, why = local_chain(cfg, decision, cfg.client_targets(client))
    if chain[0] != decision.target:
        decision = RouteDecision(chain[0], "mcp-local", why, decision.trace)
    return Plan(features, decision, chain)


async def ask_local(source: RuntimeSource, task_type: str, prompt: str, max_tokens: int = 1024,
                    client: str = MCP_CLIENT) -> str:
    from . import pipeline  # the pipeline loads at the first tool call (see RuntimeHolder.get)

    if task_type not in TASKS:
        raise ToolError(f"task_type must be one of {', '.join(TASKS)}; got {task_type!r}")
    if not prompt.strip():
        raise ToolError("prompt is empty")
    if not 1 <= max_tokens <= 32000:
        raise ToolError("max_tokens must be between 1 and 32000")
    request = {"model": _REQUEST_MODEL, "max_tokens": max_tokens,
               "messages": [{"role": "user", "content": prompt}]}
    async with source.use() as runtime:
        plan = plan_local(runtime, request, task_type, client)
        try:
            outcome = await pipeline.complete(runtime, request, client=client, protocol=MCP_PROTOCOL,
                                              plan=plan)
        except RouterError as e:
            raise ToolError(f"no local model could answer: {e.message}") from None
    text = text_of((outcome.message or {}).get("content"))
    fallback = " (fallback)" if outcome.fallback else ""
    return (f"{text}\n\n---\nanswered by local model {outcome.model} (target {outcome.target}{fallback}, "
            f"backend {outcome.backend}; rule {plan.decision.rule})")


async def _health(backend: Any) -> dict[str, Any]:
    try:
        ok, detail = await asyncio.wait_for(backend.health(), timeout=5)
    except Exception as e:  # noqa: BLE001 - a health probe reports, it does not fail the tool
        ok, detail = False, f"{type(e).__name__}: {e}"
    info: dict[str, Any] = {"reachable": ok, "detail": detail}
    if ok and hasattr(backend, "loaded_models"):
        try:
            info["loaded_models"] = [m.get("name") or m.get("model") for m in await backend.loaded_models()]
        except Exception as e:  # noqa: BLE001
            info["loaded_models_error"] = str(e)
    return info


def read_performance(state_dir: str | Path) -> dict[str, Any] | None:
    path = Path(state_dir) / PERFORMANCE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def list_local_models(source: RuntimeSource, client: str = MCP_CLIENT) -> dict[str, Any]:
    """The local targets *client* may use (all of them for a client without a ``targets`` list)."""
    async with source.use() as runtime:
        cfg: RouterConfig = runtime.config
        allowed = cfg.client_targets(client)
        local = [t for t in cfg.targets if is_local(cfg, t) and (allowed is None or t in allowed)]
        backend_names = list(dict.fromkeys(cfg.targets[t].backend for t in local))
        probes = await asyncio.gather(*(_health(runtime.backends[b]) for b in backend_names))
        health = dict(zip(backend_names, probes, strict=True))
    perf = read_performance(cfg.server.state_dir) or {}
    summary = perf.get("summary") or {}
    targets = []
    for name in local:
        t = cfg.targets[name]
        entry: dict[str, Any] = {"target": name, "model": t.model, "backend": t.backend,
                                 "backend_type": cfg.backends[t.backend].type, **health[t.backend]}
        if name in summary:
            s = summary[name]
            entry["benchmark"] = {k: s.get(k) for k in ("pass_rate", "tokens_per_s_median", "ttft_ms_median",
                                                        "total_ms_median", "runs")}
        targets.append(entry)
    result: dict[str, Any] = {"targets": targets, "default_target": cfg.default_target}
    if perf:
        result["benchmark_generated_at"] = perf.get("generated_at")
        result["benchmark_recommendations"] = perf.get("recommendations")
    else:
        output = Path(cfg.server.state_dir) / PERFORMANCE_FILE
        result["benchmark"] = f"none: run `aibox-router bench --output {output}`"
    return result


async def usage_report(source: RuntimeSource, client: str = MCP_CLIENT) -> dict[str, Any]:
    """Today's usage, read from the ledger (so it includes the daemon's traffic, not only this process's):
    the router's totals, and the calling client's own requests and cloud spend."""
    async with source.use() as runtime:
        cfg: RouterConfig = runtime.config
        store = runtime.accounting.store
        view = await asyncio.to_thread(budget_view, cfg, store, time.time())
        rows = await asyncio.to_thread(store.rows, view.day, view.day)
    by_target: dict[str, dict[str, Any]] = {}
    for r in rows:
        e = by_target.setdefault(r.target or "(refused)", {"requests": 0, "errors": 0, "input_tokens": 0,
                                                             "output_tokens": 0, "cost_usd": Decimal(0),
                                                             "cloud": r.cloud, "energy_j": 0.0})
        e["requests"] += 1
        e["errors"] += r.status != "ok"
        e["input_tokens"] += r.input_tokens
        e["output_tokens"] += r.output_tokens
        e["cost_usd"] += r.cost_usd
        e["energy_j"] += r.energy_j or 0.0
    for e in by_target.values():
        e["cost_usd"] = money(e["cost_usd"])
        e["energy_j"] = round(e["energy_j"], 1)
    local = sum(1 for r in rows if not r.cloud and r.status == "ok")
    served = sum(1 for r in rows if r.status == "ok")
    return {
        **view.as_json(),
        "requests": len(rows), "served": served, "served_locally": local,
        "local_share": round(local / served, 3) if served else None,
        "mcp_requests": sum(1 for r in rows if r.protocol == MCP_PROTOCOL),
        "by_target": by_target,
        "caller": {"client": client, "requests": sum(1 for r in rows if r.client == client),
                   "spend_usd": money(sum((r.cost_usd for r in rows if r.cloud and r.client == client),
                                          Decimal(0)))},
    }


def build_server(config: RouterConfig, source: RuntimeSource | None = None,
                 client_of: ClientOf = stdio_client) -> tuple[Any, RuntimeHolder | None]:
    """The MCP server, and the holder whose runtime must be closed (``await holder.aclose()``) at exit.

    Without *source* the server opens a runtime of its own (the stdio command). The router's HTTP
    listener passes its live runtime as *source* (nothing to close: the holder is None) and
    *client_of*, which names the client whose key authenticated each tool call.
    """
    holder = RuntimeHolder(config) if source is None else None
    tools: RuntimeSource = source if source is not None else holder  # type: ignore[assignment]
    server = MCPServer(name="aibox-local", instructions=INSTRUCTIONS)

    @server.tool(name="ask_local", description=(
        "Send a self-contained sub-task to a local model (no API cost) and get its answer. task_type is one "
        f"of: {', '.join(TASKS)}; the router's rules pick the local model for it. Include all context the "
        "model needs in prompt. The answer ends with which local model answered."))
    async def _ask_local(task_type: str, prompt: str, ctx: Context, max_tokens: int = 1024) -> str:
        return await ask_local(tools, task_type, prompt, max_tokens, client=client_of(ctx))

    @server.tool(name="list_local_models", description=(
        "List the router's local models: reachability, loaded models, and benchmark figures (pass rate, "
        "tokens/s, time to first token) where `aibox-router bench` has measured them."))
    async def _list_local_models(ctx: Context) -> dict[str, Any]:
        return await list_local_models(tools, client_of(ctx))

    @server.tool(name="usage_report", description=(
        "Today's router usage from its ledger: cloud spend vs. daily budget, emergency cutoff state, "
        "requests, tokens and cost per target, share served locally, and the caller's own share."))
    async def _usage_report(ctx: Context) -> dict[str, Any]:
        return await usage_report(tools, client_of(ctx))

    return server, holder


async def serve(config: RouterConfig, transport: str = "stdio", host: str = "127.0.0.1",
                port: int = 8089) -> None:
    server, holder = build_server(config)
    assert holder is not None
    try:
        if transport == "stdio":
            await server.run_stdio_async()
        else:
            await server.run_streamable_http_async(host=host, port=port)
    finally:
        await holder.aclose()
