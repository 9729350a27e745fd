"""Measure the semantic router: quality on the project's labelled set, and what a decision costs.

Starts the all-MiniLM-L6-v2 stand-in (tests/doubles/embedding_standin.py, CPU, loopback) and prints,
with the default config's route policies:

* agreement (route labels), local/cloud agreement, recall on the Claude-reserved routes and the
  share of local-first prompts kept local, on tests/fixtures/routing/eval-prompts.jsonl, each prompt
  inside the recorded Claude Code 2.1.197 request body (tests/fixtures/claude_code/turn-01.json);
* the cost of planning one request of a known turn (the tool loop: a turn-cache hit) against
  planning it without the route classifier at all, so the difference is what the cache hit adds;
* the cost of a new turn: the embedding call on loopback plus the rest of planning (p50, p95).

Targets: >= 93% agreement, >= 90% Claude-reserved recall, >= 80% local-first kept local; a cache
hit adds <= 0.05 ms; a new turn adds <= 30 ms p50 on a 2-core machine. The machines are shared and
noisy: compare numbers from one run only.

Usage: .venv/bin/python benchmarks/routing.py [--rounds 2000] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aibox_router import pipeline
from aibox_router.classifier import RouteClassifier
from aibox_router.cli.common import default_config_path
from aibox_router.config_load import parse_config
from aibox_router.route_eval import _EvalRuntime, load_items, run_eval, wrap_in
from tests.support import embedding_server

EVAL_SET = ROOT / "tests/fixtures/routing/eval-prompts.jsonl"
TURN = ROOT / "tests/fixtures/claude_code/turn-02.json"  # a tool-loop request of a recorded turn


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


async def measure(embed_url: str, state_dir: str, rounds: int) -> dict:
    data = yaml.safe_load(Path(default_config_path()).read_text())
    data["server"]["state_dir"] = state_dir
    data["backends"]["ollama"]["base_url"] = embed_url
    config = parse_config(data, "default config", env={})
    classifier = RouteClassifier(config, cache_dir=state_dir)
    try:
        progress("embedding the route examples")
        assert await classifier.prepare(), "the route examples could not be embedded"
        progress("routing the labelled set inside the recorded Claude Code body")
        template = json.loads((ROOT / "tests/fixtures/claude_code/turn-01.json").read_text())
        report = await run_eval(config, load_items(EVAL_SET), wrap=wrap_in(template), classifier=classifier)
        summary = report.summary()

        runtime = _EvalRuntime(config, classifier)
        body = json.loads(TURN.read_text())
        size = len(TURN.read_bytes())
        kw = {"client": "bench", "protocol": "anthropic", "body_size": size}
        progress(f"planning a tool-loop request {rounds} times, with and without the turn cache")
        await pipeline.plan_turn(runtime, body, **kw)  # the turn's first request: decided, remembered
        plain, hit = [], []
        for _ in range(rounds):
            t = time.perf_counter()
            pipeline.plan_request(runtime, body, **kw)
            plain.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await pipeline.plan_turn(runtime, body, **kw)
            hit.append((time.perf_counter() - t) * 1000)
        progress("planning new turns (embedding call on loopback)")
        texts = [i.prompt for i in load_items(EVAL_SET)]
        wrap = wrap_in(template)
        new, embed = [], []
        for text in texts:
            request = wrap(text + " (benchmark)")  # never seen before: a cache miss
            t = time.perf_counter()
            await pipeline.plan_turn(runtime, request, **kw)
            new.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            await classifier.client.embed([text + " (again)"])
            embed.append((time.perf_counter() - t) * 1000)
    finally:
        await classifier.aclose()
    return {
        "quality": {k: summary[k] for k in ("prompts", "agreement", "locality_agreement", "cloud_recall",
                                            "local_kept", "local_share", "keyword_fallbacks")},
        "per_route_recall": {name: s["recall"] for name, s in summary["per_route"].items()},
        "tool_loop_request_ms": {"without_classifier_p50": statistics.median(plain),
                                 "turn_cache_hit_p50": statistics.median(hit),
                                 "added_by_cache_hit_p50": statistics.median(hit) - statistics.median(plain)},
        "new_turn_ms": {"p50": statistics.median(new), "p95": pct(new, 95),
                        "embedding_call_p50": statistics.median(embed), "embedding_call_p95": pct(embed, 95),
                        "added_p50": statistics.median(new) - statistics.median(plain)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--json", dest="json_out", default=None)
    args = parser.parse_args()
    progress("starting the all-MiniLM-L6-v2 stand-in")
    url, process = embedding_server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="aibox-routing-bench-") as state:
            result = asyncio.run(measure(url, state, args.rounds))
    finally:
        embedding_server.stop(process)
    q, loop, new = result["quality"], result["tool_loop_request_ms"], result["new_turn_ms"]
    print(f"labelled set: {q['prompts']} prompts in a Claude Code 2.1.197 body, default config, all-MiniLM-L6-v2 (CPU)")
    print(f"  agreement (route)           {q['agreement'] * 100:5.1f}%   target >= 93%")
    print(f"  agreement (local/cloud)     {q['locality_agreement'] * 100:5.1f}%")
    print(f"  Claude-reserved recall      {q['cloud_recall'] * 100:5.1f}%   target >= 90%")
    print(f"  local-first kept local      {q['local_kept'] * 100:5.1f}%   target >= 80%")
    print(f"  local share                 {q['local_share'] * 100:5.1f}%   keyword fallbacks: {q['keyword_fallbacks']}")
    print("  recall by route: " + ", ".join(f"{k} {v * 100:.0f}%" for k, v in result["per_route_recall"].items()))
    print("tool-loop request (82 KB Claude Code body), planning p50:")
    print(f"  without the classifier      {loop['without_classifier_p50']:.4f} ms")
    print(f"  with a turn-cache hit       {loop['turn_cache_hit_p50']:.4f} ms")
    print(f"  added by the cache hit      {loop['added_by_cache_hit_p50']:.4f} ms   target <= 0.05 ms")
    print("new turn (embedding on loopback):")
    print(f"  planning p50 / p95          {new['p50']:.2f} / {new['p95']:.2f} ms")
    print(f"  embedding call p50 / p95    {new['embedding_call_p50']:.2f} / {new['embedding_call_p95']:.2f} ms")
    print(f"  added p50                   {new['added_p50']:.2f} ms   target <= 30 ms")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
