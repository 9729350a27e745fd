"""Measure the semantic router: quality on the project's labelled sets, and what a decision costs.

Starts the all-MiniLM-L6-v2 stand-in (tests/doubles/embedding_standin.py, CPU, loopback) and prints,
with the default config's route policies:

* agreement (route labels), local/cloud agreement, recall on the Claude-reserved routes and the
  share of local-first prompts kept local, per route recall, on two labelled sets:
  tests/fixtures/routing/eval-prompts.jsonl (the set the policies were tuned on) and
  tests/fixtures/routing/heldout-prompts.jsonl (written apart, never tuned on), each prompt inside
  the recorded Claude Code 2.1.197 request body (tests/fixtures/claude_code/turn-01.json) and as a
  bare request;
* the cost of planning one request of a known turn (the tool loop: a turn-cache hit) against
  planning it without the route classifier at all, so the difference is what the cache hit adds;
* the cost of a new turn: the embedding call on loopback plus the rest of planning (p50, p95);
* 10-fold cross-validation on the route examples themselves (each tenth of every route's examples
  placed by a classifier built from the rest) for a few values of ``routing.lexical_weight`` and
  ``routing.description_weight``: how their defaults were chosen, without looking at a labelled set.

With ``--judge smollm2`` (the llama.cpp server with SmolLM2-135M-Instruct that the live tests use,
tests/support/local_model.py) or ``--judge URL`` (any OpenAI-compatible ``/v1`` base URL, with
``--judge-model``), it also routes both sets with the LLM judge for close calls on
(``routing.judge``, ``--judge-margin``) and prints the judge's agreement on the turns it was asked
about against the classifier's, how many it changed, and what it added per asked turn.

Targets: >= 93% agreement, >= 90% Claude-reserved recall, >= 80% local-first kept local; a cache
hit adds <= 0.05 ms; a new turn adds <= 30 ms p50 on a 2-core machine. The machines are shared and
noisy: compare numbers from one run only.

Usage: .venv/bin/python benchmarks/routing.py [--rounds 2000] [--json OUT] [--judge smollm2|URL]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aibox_router import pipeline, route_lexical
from aibox_router.classifier import RouteClassifier, clean_turn_text
from aibox_router.cli.common import default_config_path
from aibox_router.config_load import parse_config
from aibox_router.route_eval import _EvalRuntime, load_items, run_eval, wrap_in
from tests.support import embedding_server

ROOT = Path(__file__).resolve().parent.parent
EVAL_SET = ROOT / "tests/fixtures/routing/eval-prompts.jsonl"
HELDOUT_SET = ROOT / "tests/fixtures/routing/heldout-prompts.jsonl"
SETS = {"tuning set": EVAL_SET, "held-out set": HELDOUT_SET}
QUALITY = ("prompts", "agreement", "locality_agreement", "cloud_recall", "local_kept", "local_share",
           "keyword_fallbacks")
TURN = ROOT / "tests/fixtures/claude_code/turn-02.json"  # a tool-loop request of a recorded turn


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


CV_FOLDS = 10
# (routing.lexical_weight, routing.description_weight, route_lexical.LEAD_BOOST)
CV_GRID = [(lexical, description, lead) for lead in (0, 2) for lexical in (0.4, 0.8, 1.2) for description in (1, 3)]


def pct(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def bench_config(embed_url: str, state_dir: str, judge: dict | None = None) -> dict:
    data = yaml.safe_load(Path(default_config_path()).read_text())
    data["server"]["state_dir"] = state_dir
    data["backends"]["ollama"]["base_url"] = embed_url
    if judge:
        data["backends"]["judge"] = {"type": "openai", "base_url": judge["url"]}
        data["targets"]["judge"] = {"backend": "judge", "model": judge["model"]}
        data["routing"]["judge"] = {"target": "judge", "margin_below": judge["margin"], "candidates": 3,
                                    "timeout_ms": 30_000}
    return data


def quality(summary: dict) -> dict:
    return {**{k: summary[k] for k in QUALITY},
            "per_route_recall": {name: s["recall"] for name, s in summary["per_route"].items()},
            "new_turn_p50_ms": summary["decision_ms"]["new_turn_p50"],
            "new_turn_p95_ms": summary["decision_ms"]["new_turn_p95"],
            "judge": summary["judge"]}


async def measure_judge(embed_url: str, state_dir: str, judge: dict) -> dict:
    """Both sets, in the Claude Code body, with the judge asked on close calls."""
    config = parse_config(bench_config(embed_url, state_dir, judge), "default config + judge", env={})
    classifier = RouteClassifier(config, cache_dir=state_dir)
    template = json.loads((ROOT / "tests/fixtures/claude_code/turn-01.json").read_text())
    try:
        assert await classifier.prepare(), "the route examples could not be embedded"
        out = {}
        for name, path in SETS.items():
            progress(f"routing the {name} with the judge at {judge['url']} ({judge['model']})")
            report = await run_eval(config, load_items(path), wrap=wrap_in(template), classifier=classifier)
            out[name] = quality(report.summary())
        return out
    finally:
        await classifier.aclose()


async def measure(embed_url: str, state_dir: str, rounds: int) -> dict:
    config = parse_config(bench_config(embed_url, state_dir), "default config", env={})
    classifier = RouteClassifier(config, cache_dir=state_dir)
    try:
        progress("embedding the route examples")
        assert await classifier.prepare(), "the route examples could not be embedded"
        template = json.loads((ROOT / "tests/fixtures/claude_code/turn-01.json").read_text())
        sets = {}
        for name, path in SETS.items():
            for wrapped in (True, False):
                how = "Claude Code body" if wrapped else "bare request"
                progress(f"routing the {name}, each prompt as a {how}")
                report = await run_eval(config, load_items(path), wrap=wrap_in(template) if wrapped else None,
                                        classifier=classifier)
                sets[f"{name}, {how}"] = quality(report.summary())

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
        progress("scoring turns against the routes (no embedding call)")
        texts = [i.prompt for i in load_items(EVAL_SET)]
        vectors = await classifier.client.embed(texts[:50], timeout_s=60)
        scoring = []
        for _ in range(20):
            for text, vector in zip(texts, vectors, strict=False):
                t = time.perf_counter()
                classifier.match_vector(vector, text)
                scoring.append((time.perf_counter() - t) * 1000)
        progress("planning new turns (embedding call on loopback)")
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
        "defaults": {"lexical_weight": config.routing.lexical_weight,
                     "description_weight": config.routing.description_weight,
                     "lead_boost": route_lexical.LEAD_BOOST},
        "sets": sets,
        "tool_loop_request_ms": {"without_classifier_p50": statistics.median(plain),
                                 "turn_cache_hit_p50": statistics.median(hit),
                                 "added_by_cache_hit_p50": statistics.median(hit) - statistics.median(plain)},
        "new_turn_ms": {"p50": statistics.median(new), "p95": pct(new, 95),
                        "embedding_call_p50": statistics.median(embed), "embedding_call_p95": pct(embed, 95),
                        "added_p50": statistics.median(new) - statistics.median(plain),
                        "scoring_p50": statistics.median(scoring), "scoring_p95": pct(scoring, 95)},
    }


async def cross_validate(data: dict, state_dir: str) -> float:
    """Share of route examples placed in their own route by a classifier built without them."""
    hits = total = 0
    for fold in range(CV_FOLDS):
        fold_data = copy.deepcopy(data)
        held_out = []
        for route in fold_data["routes"]:
            examples = route["examples"]
            held_out += [(route["name"], e) for j, e in enumerate(examples) if j % CV_FOLDS == fold]
            route["examples"] = [e for j, e in enumerate(examples) if j % CV_FOLDS != fold]
        config = parse_config(fold_data, f"cross-validation fold {fold}", env={})
        classifier = RouteClassifier(config, cache_dir=state_dir)  # the vectors come from the cache
        try:
            assert await classifier.prepare() and classifier.cache and classifier.client
            vectors = classifier.cache.get_many(classifier.client.model, [e for _, e in held_out])
            for route_name, example in held_out:
                hits += classifier.match_vector(vectors[example], clean_turn_text(example)).route == route_name
                total += 1
        finally:
            await classifier.aclose()
    return hits / total


async def measure_cross_validation(embed_url: str, state_dir: str) -> dict[str, float]:
    out = {}
    shipped_boost = route_lexical.LEAD_BOOST
    try:
        for lexical, description, lead in CV_GRID:
            name = f"lexical_weight {lexical}, description_weight {description}, lead boost {lead}"
            progress(f"cross-validating the route examples: {name}")
            data = bench_config(embed_url, state_dir)
            data.setdefault("routing", {}).update(lexical_weight=lexical, description_weight=description)
            route_lexical.LEAD_BOOST = lead
            out[name] = await cross_validate(data, state_dir)
    finally:
        route_lexical.LEAD_BOOST = shipped_boost
    return out


def start_judge(spec: str, model: str) -> tuple[str, str, object | None]:
    """(base URL, model, the process to stop or None) for ``--judge``."""
    if spec != "smollm2":
        return spec, model, None
    from tests.support import local_model

    progress("starting llama.cpp with SmolLM2-135M-Instruct (tests/support/local_model.py)")
    url, process = local_model.start_llama_server(n_ctx=2048)
    return url, "smollm2", process


def print_quality(name: str, q: dict) -> None:
    print(f"{name}: {q['prompts']} prompts")
    print(f"  agreement (route)           {q['agreement'] * 100:5.1f}%   target >= 93%")
    print(f"  agreement (local/cloud)     {q['locality_agreement'] * 100:5.1f}%")
    print(f"  Claude-reserved recall      {q['cloud_recall'] * 100:5.1f}%   target >= 90%")
    print(f"  local-first kept local      {q['local_kept'] * 100:5.1f}%   target >= 80%")
    print(f"  local share                 {q['local_share'] * 100:5.1f}%   "
          f"keyword fallbacks: {q['keyword_fallbacks']}")
    print("  recall by route: " + ", ".join(f"{k} {v * 100:.0f}%" for k, v in q["per_route_recall"].items()))
    j = q["judge"]
    if j["asked"]:
        print(f"  judge asked on {j['asked']} close calls: agreement there "
              f"{j['agreement_with_judge'] * 100:.1f}% "
              f"with the judge, {j['agreement_without_judge'] * 100:.1f}% without; changed {j['changed']}; "
              f"judge call p50 {j['judge_ms_p50']:.0f} ms, p95 {j['judge_ms_p95']:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--judge", default=None,
                        help="smollm2 (start the local llama.cpp model) or a /v1 base URL")
    parser.add_argument("--judge-model", default="qwen2.5:1.5b", help="the model name to ask at --judge URL")
    parser.add_argument("--judge-margin", type=float, default=0.03, help="routing.judge.margin_below")
    args = parser.parse_args()
    progress("starting the all-MiniLM-L6-v2 stand-in")
    url, process = embedding_server.start()
    judge_process = None
    try:
        with tempfile.TemporaryDirectory(prefix="aibox-routing-bench-") as state:
            result = asyncio.run(measure(url, state, args.rounds))
            result["cross_validation"] = asyncio.run(measure_cross_validation(url, state))
            if args.judge:
                judge_url, judge_model, judge_process = start_judge(args.judge, args.judge_model)
                spec = {"url": judge_url, "model": judge_model, "margin": args.judge_margin}
                result["judge"] = {"model": judge_model, "margin_below": args.judge_margin,
                                   "sets": asyncio.run(measure_judge(url, state, spec))}
    finally:
        embedding_server.stop(process)
        if judge_process is not None:
            from tests.support import local_model

            local_model.stop_llama_server(judge_process)
    print("default config, all-MiniLM-L6-v2 on the CPU; Claude Code body: a recorded Claude Code 2.1.197 "
          "turn")
    for name, q in result["sets"].items():
        print_quality(name, q)
    loop, new = result["tool_loop_request_ms"], result["new_turn_ms"]
    print("tool-loop request (82 KB Claude Code body), planning p50:")
    print(f"  without the classifier      {loop['without_classifier_p50']:.4f} ms")
    print(f"  with a turn-cache hit       {loop['turn_cache_hit_p50']:.4f} ms")
    print(f"  added by the cache hit      {loop['added_by_cache_hit_p50']:.4f} ms   target <= 0.05 ms")
    print("new turn (embedding on loopback):")
    print(f"  planning p50 / p95          {new['p50']:.2f} / {new['p95']:.2f} ms")
    print(f"  embedding call p50 / p95    {new['embedding_call_p50']:.2f} / "
          f"{new['embedding_call_p95']:.2f} ms")
    print(f"  added p50                   {new['added_p50']:.2f} ms   target <= 30 ms")
    print(f"  of which route scoring      {new['scoring_p50']:.2f} / {new['scoring_p95']:.2f} ms p50 / p95 "
          "(centroids and words, without the embedding call)")
    defaults = result["defaults"]
    print(f"route examples, {CV_FOLDS}-fold cross-validation (agreement; the default is "
          f"lexical_weight {defaults['lexical_weight']}, description_weight {defaults['description_weight']}, "
          f"lead boost {defaults['lead_boost']}):")
    for name, share in result["cross_validation"].items():
        print(f"  {name:<58}{share * 100:5.1f}%")
    if "judge" in result:
        j = result["judge"]
        print(f"with the LLM judge {j['model']} on close calls (margin below {j['margin_below']}), "
              "Claude Code body:")
        for name, q in j["sets"].items():
            print_quality(name, q)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
