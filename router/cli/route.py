"""``aibox-router route explain`` / ``route eval``: how requests would be routed, without sending them."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from zoneinfo import ZoneInfo

import click

from ..context import ContextWindows
from ..errors import ConfigError, RouterError
from ..rules import RuleEngine
from . import config_option
from .common import load_or_exit

if TYPE_CHECKING:  # annotations only: the commands load their machinery when run
    from ..config import RouterConfig
    from ..route_eval import EvalItem, EvalReport


@click.group()
def route() -> None:
    """Inspect routing decisions."""


@route.command("explain")
@config_option
@click.argument("request_file", type=click.File("rb"), default="-")
@click.option("--protocol", type=click.Choice(["auto", "anthropic", "openai"]), default="auto", show_default=True,
              help="Wire format of the request body; auto detects it (OpenAI: system/tool roles in messages, "
                   "max_completion_tokens, stream_options, or no max_tokens; else Anthropic Messages).")
@click.option("--client", default="anonymous", help="Client name to evaluate rules for.")
@click.option("--override", default=None, help="Target named in the override header, if any.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--probe", is_flag=True,
              help="Ask OpenAI-compatible servers for their context windows, as the daemon does at start-up.")
def explain(config_path: str | None, request_file: BinaryIO, protocol: str, client: str, override: str | None,
            as_json: bool, probe: bool) -> None:
    """Read a request body from REQUEST_FILE (or stdin) and print which rule matches, why, and which
    backend and model would answer. Nothing is sent to any backend and nothing is recorded."""
    # The planning machinery (pipeline, wire parsers) loads only when the command runs.
    from .. import pipeline
    from ..wire import anthropic as anthropic_api
    from ..wire import openai_chat as openai_api

    config = load_or_exit(config_path)
    body = request_file.read()
    if protocol == "auto":
        protocol = detect_protocol(body)
        click.echo(f"note: protocol {protocol} (detected; --protocol to override)", err=True)
    try:
        internal = anthropic_api.parse_request(body) if protocol == "anthropic" else openai_api.parse_request(body)[0]
    except RouterError as e:
        raise click.ClickException(f"invalid request body: {e.message}") from None
    count_today, counts_note = _rule_counts(config)
    runtime = _DryRuntime(config, RuleEngine(config, count_today))
    if probe:
        asyncio.run(_probe_windows(runtime))

    async def plan_it() -> pipeline.Plan:
        await runtime.classifier.prepare()  # the examples, from the cache when it has them
        try:
            return await pipeline.plan_turn(runtime, internal, client=client, protocol=protocol,
                                            body_size=len(body), override=override)
        finally:
            await runtime.classifier.aclose()
            for backend in runtime.backends.values():
                await backend.aclose()

    try:
        plan = asyncio.run(plan_it())
    except RouterError as e:  # e.g. a client naming a target outside its clients[].targets
        raise click.ClickException(f"the router would refuse this request (HTTP {e.status}): {e.message}") from None
    result = pipeline.explain(plan, runtime)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
        return
    f = result["features"]
    click.echo(f"request: model={f['model']} task={f['task']} complexity={f['complexity']} "
               f"input_tokens~{f['input_tokens']} context_tokens<={f['context_tokens']} "
               f"tools={f['tool_count']} thinking={f['has_thinking']} fits_local={f['fits_local']}")
    _echo_route(result["route"])
    for r in result["rules"]:
        click.echo(f"  {'MATCH' if r['matched'] else 'skip '} {r['rule']}: {r['note']}")
    d = result["decision"]
    click.echo(f"decision: {d['reason']}")
    for i, step in enumerate(result["chain"]):
        label = "answers" if i == 0 else f"fallback {i}"
        cloud = " (cloud, budget permitting)" if step["cloud"] else ""
        click.echo(f"  {label}: target {step['target']} -> backend {step['backend']} model {step['model']}{cloud}")
    if not result["chain"]:
        click.echo("  no target can hold this prompt: the client gets 'prompt is too long' (400)")
    for c in result["context"]:
        click.echo(f"  context {c['target']}: {c['note']}")
    if result["skipped"]:
        click.echo(f"x-aibox-skipped: {result['skipped']}")
    click.echo(f"note: {counts_note}", err=True)
    sys.stdout.flush()


_OPENAI_ONLY_KEYS = ("max_completion_tokens", "stream_options", "response_format", "n", "logprobs", "seed",
                     "frequency_penalty", "presence_penalty")


def detect_protocol(body: bytes) -> str:
    """``openai`` or ``anthropic``, from what only one of the two request shapes has."""
    try:
        data = json.loads(body)
    except ValueError:
        return "anthropic"  # the parser reports the broken JSON
    if not isinstance(data, dict):
        return "anthropic"
    if any(k in data for k in _OPENAI_ONLY_KEYS):
        return "openai"
    # Only Anthropic's shape has a top-level system prompt and tools with an input_schema (Claude
    # Code also puts role "system" messages in its list, so roles alone do not decide).
    tools: list[Any] = data["tools"] if isinstance(data.get("tools"), list) else []
    if "system" in data or any(isinstance(t, dict) and "input_schema" in t for t in tools):
        return "anthropic"
    messages: list[Any] = data["messages"] if isinstance(data.get("messages"), list) else []
    if any(isinstance(m, dict) and m.get("role") in ("system", "developer", "tool") for m in messages):
        return "openai"
    if any(isinstance(t, dict) and t.get("type") == "function" for t in tools):
        return "openai"
    # Anthropic's Messages API requires max_tokens; OpenAI's chat completions do not.
    return "anthropic" if "max_tokens" in data or "system" in data else "openai"


def _echo_route(r: dict[str, Any]) -> None:
    if r["source"] == "none":
        click.echo("route: none (no routes configured)")
        return
    click.echo(f"route: {r['route']} via {r['source']} (score {r['score']:.3f}, margin {r['margin']:.3f} over the "
               f"runner-up, {r['elapsed_ms']:.1f} ms); judge: {r['judge']}")
    if r["note"]:
        click.echo(f"  fallback: {r['note']}")
    ranked = list(r["scores"].items())[:4]
    if ranked:
        parts = r.get("parts") or {}

        def detail(name: str) -> str:
            part = parts.get(name)
            return f" ({part['semantic']:.3f} + words {part['lexical']:.3f})" if part else ""

        click.echo("  route scores (embedding + words): "
                   + ", ".join(f"{name} {score:.3f}{detail(name)}" for name, score in ranked))
    for n in r["nearest"]:
        click.echo(f"  nearest {n['score']:.3f} [{n['route']}] {n['example'][:100]}")


@route.command("eval")
@config_option
@click.argument("eval_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--wrap", "wrap_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="A captured request body (e.g. tests/fixtures/claude_code/turn-01.json): each prompt "
                   "replaces the user's words in it, so the classifier sees what production sees.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--show-misses", default=20, show_default=True, help="How many disagreements to list.")
def eval_cmd(config_path: str | None, eval_file: str, wrap_file: str | None, as_json: bool, show_misses: int) -> None:
    """Route every prompt of EVAL_FILE (JSON Lines of {"prompt", "want"}, want being a route name or
    local/cloud) as a new user turn, and print agreement, a confusion table, per-route precision and
    recall, the local share and decision times. Nothing is sent to a chat backend or recorded."""
    # route_eval pulls in the classifier and its embedding client: loaded only when the command runs.
    from ..route_eval import check_labels, format_report, load_items, wrap_in

    config = load_or_exit(config_path)
    try:
        items = load_items(eval_file)
        check_labels(items, config, eval_file)
        wrap = None
        if wrap_file:
            try:
                wrap = wrap_in(json.loads(Path(wrap_file).read_text(encoding="utf-8")))
            except (ValueError, AttributeError) as e:
                raise ConfigError(f"{wrap_file}: not a request body to wrap prompts in: {e}") from None
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    if not items:
        raise click.ClickException(f"{eval_file}: no labelled prompts")
    report = asyncio.run(_run(config, items, wrap))
    summary = report.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(format_report(summary, show_misses))


async def _run(config: RouterConfig, items: list[EvalItem], wrap: Any) -> EvalReport:
    # Classifier and eval loaded only when the command runs (see eval_cmd).
    from ..classifier import RouteClassifier
    from ..route_eval import run_eval

    classifier = RouteClassifier(config, cache_dir=config.server.state_dir, cache_read_only=True)
    try:
        return await run_eval(config, items, wrap=wrap, classifier=classifier)
    finally:
        await classifier.aclose()


def _rule_counts(config: RouterConfig) -> tuple[Callable[[str], int], str]:
    """Today's per-rule request counts from the ledger, read-only; zeros when there is no ledger."""
    from ..cost import SqliteLedger, day_of  # the cost package, only when explain runs

    try:
        store = SqliteLedger.in_state_dir(config.server.state_dir, create=False)
    except (FileNotFoundError, OSError) as e:
        return (lambda rule: 0), f"daily_limit counts assumed 0: no readable ledger ({e})"
    day = day_of(time.time(), ZoneInfo(config.budgets.timezone))
    counts = dict(store.day_totals(day).rule_counts)
    store.close()
    return (lambda rule: counts.get(rule, 0)), f"daily_limit counts read from the ledger for {day}"


async def _probe_windows(runtime: _DryRuntime) -> None:
    from ..backends import create_backend  # the HTTP backends, only with --probe

    backends = {name: create_backend(name, bc) for name, bc in runtime.config.backends.items()
                if bc.type == "openai"}
    try:
        await runtime.windows.discover(backends)
    finally:
        for backend in backends.values():
            await backend.aclose()


class _DryRuntime:
    """Just enough of a Runtime for planning: no backends, no ledger, no GPU."""

    def __init__(self, config: RouterConfig, rules: RuleEngine) -> None:
        # Classifier, judge backends and turn cache: daemon parts loaded only when a command runs.
        from ..classifier import RouteClassifier
        from ..route_eval import _judge_backends
        from ..turns import TurnCache

        self.config = config
        self.rules = rules
        self.gpu = None
        self.windows = ContextWindows(config)
        self.discover_windows = False  # only with --probe, which asks the servers itself
        self.classifier = RouteClassifier(config, cache_dir=config.server.state_dir, cache_read_only=True)
        self.turns = TurnCache(0, 0)
        self.classifier.with_nearest = True
        self.backends = _judge_backends(config)  # explain asks the judge (a local model) if one is set
